"""The operator's HTTP endpoints: ``POST /v1/leader/transfer``.

Theory of operation
-------------------
A leader transfer (docs/architecture.md, *Leader transfer*) is asked of the leader:
``POST /v1/leader/transfer`` with ``{"to": N}`` (or ``?to=N``). The handler runs on
the node's event loop, so it calls the core directly
(``Replica.transfer_leadership``) and then lets the node drive one pass (an empty
``submit``) so the first ``TransferRequest`` leaves at once. It then waits, polling
the replica's ``transfer_result`` every few milliseconds, until the transfer is
done or given up (the core bounds both stages by election timeouts), and answers:

- ``200 {"ok": true, "leader": N, "result": ...}``: this node handed over to N;
- ``409 {"ok": false, "error": ..., "leader": L}``: this node does not lead (ask L),
  or a transfer is already under way, or a configuration change is being proposed;
- ``400``: the body is not ``{"to": <node id>}``, or N cannot lead: it is unknown, a
  learner, removed, being removed or not a voter yet (``Replica.transfer_refusal``
  says which), or N already leads;
- ``504 {"ok": false, "result": ...}``: N did not catch up or did not win in time, and
  this node resumed leading (nothing was lost: new commands waited in its queue).

With client tokens configured the endpoint needs a write token (it is a POST).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from pyxos.server.clients import NodeHandle

__all__ = ["register_ops_endpoints"]

_POLL = 0.01


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


async def _target(request: web.Request) -> int | None:
    text = request.query.get("to")
    if text is None:
        raw = await request.read()
        try:
            doc = json.loads(raw) if raw.strip() else {}
        except (ValueError, RecursionError):  # RecursionError: nested too deep
            return None
        text = doc.get("to") if isinstance(doc, dict) else None
    if isinstance(text, bool):
        return None
    if isinstance(text, int):
        return text
    if isinstance(text, str) and text.strip().isascii() and text.strip().isdigit():
        return int(text)
    return None


def register_ops_endpoints(app: web.Application, node: NodeHandle) -> None:
    """Add ``POST /v1/leader/transfer`` to ``app``."""

    async def transfer(request: web.Request) -> web.Response:
        target = await _target(request)
        if target is None:
            return _json(400, {"ok": False, "error": 'expected {"to": <node id>} (or ?to=N)'})
        service = node.node
        if service is None:
            return _json(503, {"ok": False, "error": "starting"})
        replica = service.replica
        if not replica.is_leader:
            leader = replica.leader
            error = f"node {replica.node_id} is not the leader"
            return _json(409, {"ok": False, "error": error, "leader": leader})
        refused = replica.transfer_leadership(target)
        if refused is not None:
            # A transfer or a change under way: try again later; else a bad target.
            status = 409 if "under way" in refused or "being proposed" in refused else 400
            return _json(status, {"ok": False, "error": refused, "leader": replica.node_id})
        node.submit([])  # drive one pass: the first TransferRequest leaves now
        hi = replica.config.election_timeout[1]
        deadline = asyncio.get_running_loop().time() + hi * 6 + 1.0
        while replica.transfer is not None and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(_POLL)
        result = replica.transfer_result
        if result.startswith("done"):
            return _json(200, {"ok": True, "leader": target, "result": result})
        return _json(504, {"ok": False, "result": result, "leader": replica.leader})

    app.router.add_post("/v1/leader/transfer", transfer)
