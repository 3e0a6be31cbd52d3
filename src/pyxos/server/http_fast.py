"""A lean HTTP/1.1 path for the hot KV requests, in front of aiohttp on the same port.

Theory of operation
-------------------
Under 64 connections of small writes, aiohttp's per-request machinery (its protocol,
the request and response objects, the router, the middlewares, the payload stream) cost
the leader several times what the command itself costs (``bench/profiles/
before-http64wrk-leader-cpu.txt``: about 330 Python calls per request). The two requests a
KV load is made of, ``PUT /v1/kv/{key}`` and ``GET /v1/kv/{key}``, are simple enough to
answer without it, so every connection of the HTTP port starts on ``FastConnection``:

- It reads requests itself, one at a time, and serves on this path only a request it
  fully understands and finds plainly well formed (``parse_head``): ``GET`` or ``PUT``,
  ``HTTP/1.1``, a target ``/v1/kv/KEY`` whose key is made of unreserved characters
  (no ``%``, no query, no dot or empty segment), lines ended by CRLF (a head ended by a
  bare LF hands over as soon as it has arrived), exactly one ``Host``, header names
  that are tokens and values without control characters, at most ``MAX_HEADERS`` of
  them within ``MAX_HEAD`` bytes, a ``Content-Length`` (at most ``MAX_FAST_BODY``;
  none, or 0, for a GET), none of ``Transfer-Encoding``, ``Expect``, ``Upgrade``, and ``Connection``
  only as ``keep-alive`` or ``close`` (answered with ``Connection: close``, then closed);
  with ``tokens`` configured, a bearer token whose role allows the request.
- Anything else, at a request boundary (nothing of this path in flight), **hands the
  connection over to aiohttp** for the rest of its life: aiohttp's protocol gets the
  transport and every byte not yet consumed, exactly as if it had had the connection
  from the start. So every route, every error answer (400, 401/403, 413, 431, ...),
  chunked bodies, ``Expect: 100-continue``, HTTP/1.0 and upgrades keep aiohttp's
  behaviour, and this path never answers a request aiohttp would have refused.
- A request it serves becomes the same command as through aiohttp (``KvEndpoints._run``:
  the client engine, the same batches through ``node.submit``) and its answer the same
  status, JSON body and headers, written as one pre-formatted buffer.

Limits, as on aiohttp's path (``pyxos.net.limits``): the bytes of a request whose
body has not all arrived count against the port's ``max_buffered_bytes`` (over it:
``503`` and the connection closed, ``buffer_budget_exceeded``); requests pipelined
behind one being served are not read past ``MAX_HEAD + MAX_FAST_BODY`` bytes (reading
pauses), nor served while the client does not read its answers (``pause_writing``;
``resume_writing`` serves them), and served one after another by a loop, never by a
call per request answered at once; a request must be complete ``frame_timeout``
seconds after the connection opened, its previous answer was written, or (for a body)
its head arrived, else the connection is closed (a started body answers ``408``
first, ``frame_timeouts``), as aiohttp's keep-alive timeout closes an idle one.
``FastConnections.sweep`` checks that a few times per ``frame_timeout``. A client
gone before its body arrived counts ``client_disconnects``. The node keeps serving
whatever a connection sends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from pyxos.net.limits import PortGuard, RefusedConnection
from pyxos.server.http_head import (
    MAX_FAST_BODY,
    MAX_HEAD,
    MAX_HEADERS,
    FastRequest,
    http_response,
    parse_head,
)

__all__ = [
    "MAX_FAST_BODY",
    "MAX_HEAD",
    "MAX_HEADERS",
    "FastConnection",
    "FastConnections",
    "FastRequest",
    "http_response",
    "parse_head",
]

logger = logging.getLogger("pyxos.http")

_BUSY = b'{"error": "too many request bodies in flight on this port; retry"}'


Serve = Callable[["FastConnection", FastRequest, bytes], None]
"""Starts serving one request (the connection, the request, its body); the answer
comes back through ``FastConnection.respond``."""


class FastConnections:
    """The open ``FastConnection`` s of one HTTP port, their shared settings, and the
    sweep of their timeouts."""

    def __init__(
        self,
        guard: PortGuard,
        serve: Serve,
        make_aiohttp: Callable[[], asyncio.Protocol],
        allowed: Callable[[str | None, str], bool] | None = None,
    ) -> None:
        self.guard = guard
        self.serve = serve
        """Starts one request (``HttpApi``)."""
        self.make_aiohttp = make_aiohttp
        """aiohttp's protocol for a connection handed over."""
        self.allowed = allowed
        """With tokens: whether a token may do an op (else the request goes to aiohttp)."""
        self.open: set[FastConnection] = set()
        self.served = 0
        """Requests answered on this path."""
        self.handed_over = 0
        """Connections handed over to aiohttp."""

    def __call__(self) -> asyncio.Protocol:
        """A protocol for a new connection (the plain port's protocol factory): admitted
        under the port's connection cap, else refused (``RefusedConnection``)."""
        conn = FastConnection(self)
        if not self.guard.admit(conn):
            return RefusedConnection()
        return conn

    def new(self) -> FastConnection:
        """A protocol for a connection admitted by the caller (``tls_acceptor``)."""
        return FastConnection(self)

    def sweep(self, now: float) -> None:
        """Close the connections whose request is overdue (see the module notes)."""
        limit = self.guard.limits.frame_timeout
        for conn in [c for c in self.open if not c.busy and now - c.since >= limit]:
            conn.expire()

    def close_all(self) -> None:
        """Close every connection still on this path (the port is stopping)."""
        for conn in list(self.open):
            conn.close()


