"""The KV endpoints of the HTTP API, on both of the port's paths.

Theory of operation
-------------------
``KvEndpoints`` turns ``GET/PUT/DELETE /v1/kv/{key}``, ``POST /v1/kv/{key}/cas`` and
``GET /v1/kv?prefix=`` into KV ``Command``s submitted as an in-process client of the node
(``pyxos.client.local.LocalClients``, shared with the rest of the HTTP API), and their
``Result``s into answers. It serves them twice over the same command path: as aiohttp
handlers (``register``) and as the lean HTTP/1.1 path's serve callback (``serve_fast``,
``pyxos.server.http_fast``), which answers a plainly well-formed ``GET``/``PUT`` with the
same status, JSON and headers, by a callback on the command's future (no task per
request). The answers (400, 404, 503, 504, 507) are described in ``pyxos.server.http``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from pyxos.client.engine import NoLeader, OutcomeUnknown
from pyxos.client.local import LocalClients
from pyxos.core.messages import ClientReply
from pyxos.server.app_http import kv_store, require_kv
from pyxos.server.clients import NodeHandle
from pyxos.server.diskfull import http_refusal
from pyxos.server.http_fast import MAX_FAST_BODY, FastConnection, FastRequest, http_response
from pyxos.statemachine.kv import (
    DEFAULT_LIST_LIMIT,
    MAX_KEY_BYTES,
    MAX_LIST_ENTRIES,
    MAX_VALUE_BYTES,
    Command,
    Result,
    decode_result,
    validate_command,
)

__all__ = ["MAX_CAS_BODY", "BodyReader", "KvEndpoints", "json_response"]

logger = logging.getLogger("pyxos.http")

_encoder = msgspec.msgpack.Encoder()
MAX_CAS_BODY = 2 * MAX_VALUE_BYTES + 4096
"""The largest request body the port takes (a cas: the expected and the new value)."""
_READ_OPS = frozenset({"get", "list"})

BodyReader = Callable[[web.Request, int], Awaitable[bytes]]
"""Reads a request's body within the port's limits (``HttpApi._body``)."""


def json_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON answer through aiohttp."""
    text = json.dumps(body)
    return web.Response(status=status, text=text, content_type="application/json", headers=headers)


_json = json_response


