"""Running one node as a process: ``run(config)``, the programmatic API and the CLI's.

Theory of operation
-------------------
``run`` raises the process's limit on open files if it must (``server.disk.
ensure_file_limit``), starts a ``NodeServer`` on uvloop when it is installed, and
stops it on SIGTERM or SIGINT (docs/architecture.md, *Server runtime*).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from pyxos.server.config import Config
from pyxos.server.disk import ensure_file_limit
from pyxos.server.node import NodeServer
from pyxos.server.tracefile import NodeTracer

__all__ = ["run"]


async def _serve(
    config: Config,
    initialize: bool,
    clock_rate: float = 1.0,
    trace: NodeTracer | None = None,
    join: str | None = None,
) -> None:
    server = NodeServer(config, initialize=initialize, clock_rate=clock_rate, join=join)
    server.effects.tracer = trace
    await server.startup()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, lambda: loop.create_task(server.shutdown()))
    await server.serve_forever()


def run(
    config: Config,
    *,
    initialize: bool = False,
    clock_rate: float = 1.0,
    trace: NodeTracer | None = None,
    join: str | None = None,
) -> None:
    """Run one node until SIGTERM or SIGINT (the programmatic API and the CLI's).

    ``initialize`` allows an empty data directory to be set up for this node (see
    ``NodeServer``); ``clock_rate`` is for chaos tests only. Uses uvloop when it is
    installed. Raises the process's limit on open files, if it must and may, so the
    three ports' connection caps are reached before the node runs out of file
    descriptors (see ``ensure_file_limit``). ``trace``: this node's side of the run is
    written there (``pyxos serve --trace``); the file is closed when the node stops.
    ``join``: join a running cluster through that member's HTTP API (``server.peerbook``).
    """
    ensure_file_limit(config)
    try:
        try:
            import uvloop
        except ImportError:
            asyncio.run(_serve(config, initialize, clock_rate, trace, join))
        else:
            uvloop.run(_serve(config, initialize, clock_rate, trace, join))
    finally:
        if trace is not None:
            trace.close()
