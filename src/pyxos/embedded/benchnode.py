"""One embedded node with a replicated counter, driven over stdin/stdout (benchmarks).

Theory of operation
-------------------
``python -m pyxos.embedded.benchnode ID PEERS_JSON DATA_DIR`` runs a
:class:`~pyxos.embedded.blocking.BlockingNode` hosting one
:class:`~pyxos.objects.Counter` named ``"counter"``, with fsync on as always, and
answers one JSON request a line on stdin with one JSON line on stdout:

- ``{"cmd": "status"}``: ``{"leader": bool, "ready": bool}`` (ready: a leader is known);
- ``{"cmd": "bench", "clients": N, "seconds": S, "warmup": W, "api": A}``: ``N``
  calls of ``counter.incr`` outstanding on the node's loop, each submitted again as
  soon as the last of its "client" completes; the increments that complete within
  ``S`` seconds after a ``W``-second warm-up are counted. With ``A = "submit"`` (the
  default) a call is ``counter.incr.submit()``, a future with a done-callback, the way
  the ceiling's embedded mode keeps its commands in flight (no coroutine per call);
  with ``A = "await"``, ``N`` asyncio tasks each ``await counter.incr()`` in a loop.
  Replies ``ops``, latency percentiles in ms, ``errors``, ``unknown``, the
  counter's ``value`` (a linearizable ``get`` after the load) and ``gc_collections``
  (Python's cyclic garbage collector's collections per generation during the load);
- ``{"cmd": "get"}``: ``{"value": counter.get()}``.

The node exits when stdin closes (the orchestrator, ``pyxos.bench.embedded``, is gone).
It lives here, not in ``pyxos.bench``, because benchmarks never import the server.
"""

from __future__ import annotations

import asyncio
import gc
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
    return await _report(counter, latencies, errors, unknown)


async def _load_submit(
    counter: Counter, clients: int, seconds: float, warmup: float
) -> dict[str, Any]:
    """``clients`` calls outstanding as futures with a done-callback (no coroutine)."""
    loop = asyncio.get_running_loop()
    clock = time.perf_counter
    start = clock()
    measure_from = start + warmup
    end = measure_from + seconds
    latencies: list[float] = []
    counts = [0, 0]  # errors, unknown
    began = [0.0] * clients
    running = [clients]
    finished = loop.create_future()
    submit = counter.incr.submit

    def client(i: int) -> Any:
        def done(future: asyncio.Future[int]) -> None:
            now = clock()
            error = future.exception()
            if error is None:
                if measure_from <= now <= end:
                    latencies.append(now - began[i])
            else:
                counts[isinstance(error, OutcomeUnknown)] += 1
            if now >= end:
                running[0] -= 1
                if not running[0]:
                    finished.set_result(None)
                return
            began[i] = now
            submit().add_done_callback(done)

        return done

    for i in range(clients):
        began[i] = clock()
        submit().add_done_callback(client(i))
    await finished
    return await _report(counter, latencies, counts[0], counts[1])


_gc_before = [0, 0, 0]


def _gc_collections() -> list[int]:
    """Collections of Python's cyclic garbage collector so far, per generation (free to
    read, unlike timing each collection with ``gc.callbacks``)."""
    return [g["collections"] for g in gc.get_stats()]


async def _report(
    counter: Counter, latencies: list[float], errors: int, unknown: int
) -> dict[str, Any]:
    gc_stats = {
        "gc_collections": [a - b for a, b in zip(_gc_collections(), _gc_before, strict=True)]
    }
    value = await counter.get()
    return {
        "ops": len(latencies),
        **_percentiles_ms(latencies),
        "errors": errors,
        "unknown": unknown,
        "value": value,
        **gc_stats,
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
            load = _load_submit if request.get("api", "submit") == "submit" else _load
            _gc_before[:] = _gc_collections()
            reply = node.run(
                load(counter, request["clients"], request["seconds"], request["warmup"])
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