class KvEndpoints:
    """The KV operations of one node's HTTP API, as a client of the node: aiohttp's
    handlers (``register``) and the lean path's (``serve_fast``)."""

    def __init__(
        self, node: NodeHandle, clients: LocalClients, body: BodyReader, timeout: float
    ) -> None:
        self.node = node
        self._clients = clients
        self._body = body
        self.timeout = timeout

    def register(self, app: web.Application) -> None:
        """Add the KV routes to ``app``."""
        app.router.add_get("/v1/kv", self._list)
        app.router.add_post("/v1/kv/{key:.+}/cas", self._cas)
        app.router.add_get("/v1/kv/{key:.+}", self._get)
        app.router.add_put("/v1/kv/{key:.+}", self._put)
        app.router.add_delete("/v1/kv/{key:.+}", self._delete)

    def serve_fast(self, conn: FastConnection, request: FastRequest, body: bytes) -> None:
        """Start one request of the lean path (``FastConnections.serve``): the same
        command, checks and answers as ``_get`` / ``_put`` through aiohttp, with no
        task of its own (``LocalClients.start``; the answer by a callback)."""
        key = request.key
        try:
            if len(key) > MAX_KEY_BYTES:  # ASCII: one byte per character
                too_long = {"error": f"key longer than {MAX_KEY_BYTES} bytes"}
                _answer(conn, request, _raw(400, too_long))
                return
            if request.op == "put":
                try:
                    value = body.decode()
                except UnicodeDecodeError:
                    _answer(conn, request, _raw(400, {"error": "the value is not UTF-8 text"}))
                    return
                # Valid by construction: a non-empty ASCII key within MAX_KEY_BYTES,
                # a value of at most MAX_FAST_BODY bytes decoded (so no surrogate).
                future = self._start("put", key, value, checked=True)
            else:
                future = self._start("get", key, checked=True)
        except web.HTTPException as e:
            _answer(conn, request, _raw_response(e))
            return
        except Exception:
            logger.exception("HTTP %s %r failed", request.op.upper(), key)
            conn.respond(http_response(500, _INTERNAL, close=True), close=True)
            return
        future.add_done_callback(functools.partial(self._fast_done, conn, request))

    def _fast_done(
        self, conn: FastConnection, request: FastRequest, future: asyncio.Future[ClientReply]
    ) -> None:
        if future.cancelled():  # the API is stopping
            conn.close()
            return
        try:
            try:
                result = self._outcome(request.op, future)
            except web.HTTPException as e:
                data = _raw_response(e)
            else:
                if isinstance(result, web.Response):
                    data = _raw_response(result)
                elif request.op == "put":
                    data = http_response(200, _PUT_OK)
                elif result.value is None:
                    data = _raw(404, {"error": "not found", "key": request.key})
                else:
                    data = _raw(200, {"key": request.key, "value": result.value})
        except Exception:
            logger.exception("HTTP %s %r failed", request.op.upper(), request.key)
            conn.respond(http_response(500, _INTERNAL, close=True), close=True)
            return
        _answer(conn, request, data)

    # -- commands, as a client of the node --------------------------------------------

    def _start(
        self,
        op: str,
        key: str,
        value: str | None = None,
        expected: str | None = None,
        *,
        limit: int = 0,
        after: str | None = None,
        checked: bool = False,
    ) -> asyncio.Future[ClientReply]:
        """Submit one command as a client of our node (the client engine's retries);
        the future of its reply (``_outcome`` reads it). 404 raised when the node
        serves another application, 400 when the command is invalid (``checked``: the
        caller knows it is valid, as the lean path does for its keys and values)."""

        require_kv(self.node)  # 404 when the node serves another application

        def encode(client: int, seq: int) -> bytes:
            command = Command(client, seq, op, key, value, expected, limit, after)
            if checked:
                return _encoder.encode(command)
            try:
                validate_command(command)
            except ValueError as e:
                raise web.HTTPBadRequest(
                    text=json.dumps({"error": str(e)}), content_type="application/json"
                ) from None
            return _encoder.encode(command)

        return self._clients.start(encode, f"{op} {key!r}", read_only=op in _READ_OPS)

    def _outcome(self, op: str, future: asyncio.Future[ClientReply]) -> Result | web.Response:
        """What a finished ``_start`` came to: the ``Result``, or the answer to give
        instead (503, 504; a refusal raised: 400, or 507/503 while the disk is full)."""
        try:
            reply = future.result()
        except NoLeader as e:
            body = {"error": "no leader to serve the read", "leader": e.leader}
            return _json(503, body, {"Retry-After": "1"})
        except OutcomeUnknown as e:
            body = {
                "error": f"no answer within {self.timeout} s",
                "outcome": "unknown",
                "leader": e.leader,
            }
            return _json(504, body)
        result = decode_result(reply.result)
        if result.error is not None:  # 400; 507/503 while the disk is full
            raise http_refusal(result.error, read=op in _READ_OPS)
        return result

    async def _run(
        self,
        op: str,
        key: str,
        value: str | None = None,
        expected: str | None = None,
        *,
        limit: int = 0,
        after: str | None = None,
    ) -> Result | web.Response:
        """Run one command as a client of our node; its ``Result``, or the answer to
        give instead (``_outcome``)."""
        future = self._start(op, key, value, expected, limit=limit, after=after)
        with contextlib.suppress(NoLeader, OutcomeUnknown):
            await future
        return self._outcome(op, future)

    # -- handlers ------------------------------------------------------------------------

    @staticmethod
    def _key(request: web.Request) -> str:
        key: str = request.match_info["key"]
        if len(key.encode(errors="surrogatepass")) > MAX_KEY_BYTES:
            raise web.HTTPBadRequest(
                text=json.dumps({"error": f"key longer than {MAX_KEY_BYTES} bytes"}),
                content_type="application/json",
            )
        return key

    def _stale(self, request: web.Request) -> bool:
        return request.query.get("stale", "").lower() in ("1", "true", "yes")

    async def _get(self, request: web.Request) -> web.Response:
        key = self._key(request)
        if self._stale(request):
            # Asked for: this replica's applied state, possibly behind the leader.
            store, applied = kv_store(self.node)
            value = store.get_local(key)
            body = {"key": key, "value": value, "stale": True, "applied": applied}
            return _json(200 if value is not None else 404, body)
        result = await self._run("get", key)
        if isinstance(result, web.Response):
            return result
        if result.value is None:
            return _json(404, {"error": "not found", "key": key})
        return _json(200, {"key": key, "value": result.value})

    async def _put(self, request: web.Request) -> web.Response:
        key = self._key(request)
        body = await self._body(request, MAX_VALUE_BYTES)
        try:
            value = body.decode()
        except UnicodeDecodeError:
            return _json(400, {"error": "the value is not UTF-8 text"})
        result = await self._run("put", key, value)
        if isinstance(result, web.Response):
            return result
        return _json(200, {"ok": True})

    async def _delete(self, request: web.Request) -> web.Response:
        key = self._key(request)
        result = await self._run("delete", key)
        if isinstance(result, web.Response):
            return result
        return _json(200, {"deleted": result.value is not None, "value": result.value})

    async def _cas(self, request: web.Request) -> web.Response:
        key = self._key(request)
        raw = await self._body(request, MAX_CAS_BODY)
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nested too deep
            return _json(400, {"error": "the body is not JSON"})
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("value"), str)
            or not isinstance(body.get("expected"), str | None)
            or set(body) - {"value", "expected"}
        ):
            return _json(400, {"error": 'expected {"expected": string or null, "value": string}'})
        result = await self._run("cas", key, body["value"], body.get("expected"))
        if isinstance(result, web.Response):
            return result
        return _json(200, {"ok": result.ok, "value": None if result.ok else result.value})

    async def _list(self, request: web.Request) -> web.Response:
        prefix = request.query.get("prefix", "")
        after = request.query.get("after")
        text = request.query.get("limit", str(DEFAULT_LIST_LIMIT))
        # ASCII digits only: str.isdigit() also holds for "²", which int() rejects.
        limit = int(text) if text.isascii() and text.isdigit() and len(text) <= 6 else -1
        if not 1 <= limit <= MAX_LIST_ENTRIES:
            return _json(
                400,
                {"error": f"limit must be an integer from 1 to {MAX_LIST_ENTRIES}, not {text!r}"},
            )
        if self._stale(request):
            try:
                validate_command(Command(0, 0, "list", prefix, limit=limit, after=after))
            except ValueError as e:
                return _json(400, {"error": str(e)})
            entries, more = kv_store(self.node)[0].list_page(prefix, limit, after)
            return _json(200, _page(entries, more) | {"stale": True})
        result = await self._run("list", prefix, limit=limit, after=after)
        if isinstance(result, web.Response):
            return result
        return _json(200, _page(result.values or [], result.more))


