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

Accepted connections do not use ``create_server(ssl=...)``: asyncio (and uvloop)
swallow a failed server-side handshake there (only debug mode reports it), so the
port could neither count nor log it, and its connection slot would leak; and uvloop's
``start_tls`` fails server-side handshakes outright. Instead ``tls_acceptor`` puts
asyncio's own TLS protocol (``asyncio.sslproto.SSLProtocol``, what ``create_server``
uses inside) in front of each accepted connection with a waiter future of our own:
the future reports the handshake's outcome, so a refusal frees the port's slot, counts
``tls_refused`` and logs one WARNING line naming the peer's address and OpenSSL's
reason (never key material: the reason is OpenSSL's short text). The real protocol
gets ``connection_made`` only after a successful handshake.

A certificate also says *which* node it belongs to: its common name ends in
``node N`` (``pyxos certs init`` writes ``"<cluster> node N"``). The CA's signature
only proves membership, so on the peer port a node's ``Hello`` must claim the id its
certificate names, and a dialer checks that the node it reached holds the certificate
of the node it dialed (``certificate_mismatch``): otherwise any member could speak as
any other (a valid certificate for node 2 claiming to be node 3). A mismatch closes
the connection, counts ``tls_identity_refused`` and logs one WARNING line.

Nothing here runs on a connection without TLS: the non-TLS path is unchanged.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto as sslproto
import logging
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from pyxos.net.limits import PortGuard, RefusedConnection

__all__ = [
    "DEFAULT_TLS_HANDSHAKE_TIMEOUT",
    "TlsError",
    "TlsFiles",
    "certificate_mismatch",
    "certificate_node_id",
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


_NODE_NAME = re.compile(r"(?:^|\s)node (\d+)$")


def _common_name(peercert: dict[str, Any] | None) -> str | None:
    """The subject's common name in ``SSLObject.getpeercert()``'s format."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def certificate_node_id(peercert: dict[str, Any] | None) -> int | None:
    """The node id a (verified) peer certificate names: common name ``"... node N"``."""
    name = _common_name(peercert)
    match = _NODE_NAME.search(name) if name is not None else None
    return int(match.group(1)) if match is not None else None


def certificate_mismatch(peercert: dict[str, Any] | None, node_id: int) -> str | None:
    """Why a certificate does not belong to node ``node_id``; None if it does."""
    named = certificate_node_id(peercert)
    if named == node_id:
        return None
    name = _common_name(peercert)
    if named is None:
        return f"its TLS certificate ({name!r}) names no node, not node {node_id}"
    return f"its TLS certificate names node {named} ({name!r}), not node {node_id}"


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


class _ServerTls(sslproto.SSLProtocol):
    """asyncio's TLS protocol, remembering the peer's address for the log line."""

    peer = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peername = transport.get_extra_info("peername")
        if isinstance(peername, tuple) and len(peername) >= 2:
            self.peer = f"{peername[0]}:{peername[1]}"
        super().connection_made(transport)


def tls_acceptor(
    guard: PortGuard,
    context: ssl.SSLContext,
    make: Callable[[], asyncio.BaseProtocol],
    *,
    on_accepted: Callable[[], None] | None = None,
    handshake_timeout: float = DEFAULT_TLS_HANDSHAKE_TIMEOUT,
) -> Callable[[], asyncio.BaseProtocol]:
    """A ``create_server`` protocol factory doing TLS handshakes under ``guard``.

    Each accepted connection gets its real protocol (``make()``) at once, admitted to
    the port (handshakes in progress count against ``max_connections``), behind a TLS
    layer (see the module notes); the protocol's ``connection_made`` comes once the
    handshake succeeded (then ``on_accepted``), and it must tell the guard when it is
    gone. A failed handshake frees the slot, counts ``tls_refused`` in the guard's
    counters and logs one WARNING line.
    """

    def accept() -> asyncio.BaseProtocol:
        if guard.full:
            guard.refuse()
            return RefusedConnection()
        loop = asyncio.get_running_loop()
        app = make()
        guard.admit(app)
        waiter: asyncio.Future[None] = loop.create_future()
        layer = _ServerTls(
            loop,
            cast(asyncio.Protocol, app),
            context,
            waiter,
            server_side=True,
            ssl_handshake_timeout=handshake_timeout,  # type: ignore[arg-type]
        )

        def done(future: asyncio.Future[None]) -> None:
            error = None if future.cancelled() else future.exception()
            if error is None and not future.cancelled():
                if on_accepted is not None:
                    on_accepted()
                return
            guard.closed(app)
            guard.count("tls_refused")
            if isinstance(error, ssl.SSLError):
                reason = _reason(error)
            else:
                reason = str(error) or type(error).__name__ if error else "cancelled"
            logger.warning("%s: refused TLS connection from %s: %s", guard.name, layer.peer, reason)

        waiter.add_done_callback(done)
        return layer

    return accept
