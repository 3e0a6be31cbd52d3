"""One embedded node with a replicated counter, driven over stdin/stdout (benchmarks).

Theory of operation
-------------------
``python -m pyxos.embedded.benchnode ID PEERS_JSON DATA_DIR`` runs a
:class:`~pyxos.embedded.blocking.BlockingNode` hosting one
:class:`~pyxos.objects.Counter` named ``"counter"``, with fsync on as always, and
answers one JSON request a line on stdin with one JSON line on stdout:

- ``{"cmd": "status"}``: ``{"leader": bool, "ready": bool}`` (ready: a leader is known);
- ``{"cmd": "bench", "clients": N, "seconds": S, "warmup": W}``: ``N`` tasks on the
  node's loop, each ``await counter.incr()`` in a loop; the increments that complete
  within ``S`` seconds after a ``W``-second warm-up are counted. Replies ``ops``,
  latency percentiles in ms, ``errors``, ``unknown`` and the counter's ``value`` (a
  linearizable ``get`` after the load);
- ``{"cmd": "get"}``: ``{"value": counter.get()}``.

The node exits when stdin closes (the orchestrator, ``pyxos.bench.embedded``, is gone).
It lives here, not in ``pyxos.bench``, because benchmarks never import the server.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from pyxos.embedded.blocking import BlockingNode
from pyxos.embedded.node import CommandRejected, NodeStopped, OutcomeUnknown, node_config
from pyxos.objects.builtin import Counter


def _percentiles_ms(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {"p50_ms": 0.0, "p90_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    latencies.sort()
    n = len(latencies)

    def at(p: float) -> float:
        return latencies[min(n - 1, max(0, int(p / 100.0 * n + 0.999999) - 1))] * 1e3

    return {"p50_ms": at(50), "p90_ms": at(90), "p99_ms": at(99), "max_ms": latencies[-1] * 1e3}


async def _load(counter: Counter, clients: int, seconds: float, warmup: float) -> dict[str, Any]:
    clock = time.perf_counter
    start = clock()
    measure_from = start + warmup
    end = measure_from + seconds
    latencies: list[float] = []
    errors = unknown = 0

    async def client() -> None:
        nonlocal errors, unknown
        while True:
            began = clock()
            if began >= end:
                return
            try:
                await counter.incr()
            except OutcomeUnknown:
                unknown += 1
                continue
            except (CommandRejected, NodeStopped):
                errors += 1
                continue
            done = clock()
            if measure_from <= done <= end:
                latencies.append(done - began)

    await asyncio.gather(*(client() for _ in range(clients)))
    value = await counter.get()
    return {
        "ops": len(latencies),
        **_percentiles_ms(latencies),
        "errors": errors,
        "unknown": unknown,
        "value": value,
    }


def main(argv: list[str]) -> None:
    """Run the node until stdin closes."""
    node_id, peers, data_dir = int(argv[0]), json.loads(argv[1]), argv[2]
    config = node_config(node_id, {int(k): v for k, v in peers.items()}, data_dir)
    counter = Counter()
    node = BlockingNode(config, {"counter": counter}, tick_interval=None)
    out = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        reply: dict[str, Any]
        if request["cmd"] == "status":
            reply = {"leader": node.is_leader, "ready": node.node.leader != 0}
        elif request["cmd"] == "bench":
            reply = node.run(
                _load(counter, request["clients"], request["seconds"], request["warmup"])
            )
        elif request["cmd"] == "get":
            reply = {"value": node.run(counter.get())}
        else:
            reply = {"error": f"unknown command {request['cmd']!r}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    node.close()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
