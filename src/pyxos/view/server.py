"""``pyxos view TRACE``: serve a trace file and the page that draws it, on loopback.

Theory of operation
-------------------
The page does all the work in the browser: it fetches the trace file once, parses
every line, derives what it draws (message arrows, fault bands, each node's state)
and redraws only the visible window of the sequence diagram (see the comment at the
top of ``assets/viewer.js``). So the server is small: ``/`` is the page, ``/assets/``
its script and style sheet (package data, shipped in the wheel; no CDN, no build
step), ``/trace.jsonl`` the file as it is on disk. The header line is checked before
anything is served, so a file that is not a trace, or of a newer version, is a clear
error at the command line instead of a blank page. Real nodes' files (``pyxos serve
--trace``, one per node) are merged into one run first (``pyxos.view.merge``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import webbrowser
from importlib import resources
from pathlib import Path

from aiohttp import web

from pyxos.sim.traceout import TRACE_FORMAT, TRACE_VERSION
from pyxos.view.merge import merge_node_traces

__all__ = ["TraceError", "make_app", "read_header", "run_view", "start_view"]

_ASSETS = {
    "viewer.js": "text/javascript",
    "viewer.css": "text/css",
}


class TraceError(ValueError):
    """The file is not a trace this version of pyxos can show."""


def read_header(path: Path) -> dict[str, object]:
    """The header line of a trace file; raise :class:`TraceError` if it is not one."""
    try:
        with path.open("rb") as f:
            first = f.readline(1 << 20)
    except OSError as e:
        raise TraceError(f"{path}: {e.strerror or e}") from e
    try:
        header = json.loads(first)
    except ValueError as e:
        raise TraceError(f"{path}: the first line is not JSON: {e}") from e
    if not isinstance(header, dict) or header.get("format") != TRACE_FORMAT:
        raise TraceError(f"{path}: not a pyxos trace (no header line with format {TRACE_FORMAT})")
    version = header.get("version")
    if not isinstance(version, int) or not 1 <= version <= TRACE_VERSION:
        raise TraceError(
            f"{path}: trace format version {version!r}; this pyxos reads versions 1 to "
            f"{TRACE_VERSION}"
        )
    return header


def _asset(name: str) -> bytes:
    return (resources.files("pyxos.view") / "assets" / name).read_bytes()


def make_app(trace: Path | list[Path]) -> web.Application:
    """The viewer's application for the trace file ``trace`` (or the files of several
    real nodes, merged)."""
    traces = trace if isinstance(trace, list) else [trace]
    if not traces:
        raise TraceError("no trace file given")
    headers = [read_header(path) for path in traces]
    merged: bytes | None = None
    if len(traces) > 1 or headers[0].get("source") == "serve":
        if any(h.get("source") != "serve" for h in headers):
            raise TraceError("only real nodes' traces (pyxos serve --trace) can be merged")
        try:
            merged = merge_node_traces(traces)
        except (ValueError, OSError) as e:
            raise TraceError(str(e)) from e
        header = json.loads(merged.split(b"\n", 1)[0])
    else:
        header = headers[0]
    name = ", ".join(path.name for path in traces)
    page = _asset("index.html").replace(
        b"{{title}}",
        f"pyxos view: {name}".encode().replace(b"&", b"&amp;").replace(b"<", b"&lt;"),
    )

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8")

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        kind = _ASSETS.get(name)
        if kind is None:
            raise web.HTTPNotFound()
        return web.Response(body=_asset(name), content_type=kind, charset="utf-8")

    async def trace_file(request: web.Request) -> web.StreamResponse:
        if merged is not None:
            return web.Response(body=merged, content_type="application/x-ndjson")
        return web.FileResponse(traces[0], headers={"Content-Type": "application/x-ndjson"})

    async def info(request: web.Request) -> web.Response:
        return web.json_response({"file": name, "header": header})

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/assets/{name}", asset)
    app.router.add_get("/trace.jsonl", trace_file)
    app.router.add_get("/info", info)
    return app


async def start_view(
    trace: Path | list[Path], host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, str]:
    """Start serving ``trace``; return the runner (``await runner.cleanup()`` stops it)
    and the page's URL."""
    runner = web.AppRunner(make_app(trace), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, f"http://{host}:{bound}/"


def run_view(trace: Path | list[Path], *, host: str, port: int, open_browser: bool) -> None:
    """Serve ``trace`` until interrupted, opening the page in a browser if asked."""

    async def main() -> None:
        runner, url = await start_view(trace, host, port)
        print(f"pyxos view: {url}  (Ctrl-C stops)", flush=True)
        if open_browser:
            webbrowser.open(url)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: the way to stop it
        asyncio.run(main())
