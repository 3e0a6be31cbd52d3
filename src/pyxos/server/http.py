"""The HTTP API of a node (aiohttp): the KV operations, status and health.

Theory of operation
-------------------
The HTTP API is an in-process client of its own node. Every KV request becomes a
``Command`` with its own ``(client, seq)`` and is submitted like a binary client's
(``NodeServer.submit``): writes go through the log, reads through the leader's lease
or read-index check, so HTTP reads and writes are linearizable too. Submitting,
matching replies by ``(client, seq)`` (the API registers one reply sink with the node,
``attach_sink``), the pool of logical clients the requests borrow, and every retry are
``pyxos.client.local.LocalClients``, the client engine's in-process transport.

Answers:

- a command refused for want of a leader ("no leader yet": an election is running,
  or this node lost its leader), and any command unanswered for half a second, is
  submitted again by the API itself with the same ``(client, seq)``, by the client
  engine's rules (``pyxos.client.engine``: a jittered pause of 5 ms doubling to 50 ms
  after a refusal), so a request made during a failover succeeds once the election
  ends. A refusal does not prove a write was not proposed (it may have reached the old
  leader's log), and the store applies it at most once;
- a read still refused after about an election's time (``_READ_WAIT``): ``503`` with
  ``{"error": ..., "leader": id}`` (0 when unknown) and ``Retry-After``; a read has no
  effect, so the caller may simply retry;
- no answer within ``timeout``: ``504`` with ``"outcome": "unknown"``: the write may
  or may not have taken effect;
- disk full (``server.diskfull``): ``507`` (a write), ``503`` (a read); a retried write 504;
- a command the store refuses (bad key, too large): ``400``; a body over the value
  limit: ``413`` (checked from ``Content-Length`` and while reading, before decoding).

Limits (``pyxos.net.limits``, from the node's config): the port accepts at most
``max_connections`` connections at once (one more is closed at once, counted as
``connections_refused``); request bodies being read count against the port's
``max_buffered_bytes`` (over it: ``503`` and the connection closed,
``buffer_budget_exceeded``) and must arrive within ``frame_timeout`` seconds (else
``408`` and the connection closed, ``frame_timeouts``). Headers are bounded by
aiohttp's own limits (8190-byte lines, 128 fields) and by time (a slowloris): a request
head must be complete ``frame_timeout`` after the connection opened or last answered.

Two paths share the port: every connection starts on the lean HTTP/1.1 path of
``pyxos.server.http_fast`` (``FastConnections``), which answers plainly well-formed
``GET``/``PUT /v1/kv/KEY`` itself, through the same command path and with the same
answers as the aiohttp handlers (both in ``pyxos.server.http_kv``), and hands the
connection to aiohttp (with every byte not yet read) at its first request of any other
kind; from then on aiohttp serves it. The limits above hold on both paths.

Reads are linearizable (read-index at the leader; a follower forwards them) unless
``?stale=true`` asks for this replica's own applied state, which may lag.

A client that disconnects before its request body has arrived (a ``ConnectionError``
from reading the body) gets one debug line on the ``pyxos.http`` logger and the
``client_disconnects`` counter, not aiohttp's error traceback: it is the client's
doing, and the node has nothing to fix.

Routes: ``GET/PUT/DELETE /v1/kv/{key}`` (PUT body: the value, UTF-8 text), ``POST
/v1/kv/{key}/cas`` (JSON ``{"expected": str|null, "value": str}``), ``GET /v1/kv?prefix=``,
``/v1/status``, ``/healthz``, ``/metrics`` (Prometheus), ``/v1/members`` (members_http).

``GET /v1/kv?prefix=P&limit=N&after=K`` answers one page, as etcd's range does:
``{"entries": [[key, value], ...], "more": bool, "next": key|null}``, at most ``N``
entries (default ``DEFAULT_LIST_LIMIT``, 1 to ``MAX_LIST_ENTRIES``, else 400) with keys
after ``K``; while ``more`` is true, ask again with ``after=next``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import cast

from aiohttp import web

from pyxos.client.local import LocalClients
from pyxos.core.messages import ClientRequest
from pyxos.net.limits import PortGuard
from pyxos.net.tls import tls_acceptor
from pyxos.server.app_http import register_app_endpoints
from pyxos.server.clients import NodeHandle
from pyxos.server.dashboard import register_dashboard
from pyxos.server.diskfull import is_disk_full_refusal
from pyxos.server.http_fast import FastConnections
from pyxos.server.http_kv import MAX_CAS_BODY, KvEndpoints
from pyxos.server.http_kv import json_response as _json
from pyxos.server.members_http import register_member_endpoints
from pyxos.server.metrics import CONTENT_TYPE
from pyxos.server.ops_http import register_ops_endpoints

__all__ = ["HttpApi"]

logger = logging.getLogger("pyxos.http")


_BUSY = '{"error": "too many request bodies in flight on this port; retry"}'


def _closing(response: web.HTTPException) -> web.HTTPException:
    """``response``, with the connection closed after it (the rest of the body unread)."""
    response.force_close()
    return response


_READ_WAIT = 1.0  # seconds a refused read waits for a leader (about an election) before 503
_ATTEMPT = 0.5  # seconds one submission waits before it is sent again


class HttpApi:
    """The HTTP API of one node (``NodeServer``, seen as a ``NodeHandle``): ``await
    start(host, port)``, ``await stop()``."""

    def __init__(self, node: NodeHandle, *, timeout: float = 5.0) -> None:
        self.node = node
        self.timeout = timeout
        # Our logical clients of the node (the client engine's in-process transport).
        self._clients = LocalClients(
            self._submit, timeout=timeout, attempt_timeout=_ATTEMPT, read_wait=_READ_WAIT
        )
        self._batch: list[ClientRequest] = []
        self._clients.refusal = is_disk_full_refusal  # 504, not 507, after a lost attempt
        self._clients.sink = self._sink = node.attach_sink(self._clients.on_reply)
        self._runner: web.AppRunner | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "client_disconnects",
                "connections_refused",
                "buffer_budget_exceeded",
                "frame_timeouts",
            ),
            0,
        )
        """Counters of the HTTP port (``client_disconnects``: gone mid-request)."""
        self.guard = PortGuard(
            node.port_limits, self.counters, name=f"node {node.config.node_id} HTTP port"
        )
        """The port's limits and their accounting (connections, body bytes being read)."""
        self._server: asyncio.Server | None = None
        self.kv = KvEndpoints(node, self._clients, self._body, timeout)
        """The KV endpoints, on aiohttp and on the lean path (``pyxos.server.http_kv``)."""
        self.fast = FastConnections(
            self.guard,
            self.kv.serve_fast,
            self._aiohttp_protocol,
            allowed=None if node.config.tokens is None else self._token_allows,
        )
        """The port's connections on the lean path (``pyxos.server.http_fast``)."""
        self._sweeper: asyncio.Task[None] | None = None
        middlewares = [self._client_gone]
        if node.config.tokens is not None:
            middlewares.insert(0, self._authorize)
        self.app = web.Application(client_max_size=MAX_CAS_BODY, middlewares=middlewares)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/v1/status", self._status)
        self.app.router.add_get("/metrics", self._metrics)
        self.kv.register(self.app)  # /v1/kv (http_kv.py)
        register_dashboard(self.app, node)  # GET /: the live cluster page (dashboard.py)
        register_app_endpoints(self.app, node, self._clients, self._body, timeout)  # /v1/app/
        register_ops_endpoints(self.app, node)  # POST /v1/leader/transfer (ops_http.py)
        register_member_endpoints(self.app, node, self._body)  # /v1/members (members_http.py)

    @property
    def port(self) -> int:
        """The bound port (after ``start``; useful with port 0)."""
        assert self._server is not None, "not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (0 picks a free port)."""
        # lingering_time: after an early answer (413, 503, 408) aiohttp reads and drops
        # the rest of the body so the client sees the answer; 1 s, not 10, so a slow
        # body closed for the port's limits does not hold its connection long.
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            shutdown_timeout=1.0,
            lingering_time=1.0,
            keepalive_timeout=self.guard.limits.frame_timeout,
        )
        await self._runner.setup()
        # Our own listening socket rather than a TCPSite, so that every connection
        # passes the port's connection cap. Every connection starts on the lean KV
        # path, which hands it over to aiohttp (``_aiohttp_protocol``) at its first
        # request that path does not serve.
        assert self._runner.server is not None
        fast = self.fast
        tls = self.node.client_tls
        # Plain: ``fast`` admits each connection under the port's cap itself; TLS: the
        # acceptor admits it (handshakes count) and the connection tells the guard when
        # it is gone, either way.
        protocols: Callable[[], asyncio.BaseProtocol] = (
            fast if tls is None else tls_acceptor(self.guard, tls, fast.new)
        )
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(protocols, host, port)
        self._sweeper = loop.create_task(self._sweep())

    async def stop(self) -> None:
        """Stop listening and fail every waiting request."""
        self._clients.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        self.fast.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
        self.node.detach_sink(self._sink)

    def _submit(self, requests: list[ClientRequest]) -> None:
        """Hand our requests to the node in one batch per loop pass: the node's input
        path (a tick, the batch, its reply routing) runs once for all of them, not once
        per HTTP request."""
        batch = self._batch
        if not batch:
            asyncio.get_running_loop().call_soon(self._flush)
        batch.extend(requests)

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        if batch:
            self.node.submit(batch)

    def _aiohttp_protocol(self) -> asyncio.Protocol:
        """aiohttp's protocol for a connection the lean path hands over."""
        assert self._runner is not None and self._runner.server is not None
        return cast(asyncio.Protocol, self._runner.server())

    async def _sweep(self) -> None:
        """Close the lean path's overdue connections, a few times per ``frame_timeout``."""
        loop = asyncio.get_running_loop()
        every = min(1.0, max(0.05, self.guard.limits.frame_timeout / 4))
        while True:
            await asyncio.sleep(every)
            self.fast.sweep(loop.time())

    def _token_allows(self, token: str | None, op: str) -> bool:
        """Whether ``token`` may run ``op`` (as ``_authorize`` decides); a request it
        may not run goes to aiohttp, which answers 401 or 403 and counts it."""
        tokens = self.node.config.tokens
        role = tokens.role(token) if tokens is not None and token else None
        return role is not None and (op == "get" or role == "write")

    async def _body(self, request: web.Request, limit: int) -> bytes:
        """The request body, read within the port's limits (see the module notes)."""
        if request.content_length is not None and request.content_length > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
        guard = self.guard
        chunks: list[bytes] = []
        reserved = 0
        try:
            async with asyncio.timeout(guard.limits.frame_timeout):
                while chunk := await request.content.readany():
                    if reserved + len(chunk) > limit:
                        raise web.HTTPRequestEntityTooLarge(
                            max_size=limit, actual_size=reserved + len(chunk)
                        )
                    if not guard.take(len(chunk)):
                        guard.count("buffer_budget_exceeded")
                        logger.warning(
                            "closed HTTP connection from %s: its request body would take "
                            "the port over its limit of %d buffered bytes (max_buffered_bytes)",
                            request.remote,
                            guard.limits.max_buffered_bytes,
                        )
                        raise _closing(
                            web.HTTPServiceUnavailable(text=_BUSY, content_type="application/json")
                        )
                    reserved += len(chunk)
                    chunks.append(chunk)
        except TimeoutError:
            guard.count("frame_timeouts")
            logger.warning(
                "closed HTTP connection from %s: request body unfinished after %s s "
                "(frame_timeout)",
                request.remote,
                guard.limits.frame_timeout,
            )
            raise _closing(web.HTTPRequestTimeout()) from None
        finally:
            guard.give(reserved)
        return b"".join(chunks)

    @web.middleware
    async def _authorize(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """With ``tokens`` configured (``pyxos.server.auth``): 401 without a valid bearer
        token, 403 for a write with a read token; ``/healthz`` stays open. Decided on
        the headers alone, before any body is read or anything is submitted."""
        tokens = self.node.config.tokens
        assert tokens is not None
        if request.path == "/healthz":
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        role = tokens.role(token.strip()) if scheme.lower() == "bearer" else None
        if role is None:
            self.counters["auth_refused"] = self.counters.get("auth_refused", 0) + 1
            return _json(
                401,
                {"error": "unauthorized: a valid bearer token is required"},
                {"WWW-Authenticate": 'Bearer realm="pyxos"'},
            )
        read_only = request.method in ("GET", "HEAD") or request.path == "/v1/app/query"
        if role != "write" and not read_only:
            self.counters["auth_forbidden"] = self.counters.get("auth_forbidden", 0) + 1
            return _json(403, {"error": f"forbidden: a {role} token may not {request.method}"})
        return await handler(request)

    @web.middleware
    async def _client_gone(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except RuntimeError as e:
            # aiohttp's "Connection closed.": the body is read after the connection was
            # already lost (the rest of the body and the FIN arrived before the handler
            # ran; a connection the lean path hands over makes that more likely).
            if request.transport is not None:
                raise
            self._gone(request, e)
            return web.Response(status=400)
        except ConnectionError as e:
            # The client hung up mid-request (aiohttp's "Connection lost" while the body
            # was read). Nothing to answer and nothing to fix on this side: one debug
            # line, no traceback. The response below is never delivered.
            self._gone(request, e)
            return web.Response(status=400)

    async def _healthz(self, request: web.Request) -> web.Response:
        return _json(200, {"ok": True, "node_id": self.node.config.node_id})

    async def _status(self, request: web.Request) -> web.Response:
        return _json(200, self.node.status())

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.node.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    def _gone(self, request: web.Request, e: Exception) -> None:
        """Count and log (DEBUG) a client gone in the middle of ``request``."""
        self.counters["client_disconnects"] += 1
        logger.debug(
            "HTTP client %s disconnected during %s %s: %s",
            request.remote,
            request.method,
            request.path,
            e or type(e).__name__,
        )