class FastConnection(asyncio.Protocol):
    """One connection of the HTTP port (see the module notes)."""

    __slots__ = (
        "_loop",
        "_owner",
        "blocked",
        "buf",
        "busy",
        "eof",
        "inner",
        "paused",
        "pending",
        "reserved",
        "since",
        "stepping",
        "transport",
        "whole",
    )

    def __init__(self, owner: FastConnections) -> None:
        self._owner = owner
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.inner: asyncio.Protocol | None = None
        """aiohttp's protocol, once the connection is handed over."""
        self.buf = b""
        self.busy = False
        """A request of this connection is being served."""
        self.pending: FastRequest | None = None
        """A request whose head has arrived and whose body has not, all of it."""
        self.whole = 0
        """The bytes of ``pending`` with its head (``buf`` must reach it)."""
        self.reserved = 0
        """Bytes reserved in the port's budget for an incomplete body."""
        self.since = self._loop.time()
        """When the current request's time started (see the module notes)."""
        self.eof = False
        self.paused = False
        """Reading is paused (the client reads too slowly, or pipelines too much)."""
        self.blocked = False
        """The transport's write buffer is over its high-water mark (``pause_writing``)."""
        self.stepping = False
        """``_next`` is running: an answer given meanwhile does not start it again."""

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start on this path."""
        self.transport = cast(asyncio.Transport, transport)
        self._owner.open.add(self)

    def data_received(self, data: bytes) -> None:
        """Take the bytes; serve every complete request this path serves."""
        if self.inner is not None:
            self.inner.data_received(data)
            return
        self.buf = self.buf + data if self.buf else data
        if not self.busy and not self.blocked:
            self._next()
        if (
            self.busy  # else what is left is a partial head or body, within its limits
            and len(self.buf) > MAX_HEAD + MAX_FAST_BODY
            and not self.paused
            and self.transport is not None
            and not self.transport.is_closing()
        ):
            self.paused = True  # pipelined requests: read no more until these are done
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        """The client will send no more: finish the request being served, if any."""
        if self.inner is not None:
            return self.inner.eof_received()
        self.eof = True
        if self.busy:
            return True  # keep the transport open to write the answer
        if self.pending is not None:
            return None  # gone before its body arrived: connection_lost counts it
        if self.buf:
            self._hand_over()  # which tells aiohttp of the EOF (and closes if it would)
            return True
        return None

    def pause_writing(self) -> None:
        """The client reads too slowly: stop reading requests."""
        if self.inner is not None:
            self.inner.pause_writing()
            return
        self.blocked = True
        if self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        """The client caught up."""
        if self.inner is not None:
            self.inner.resume_writing()
            return
        self.blocked = False
        if not self.busy:
            self._resume()
            if self.buf:  # pipelined requests already read: serve them (or hand over)
                self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        """Release what the connection held; count a client gone mid-body."""
        owner = self._owner
        owner.open.discard(self)
        owner.guard.closed(self)  # the port may accept another connection
        if self.inner is not None:
            self.inner.connection_lost(exc)
            return
        if self.pending is not None:
            owner.guard.count("client_disconnects")
            peer = self.transport.get_extra_info("peername") if self.transport else None
            logger.debug(
                "HTTP client %s disconnected during %s /v1/kv/%s: %s",
                peer[0] if isinstance(peer, tuple) else peer,
                self.pending.op.upper(),
                self.pending.key,
                exc or "Connection lost",
            )
        self._release()
        self.buf = b""
        self.pending = None

    # -- requests --------------------------------------------------------------------

    def _release(self) -> None:
        if self.reserved:
            self._owner.guard.give(self.reserved)
            self.reserved = 0

    def _resume(self) -> None:
        self.paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _next(self) -> None:
        """Serve the complete requests in ``buf`` one after another (each next one once
        the previous is answered), hand over, or wait for bytes. A loop, not a
        recursion through ``respond``: answers given at once (a 400) to thousands of
        pipelined requests must not nest a call per request."""
        if self.stepping or self.busy:
            # An answer given within _step (the loop below goes on), or a request in
            # flight (a TLS transport may resume writing within respond's write).
            return
        self.stepping = True
        try:
            while self._step():
                pass
        finally:
            self.stepping = False

    def _step(self) -> bool:
        """Serve the next complete request in ``buf``, hand over, or wait for bytes;
        True if it was answered at once and the next one may follow."""
        buf = self.buf
        request = self.pending
        if request is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                # A head ended by a bare LF never has the end this path looks for:
                # aiohttp's 400. (Two byte searches: a regular expression for any bare
                # LF cost ten times the search above on a head dribbled byte by byte.)
                if len(buf) > MAX_HEAD or self.eof or b"\n\n" in buf or b"\n\r\n" in buf:
                    self._hand_over()
                return False
            if end > MAX_HEAD:
                self._hand_over()
                return False
            request = parse_head(buf[:end])
            owner = self._owner
            if request is None or (
                owner.allowed is not None and not owner.allowed(request.token, request.op)
            ):
                self._hand_over()
                return False
            self.whole = end + 4 + request.length
            if len(buf) < self.whole:
                self.pending = request
                self.since = self._loop.time()  # the body gets its own frame_timeout
        if len(buf) < self.whole:
            if self.eof:  # the client half-closed: the body will never arrive
                self.pending = request  # connection_lost counts a client gone mid-body
                assert self.transport is not None
                self.transport.close()
                return False
            more = len(buf) - self.reserved
            if more > 0:
                guard = self._owner.guard
                if not guard.take(more):
                    guard.count("buffer_budget_exceeded")
                    logger.warning(
                        "closed HTTP connection: its request body would take the port "
                        "over its limit of %d buffered bytes (max_buffered_bytes)",
                        guard.limits.max_buffered_bytes,
                    )
                    self._fail(http_response(503, _BUSY, close=True))
                    return False
                self.reserved += more
            return False
        whole = self.whole
        body = buf[whole - request.length : whole]
        self.buf = buf[whole:]
        self.pending = None
        self._release()
        self.busy = True
        self._owner.serve(self, request, body)
        transport = self.transport
        return (
            not self.busy
            and not self.blocked
            and bool(self.buf)
            and transport is not None
            and not transport.is_closing()
        )

    def respond(self, data: bytes, *, close: bool = False) -> None:
        """Write the answer to the request being served; then serve the next one."""
        transport = self.transport
        self.busy = False
        self.since = self._loop.time()
        self._owner.served += 1
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if close:
            self.close()
            return
        if self.eof and not self.buf:
            transport.close()
            return
        if self.blocked:
            return  # resume_writing goes on
        if self.paused:
            self._resume()
        if self.buf:
            self._next()

    def _fail(self, data: bytes) -> None:
        self._release()
        self.buf = b""
        self.pending = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.transport.close()

    def expire(self) -> None:
        """The request is overdue (``frame_timeout``): close, with ``408`` for a body."""
        self._owner.open.discard(self)
        if self.pending is not None:
            guard = self._owner.guard
            guard.count("frame_timeouts")
            logger.warning(
                "closed HTTP connection: request body unfinished after %s s (frame_timeout)",
                guard.limits.frame_timeout,
            )
            self._fail(
                http_response(408, b"408: Request Timeout", "text/plain; charset=utf-8", close=True)
            )
        else:
            self.close()

    def close(self) -> None:
        """Close the connection (what was buffered is dropped)."""
        self._release()
        self.buf = b""
        self.pending = None
        if self.transport is not None:
            self.transport.close()

    def _hand_over(self) -> None:
        """From now on aiohttp has the connection, starting with the unread bytes."""
        owner = self._owner
        owner.open.discard(self)
        owner.handed_over += 1
        self._release()
        data, self.buf, self.pending = self.buf, b"", None
        inner = self.inner = owner.make_aiohttp()
        assert self.transport is not None
        inner.connection_made(self.transport)
        if self.paused:
            self._resume()
        if data:
            inner.data_received(data)
        if self.eof and not inner.eof_received():
            # The client half-closed before (while an answer was being made): aiohttp
            # is told, and the transport closes as asyncio would have closed it.
            self.transport.close()
