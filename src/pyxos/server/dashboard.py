"""The live cluster page: ``GET /`` on a node's HTTP port, fed by server-sent events.

Theory of operation
-------------------
``GET /`` serves one page (``dashboard_assets/``, package data; plain JavaScript, no
CDN). The page opens ``GET /v1/events`` (server-sent events) on this node and on every
other member it is told of (``/?members=host:port,host:port``; ``pyxos demo --web``
links it that way): each stream sends this node's summary about four times a second
(role, leader, ballot, promised ballot, chosen and applied slots, elections, fsync
count and total seconds) and the node's newest log lines. Everything the page shows
across the cluster (the leader, the elections it saw, commit rate and fsync latency
as sparklines) it derives from those streams, so a node needs nothing from its peers
for it, and a member that dies simply goes grey on the page while the others go on.

A page served by one member reads the others' streams across origins (another port,
maybe another host), so ``/v1/events`` allows an ``Origin`` whose host is this node's
host or one of its peers' hosts, and no other: a web page from anywhere else cannot
read the cluster's state through a browser on the same machine. With ``tokens``
configured, the page and the stream need a token like every other route (a browser's
EventSource cannot send one across origins: with tokens on, each member's page shows
that member only).

A stream costs one small JSON object per quarter second per open page; it ends when
the page goes away or the node stops (aiohttp cancels the handler).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web

if TYPE_CHECKING:
    from pyxos.server.clients import NodeHandle

__all__ = ["EVENT_INTERVAL", "LogTail", "register_dashboard"]

EVENT_INTERVAL = 0.25
"""Seconds between two summaries on a stream."""

_ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}


class LogTail(logging.Handler):
    """Keeps the newest ``size`` log lines of the ``pyxos`` loggers, numbered."""

    def __init__(self, size: int = 200) -> None:
        super().__init__(level=logging.INFO)
        self.lines: deque[tuple[int, str]] = deque(maxlen=size)
        self.count = 0
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        """Keep one formatted line (never raises into the logging call)."""
        try:
            self.count += 1
            self.lines.append((self.count, self.format(record)))
        except Exception:  # a log line that does not format is not worth a failure
            self.handleError(record)

    def since(self, seen: int) -> list[tuple[int, str]]:
        """The lines numbered above ``seen``, oldest first."""
        return [(n, text) for n, text in self.lines if n > seen]


_tail: LogTail | None = None


def _log_tail() -> LogTail:
    global _tail
    if _tail is None:
        _tail = LogTail()
        logging.getLogger("pyxos").addHandler(_tail)
    return _tail


def _asset(name: str) -> bytes:
    return (resources.files("pyxos.server") / "dashboard_assets" / name).read_bytes()


def _fsync_totals(node: NodeHandle) -> tuple[float, float]:
    """(count, sum of seconds) of the node's fsync histogram."""
    count = total = 0.0
    histogram = getattr(getattr(node, "metrics", None), "fsync_seconds", None)
    if histogram is None:
        return count, total
    for metric in histogram.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
    return count, total


def summary(node: NodeHandle) -> dict[str, Any]:
    """What one stream event says of ``node``."""
    status = node.status()
    count, total = _fsync_totals(node)
    keys = (
        "node_id",
        "state",
        "role",
        "leader",
        "ballot",
        "promised",
        "first_unchosen",
        "applied",
        "elections",
        "leader_changes",
        "keys",
    )
    out = {k: status.get(k) for k in keys}
    out["time"] = time.time()
    out["fsyncs"] = count
    out["fsync_seconds"] = total
    out["members"] = sorted(node.config.peers)
    return out


def register_dashboard(app: web.Application, node: NodeHandle) -> None:
    """Add ``GET /``, ``GET /v1/events`` and the page's assets to ``app``."""
    tail = _log_tail()
    hosts = {host for host, _ in node.config.peers.values()} | {"127.0.0.1", "localhost"}
    page = _asset("index.html")

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8")

    async def asset(request: web.Request) -> web.Response:
        kind = _ASSETS.get(request.match_info["name"])
        if kind is None:
            raise web.HTTPNotFound()
        return web.Response(
            body=_asset(request.match_info["name"]), content_type=kind, charset="utf-8"
        )

    async def events(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        origin = request.headers.get("Origin")
        if origin is not None:
            if urlsplit(origin).hostname not in hosts:
                raise web.HTTPForbidden(text='{"error": "origin not allowed"}')
            headers["Access-Control-Allow-Origin"] = origin
            headers["Vary"] = "Origin"
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        seen = max(0, tail.count - 20)
        try:
            while True:
                event = summary(node)
                lines = tail.since(seen)
                if lines:
                    seen = lines[-1][0]
                event["log"] = [text for _, text in lines]
                await response.write(f"data: {json.dumps(event)}\n\n".encode())
                await asyncio.sleep(EVENT_INTERVAL)
        except ConnectionError:  # the page went away
            pass
        return response

    app.router.add_get("/", index)
    app.router.add_get("/v1/events", events)
    app.router.add_get("/dashboard/{name}", asset)
