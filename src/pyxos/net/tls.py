"""TLS for pyxos ports: SSL contexts from PEM files, and TLS on accepted connections.

Theory of operation
-------------------
The cluster id in the ``Hello`` is not a secret, so without TLS anyone who reaches a
peer port can join the protocol (issue 12, item 3). With TLS configured every node
holds three PEM files: the cluster's CA certificate (``tls_ca``), its own certificate
signed by that CA (``tls_cert``) and the certificate's private key (``tls_key``).

- **Peer port (mutual TLS)**: the server presents its certificate and *requires* one
  from the client, signed by the cluster CA (``server_context(..., require_client_cert=
  True)``); the dialer presents its own and verifies the server's against the same CA
  and the address it dialed (``client_context``). A node with a certificate from
  another CA, or with none, fails the handshake: it never reaches the ``Hello``.
- **Client port and HTTP**: the server presents its certificate; client certificates
  are optional there (clients authenticate with bearer tokens).

Accepted connections do the handshake with ``loop.start_tls`` rather than
``create_server(ssl=...)``: asyncio swallows a failed server-side handshake of
``create_server`` (only debug mode reports it), and the port's connection accounting
would never hear of it. ``TlsAccept`` is the placeholder protocol of a connection
whose handshake runs: it holds the port's connection slot (so handshakes in progress
count against ``max_connections``), and on success hands the TLS transport to the
real protocol (``set_protocol`` + ``connection_made``); on failure it counts
``tls_refused`` and logs one WARNING line naming the peer address and OpenSSL's
reason (never key material: the reason is OpenSSL's short text).

Nothing here runs on a connection without TLS: the non-TLS path is unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pyxos.net.limits import PortGuard, RefusedConnection

__all__ = [
    "DEFAULT_TLS_HANDSHAKE_TIMEOUT",
    "TlsAccept",
    "TlsError",
    "TlsFiles",
    "client_context",
    "server_context",
    "tls_acceptor",
]

logger = logging.getLogger("pyxos.net")

DEFAULT_TLS_HANDSHAKE_TIMEOUT = 10.0
"""Seconds a TLS handshake on an accepted connection may take."""


class TlsError(ValueError):
    """A TLS file is missing, unreadable or not valid PEM; the message says which."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Paths of the PEM files of one endpoint: the CA to trust, its own cert and key."""

    ca: Path
    """The CA certificate(s) whose signatures are trusted."""
    cert: Path | None = None
    """This endpoint's certificate (chain), signed by the CA; None: present none."""
    key: Path | None = None
    """The private key of ``cert``."""


