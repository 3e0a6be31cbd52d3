"""The HTTP endpoints of member operations: ``/v1/members`` (docs/membership.md, *Operations*).

Theory of operation
-------------------
Every endpoint turns its request into a :class:`~pyxos.statemachine.members.MemberOp`
and sends it as a client command through the node's own logical clients
(``pyxos.client.local``), so it reaches the leader from any node (a follower forwards
it) and is retried there with the same ``(client, seq)`` if a leader is lost; the
leader's ``MemberDesk`` checks and makes the change and answers once it is chosen.

- ``GET /v1/members``: the membership as the leader knows it (voters, learners,
  quorum sizes, pending configurations, removed ids, peer addresses);
- ``POST /v1/members`` ``{"node": N, "address": "host:port"}``: add N as a learner;
- ``POST /v1/members/N/promote``: make learner N a voter (refused unless it is caught up);
- ``DELETE /v1/members/N``: remove N (the leader too: it hands over);
- ``POST /v1/members/N/replace`` ``{"new": M, "address": "host:port"}``: voter N
  leaves and the new id M votes in its place, in one change.

A change of the voters takes majority quorums of the new voters unless ``q1``/``q2``
(flexible quorums, ``q1 + q2`` above the number of voters) are given, in the body or
the query (``DELETE /v1/members/N?q1=3&q2=2``); adding a learner keeps the sizes.

Answers: ``200`` with the leader's answer (``done``, ``epoch``, ``configuration``);
``400 {"error"}`` for a malformed request or one the membership forbids (unknown id,
reused id, not a learner); ``409 {"error"}`` for one that may succeed later (another
change in flight, a learner not caught up, no live quorum); ``503`` when there is no
leader; ``504 {"outcome": "unknown"}`` when no answer came in time (the change may
still be made: ``GET /v1/members`` says).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from pyxos.client.engine import NoLeader, OutcomeUnknown
from pyxos.client.local import LocalClients
from pyxos.server.clients import NodeHandle
from pyxos.statemachine.members import MemberOp, encode_member_op

__all__ = ["MEMBER_TIMEOUT", "register_member_endpoints"]

MEMBER_TIMEOUT = 15.0
"""Seconds a member operation may take over HTTP (a promotion waits for its learner)."""

_LATER = ("one change at a time", "not caught up", "did not answer", "no live quorum")
"""Words of refusals that may not hold a moment later (409, not 400)."""


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


def _node_id(request: web.Request) -> int:
    text = request.match_info["node"]
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"node id {text[:40]!r} is not a number >= 1"}),
            content_type="application/json",
        )
    return int(text)


def register_member_endpoints(
    app: web.Application,
    node: NodeHandle,
    read_body: Callable[[web.Request, int], Awaitable[bytes]],
) -> None:
    """Add the ``/v1/members`` endpoints to ``app`` (see the module notes)."""
    clients = LocalClients(node.submit, timeout=MEMBER_TIMEOUT, attempt_timeout=0.5, read_wait=1.0)
    clients.sink = node.attach_sink(clients.on_reply)
    app.on_shutdown.append(lambda _app: _cancel(clients))

    async def document(request: web.Request) -> dict[str, Any]:
        body = await read_body(request, 64 * 1024)
        if not body.strip():
            return {}
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError) as e:  # RecursionError: nested too deep
            raise web.HTTPBadRequest(
                text=json.dumps({"error": f"the body is not JSON: {e}"}),
                content_type="application/json",
            ) from None
        if not isinstance(doc, dict):
            raise web.HTTPBadRequest(
                text=json.dumps({"error": "the body must be a JSON object"}),
                content_type="application/json",
            )
        return doc

    async def ask(op: MemberOp) -> web.Response:
        if node.node is None:
            return _json(503, {"error": "starting"})
        command = encode_member_op(op)
        try:
            # A list changes nothing: sent as a query, it gets 503 soon without a leader.
            reply = await clients.call(
                lambda _c, _s: command, "member " + op.op, read_only=op.op == "list"
            )
        except NoLeader as e:
            return _json(503, {"error": "no leader right now", "leader": e.leader})
        except OutcomeUnknown as e:
            return _json(
                504,
                {
                    "error": f"no answer within {MEMBER_TIMEOUT} s: the change may still be "
                    "made (GET /v1/members says)",
                    "outcome": "unknown",
                    "leader": e.leader,
                },
            )
        if reply.error is not None:
            status = 409 if any(w in reply.error for w in _LATER) else 400
            return _json(status, {"error": reply.error, "leader": reply.leader})
        try:
            answer = json.loads(reply.result)
        except ValueError:
            answer = {}
        cluster = node.config.cluster_id
        return _json(200, {"ok": True, "cluster": cluster, "leader": reply.leader, **answer})

    def int_field(doc: dict[str, Any], name: str) -> int:
        value = doc.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise web.HTTPBadRequest(
                text=json.dumps({"error": f'"{name}" must be a node id (an integer >= 1)'}),
                content_type="application/json",
            )
        return value

    def address_field(doc: dict[str, Any]) -> str:
        value = doc.get("address", "")
        if not isinstance(value, str):
            raise web.HTTPBadRequest(
                text=json.dumps({"error": '"address" must be a string "host:port"'}),
                content_type="application/json",
            )
        return value

    async def members(request: web.Request) -> web.Response:
        joining = request.query.get("node", "0")
        if not (joining.isascii() and joining.isdigit()):
            return _json(400, {"error": f"node {joining[:40]!r} is not a node id"})
        return await ask(MemberOp(op="list", node=int(joining)))

    async def add(request: web.Request) -> web.Response:
        doc = await document(request)
        return await ask(
            MemberOp(op="add", node=int_field(doc, "node"), address=address_field(doc))
        )

    def sizes(doc: dict[str, Any], request: web.Request) -> tuple[int, int]:
        """``q1``/``q2`` from the body or the query (absent: 0, a majority)."""
        out: dict[str, int] = {}
        for name in ("q1", "q2"):
            value = doc.get(name, request.query.get(name, 0))
            if isinstance(value, str) and value.isascii() and value.isdigit():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise web.HTTPBadRequest(
                    text=json.dumps({"error": f'"{name}" must be a quorum size >= 0'}),
                    content_type="application/json",
                )
            out[name] = value
        return out["q1"], out["q2"]

    async def promote(request: web.Request) -> web.Response:
        node_id, doc = _node_id(request), await document(request)
        q1, q2 = sizes(doc, request)
        return await ask(MemberOp(op="promote", node=node_id, q1=q1, q2=q2))

    async def remove(request: web.Request) -> web.Response:
        node_id, doc = _node_id(request), await document(request)
        q1, q2 = sizes(doc, request)
        return await ask(MemberOp(op="remove", node=node_id, q1=q1, q2=q2))

    async def replace(request: web.Request) -> web.Response:
        old = _node_id(request)
        doc = await document(request)
        new, address = int_field(doc, "new"), address_field(doc)
        q1, q2 = sizes(doc, request)
        return await ask(MemberOp(op="replace", node=old, new=new, address=address, q1=q1, q2=q2))

    app.router.add_get("/v1/members", members)
    app.router.add_post("/v1/members", add)
    app.router.add_post("/v1/members/{node}/promote", promote)
    app.router.add_post("/v1/members/{node}/replace", replace)
    app.router.add_delete("/v1/members/{node}", remove)


async def _cancel(clients: LocalClients) -> None:
    clients.cancel()