_PUT_OK = json.dumps({"ok": True}).encode()
assert MAX_FAST_BODY <= MAX_VALUE_BYTES, "the lean path's values need no size check"
_INTERNAL = b'{"error": "internal error"}'


def _answer(conn: FastConnection, request: FastRequest, data: bytes) -> None:
    """Write a lean-path answer; with ``Connection: close`` asked for, say so and close."""
    if request.close:
        conn.respond(data.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1), close=True)
    else:
        conn.respond(data)


def _raw(status: int, body: dict[str, Any]) -> bytes:
    """The lean path's JSON answer (as ``_json`` makes it through aiohttp)."""
    return http_response(status, json.dumps(body).encode())


def _raw_response(response: web.Response) -> bytes:
    """The lean path's bytes of an answer made for aiohttp (503, 504, 400, ...)."""
    body = response.body
    data = body if isinstance(body, bytes) else b""
    headers = dict(response.headers)
    content_type = headers.get("Content-Type", "application/octet-stream")
    return http_response(response.status, data, content_type, headers)


def _page(entries: list[tuple[str, str]], more: bool) -> dict[str, Any]:
    """The JSON answer of a list page: ``next`` is the ``after`` of the following page."""
    more = more and bool(entries)
    return {
        "entries": [[k, v] for k, v in entries],
        "more": more,
        "next": entries[-1][0] if more else None,
    }