def _base(purpose: ssl.Purpose, files: TlsFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    for path in (files.ca, files.cert, files.key):
        if path is not None:
            try:
                with open(path, "rb"):
                    pass
            except OSError as e:
                raise TlsError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        context.load_verify_locations(cafile=str(files.ca))
    except (ssl.SSLError, ValueError) as e:
        raise TlsError(f"{files.ca}: not a valid PEM CA certificate ({_reason(e)})") from None
    if (files.cert is None) != (files.key is None):
        raise TlsError("a certificate needs its key and a key its certificate")
    if files.cert is not None and files.key is not None:
        try:
            context.load_cert_chain(str(files.cert), str(files.key))
        except (ssl.SSLError, ValueError) as e:
            raise TlsError(
                f"{files.cert} / {files.key}: not a valid PEM certificate and matching "
                f"unencrypted key ({_reason(e)})"
            ) from None
    return context


def _reason(e: BaseException) -> str:
    if isinstance(e, ssl.SSLError) and e.reason:
        return str(e.reason)
    return type(e).__name__


def server_context(files: TlsFiles, *, require_client_cert: bool) -> ssl.SSLContext:
    """The context of a listening port: presents ``files.cert``; checks clients' certs.

    ``require_client_cert``: a client must present a certificate signed by
    ``files.ca`` (mutual TLS, the peer port); else one is optional (if presented, it
    must verify).
    """
    if files.cert is None:
        raise TlsError("a TLS server needs a certificate and key")
    context = _base(ssl.Purpose.CLIENT_AUTH, files)
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """The context of a dialer: verifies the server against ``files.ca`` and its address;
    presents ``files.cert`` if given."""
    context = _base(ssl.Purpose.SERVER_AUTH, files)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class TlsAccept(asyncio.Protocol):
    """An accepted connection doing its TLS handshake (see the module notes).

    ``make()`` builds the real protocol once the handshake succeeded; ``on_refused``
    and ``on_gone`` are called (once) when the handshake failed or the connection
    went before it finished, so the port can count and free its slot.
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        make: Callable[[], asyncio.Protocol],
        *,
        counters: dict[str, int],
        on_done: Callable[[TlsAccept, asyncio.Protocol | None], None],
        name: str,
        handshake_timeout: float = DEFAULT_TLS_HANDSHAKE_TIMEOUT,
    ) -> None:
        self._context = context
        self._make = make
        self._counters = counters
        self._on_done = on_done
        self._name = name
        self._timeout = handshake_timeout
        self._done = False
        self._early: list[bytes] = []
        self._inner: asyncio.Protocol | None = None
        self._task: asyncio.Task[None] | None = None
        self._transport: asyncio.BaseTransport | None = None

    def close(self) -> None:
        """Abandon the handshake and close the connection (the port is closing)."""
        if self._inner is not None:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
            return
        if self._task is not None:
            self._task.cancel()
        if self._transport is not None:
            self._transport.close()
        self._finish(None)

    async def shutdown(self, timeout: float = 1.0) -> None:
        """``close`` and wait for the handshake task to end."""
        self.close()
        if self._task is not None:
            await asyncio.wait([self._task], timeout=timeout)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the handshake."""
        self._transport = transport
        self._task = asyncio.get_running_loop().create_task(
            self._handshake(transport), name="pyxos-tls-accept"
        )

    async def _handshake(self, transport: asyncio.BaseTransport) -> None:
        loop = asyncio.get_running_loop()
        peername = transport.get_extra_info("peername")
        address = (
            f"{peername[0]}:{peername[1]}"
            if isinstance(peername, tuple) and len(peername) >= 2
            else str(peername)
        )
        try:
            tls_transport = await loop.start_tls(
                transport,  # type: ignore[arg-type]
                self,
                self._context,
                server_side=True,
                ssl_handshake_timeout=self._timeout,
            )
        except asyncio.CancelledError:
            transport.close()
            self._finish(None)
            raise
        except (OSError, TimeoutError, ConnectionError, ValueError) as e:
            transport.close()
            reason = _reason(e) if isinstance(e, ssl.SSLError) else (str(e) or type(e).__name__)
            self._counters["tls_refused"] = self._counters.get("tls_refused", 0) + 1
            logger.warning("%s: refused TLS connection from %s: %s", self._name, address, reason)
            self._finish(None)
            return
        if tls_transport is None or tls_transport.is_closing():
            self._finish(None)
            return
        inner = self._make()
        self._inner = inner
        tls_transport.set_protocol(inner)
        self._finish(inner)
        inner.connection_made(tls_transport)
        for data in self._early:
            inner.data_received(data)
        self._early = []

    def _finish(self, inner: asyncio.Protocol | None) -> None:
        if not self._done:
            self._done = True
            self._on_done(self, inner)

    def data_received(self, data: bytes) -> None:
        """Bytes decrypted before the real protocol took over: keep them for it."""
        if self._inner is not None:
            self._inner.data_received(data)
        else:
            self._early.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        """Gone during the handshake: free the slot (the handshake task reports it)."""
        if self._inner is not None:
            self._inner.connection_lost(exc)
            return
        if self._task is None:
            self._finish(None)


def tls_acceptor(
    guard: PortGuard,
    context: ssl.SSLContext,
    make: Callable[[], asyncio.Protocol],
    *,
    on_accepted: Callable[[], None] | None = None,
) -> Callable[[], asyncio.Protocol]:
    """A ``create_server`` protocol factory doing TLS handshakes under ``guard``.

    Each accepted connection holds a slot of the port (a ``TlsAccept``) while its
    handshake runs; a refused one frees it, counts ``tls_refused`` in the guard's
    counters and logs one WARNING line. On success ``make()`` builds the real
    protocol, which takes the slot over and must tell the guard (``closed``) when it
    is gone; ``on_accepted`` is called then.
    """

    def handed_over(placeholder: TlsAccept, connection: asyncio.Protocol | None) -> None:
        guard.closed(placeholder)
        if connection is not None:
            guard.connections.add(connection)
            if on_accepted is not None:
                on_accepted()

    def accept() -> asyncio.Protocol:
        if guard.full:
            guard.refuse()
            return RefusedConnection()
        placeholder = TlsAccept(
            context, make, counters=guard.counters, on_done=handed_over, name=guard.name
        )
        guard.admit(placeholder)
        return placeholder

    return accept
