"""The HTTP endpoints of any application: ``POST /v1/app/command`` and ``/v1/app/query``.

Theory of operation
-------------------
An application that declares a JSON codec (``json_command(doc) -> bytes``,
``json_query(doc) -> bytes``, ``json_result(result) -> JSON value``; see
docs/architecture.md, *The application contract*) is reachable over HTTP: the request
body is a JSON document, the codec turns it into the application's command (query)
bytes, and the node's own logical clients (``pyxos.client.local``, the engine's
retries, the same ``(client, seq)`` rule as every client) carry it to the leader. A
command goes through the log; a query is sent as a query (lease or read-index, never
the log). Answers: ``200 {"result": ...}``; ``400 {"error"}`` when the body is not
JSON, the codec refuses the document, or the application refused the command
(``validate``) or raised; ``500`` when ``json_result`` fails or returns what JSON
cannot carry (for a command with ``"applied": true``: it took effect); ``404`` for
an application without a codec; ``507`` (a command) or ``503`` (a query) while the
node's disk is full; ``503`` when a query finds no leader, ``504 {"outcome":
"unknown"}`` when a command got no answer in time (it may still take effect), as for
the KV endpoints.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from pyxos.client.engine import NoLeader, OutcomeUnknown
from pyxos.client.local import LocalClients
from pyxos.server.clients import NodeHandle
from pyxos.server.diskfull import http_refusal
from pyxos.statemachine.kv import KVStore

__all__ = ["kv_store", "register_app_endpoints", "require_kv"]

ReadBody = Callable[[web.Request, int], Awaitable[bytes]]
"""Reads a request body within the port's limits (``HttpApi._body``)."""


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


def require_kv(node: NodeHandle) -> None:
    """Refuse a KV endpoint with ``404`` if the node serves another application."""
    service = node.node
    if service is not None and not isinstance(service.app, KVStore):
        error = (
            f"this node serves {node.config.app}, not the KV store: "
            "use /v1/app/command and /v1/app/query"
        )
        raise web.HTTPNotFound(text=json.dumps({"error": error}), content_type="application/json")


def kv_store(node: NodeHandle) -> tuple[KVStore, int]:
    """The node's KV store and its applied slot (stale reads): ``503`` before startup,
    ``404`` if the node serves another application."""
    service = node.node
    if service is None:
        raise web.HTTPServiceUnavailable(text='{"error": "starting"}')
    require_kv(node)
    assert isinstance(service.app, KVStore)
    return service.app, service.state.applied_slot


def register_app_endpoints(
    app: web.Application,
    node: NodeHandle,
    clients: LocalClients,
    read_body: ReadBody,
    timeout: float,
) -> None:
    """Add ``POST /v1/app/command`` and ``POST /v1/app/query`` to ``app``."""

    async def call(request: web.Request, *, query: bool) -> web.Response:
        service = node.node
        if service is None:
            raise web.HTTPServiceUnavailable(text='{"error": "starting"}')
        application = service.app
        to_bytes = getattr(application, "json_query" if query else "json_command", None)
        from_bytes = getattr(application, "json_result", None)
        if to_bytes is None or from_bytes is None:
            error = (
                f"the application ({node.config.app}) declares no JSON codec "
                "(json_command, json_query, json_result): use the binary client"
            )
            return _json(404, {"error": error})
        body = await read_body(request, node.config.client_max_frame_bytes)
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError) as e:  # RecursionError: nested too deep
            return _json(400, {"error": f"the body is not JSON: {e}"})
        try:
            data = to_bytes(doc)
        except Exception as e:  # the application's codec refused the document
            return _json(400, {"error": str(e) or type(e).__name__})
        if not isinstance(data, bytes):
            return _json(500, {"error": "the application's JSON codec did not return bytes"})
        what = "query" if query else "command"
        try:
            reply = await clients.call(lambda _c, _s: data, what, read_only=query)
        except NoLeader as e:
            return _json(503, {"error": "no leader to serve the query", "leader": e.leader})
        except OutcomeUnknown as e:
            unknown = {"error": f"no answer within {timeout} s", "outcome": "unknown"}
            return _json(504, {**unknown, "leader": e.leader})
        if reply.error is not None:  # 400; 507/503 while the node's disk is full
            raise http_refusal(reply.error, read=query)
        try:
            result = from_bytes(reply.result)
            return _json(200, {"result": result})
        except Exception as e:  # the codec failed on its own result, or gave non-JSON
            error = f"the application's json_result failed: {type(e).__name__}: {e}"
            # A command was applied all the same: say so, or a client would retry it.
            return _json(500, {"error": error} if query else {"error": error, "applied": True})

    async def command(request: web.Request) -> web.Response:
        return await call(request, query=False)

    async def query(request: web.Request) -> web.Response:
        return await call(request, query=True)

    app.router.add_post("/v1/app/command", command)
    app.router.add_post("/v1/app/query", query)
