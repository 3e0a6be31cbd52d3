"""The client's own cost per command, without a cluster: a stub node answers at once.

Theory of operation
-------------------
``pyxos bench kv`` measures the whole service; its figures move with the disk (fsync)
and with everything else the machine runs, so a change to the client's hot path (the
engine, the pool's sessions, ``AsyncClient``) barely shows in them. This benchmark
takes the cluster away: a stub node in a child process answers every ``ClientRequest``
at once with an ok ``Result`` (no log, no fsync), and the parent runs ``--clients``
closed-loop logical clients of the client under test (``pool``: ``ClientPool``
sessions over ``--connections`` connections; ``async``: one ``AsyncClient`` each) for
``--seconds``. It reports committed ops/s and the client process's own CPU seconds per
1,000 commands (``time.process_time``), the figure to compare.

Side by side: run it once per checkout with ``PYTHONPATH`` pointing at each ``src``,
interleaved, and compare medians (the stub runs from the same checkout as the client):

    for i in 1 2 3; do for src in ../base/src src; do
        PYTHONPATH=$src .venv/bin/python bench/bench_client.py --kind pool; done; done
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time

from pyxos.client import AsyncClient, ClientPool
from pyxos.client.aio import KVOperations
from pyxos.core.messages import ClientReply, ClientRequest, Message
from pyxos.net.codec import encode_message
from pyxos.net.link import FramedProtocol
from pyxos.statemachine.kv import Result, encode_result

_OK = encode_result(Result(ok=True))


async def stub(port: int) -> None:
    """Answer every request ok at once, as node 1 and leader, on ``port`` (0: any free
    port); print ``ready PORT`` once listening."""

    def factory() -> FramedProtocol:
        def on_messages(_: int, msgs: list[Message]) -> None:
            for m in msgs:
                if isinstance(m, ClientRequest):
                    conn.send(encode_message(ClientReply(1, m.client, m.seq, True, _OK, 1)))

        conn = FramedProtocol(on_messages, accept_hello=lambda hello: 0)
        return conn

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", port)
    print("ready", server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


async def load(port: int, kind: str, clients: int, connections: int, seconds: float) -> str:
    """Drive the stub; one line of results."""
    addresses = [f"127.0.0.1:{port}"]
    pool = ClientPool(addresses, connections=connections) if kind == "pool" else None
    targets: list[KVOperations]
    if pool is not None:
        targets = [pool.session() for _ in range(clients)]
    else:
        targets = [AsyncClient(addresses) for _ in range(clients)]
    done = 0
    running = True

    async def work(target: KVOperations) -> None:
        nonlocal done
        while running:
            await target.put("k", "v")
            done += 1

    await asyncio.gather(*(t.put("warm", "1") for t in targets))
    tasks = [asyncio.create_task(work(t)) for t in targets]
    await asyncio.sleep(0.5)
    ops0, cpu0, t0 = done, time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    ops, cpu, wall = done - ops0, time.process_time() - cpu0, time.monotonic() - t0
    running = False
    await asyncio.gather(*tasks)
    if pool is not None:
        await pool.close()
    else:
        for t in targets:
            assert isinstance(t, AsyncClient)
            await t.close()
    return (
        f"{kind} clients={clients} ops/s={ops / wall:,.0f} "
        f"client_cpu_s_per_1k_ops={1000 * cpu / max(ops, 1):.4f}"
    )


def main() -> None:
    """Parse the options, start the stub, run the load, print one line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", choices=["pool", "async"], default="pool")
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--port", type=int, default=0, help="the stub's port (0: any free)")
    parser.add_argument("--stub", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    if args.stub:
        asyncio.run(stub(args.port))
        return
    child = subprocess.Popen(
        [sys.executable, __file__, "--stub", "--port", str(args.port)],
        stdout=subprocess.PIPE,
        env=os.environ.copy(),
        text=True,
    )
    try:
        assert child.stdout is not None
        ready, _, port = child.stdout.readline().strip().partition(" ")
        if ready != "ready":
            raise SystemExit("the stub node did not start")
        line = asyncio.run(load(int(port), args.kind, args.clients, args.connections, args.seconds))
        print(line)
    finally:
        child.terminate()
        child.wait()


if __name__ == "__main__":
    main()
