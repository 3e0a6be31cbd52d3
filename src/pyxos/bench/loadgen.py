"""Closed-loop load over HTTP (aiohttp) and etcd gRPC (aetcd), and process CPU time.

Theory of operation
-------------------
``closed_loop`` runs ``clients`` logical clients in this event loop, each with one
command in flight: a get with probability ``read_ratio``, else a put of a unique value
padded to ``value_size`` bytes, of a key drawn uniformly from ``keys`` keys, seeded per
client, exactly the load of ``pyxos.benchmark.run_kv_bench``. What a command is on the
wire is the caller's ``put`` / ``get`` coroutine (pyxos's HTTP API, etcd's JSON gateway,
etcd's gRPC API), so every system is driven by the same generator. A command counts
when it completes inside the measured window (after ``warmup``); its latency goes to a
``Histogram``. A command that raises or answers not-ok is an error and is not counted.

``Window`` samples what the systems under test spent over the measured window: the
utime + stime of their processes (``/proc/<pid>/stat``, fields 14 and 15, in clock
ticks) and, through a caller's probe, counters such as the leader's fsyncs.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from pyxos.bench.histogram import Histogram

__all__ = ["LoadResult", "closed_loop", "cpu_seconds", "make_value"]

Put = Callable[[int, str, str], Awaitable[bool]]
Get = Callable[[int, str], Awaitable[bool]]


def make_value(index: int, n: int, size: int) -> str:
    """A unique value of ``size`` bytes for client ``index``'s ``n``-th put."""
    return f"{index}.{n}.".ljust(size, "x")


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime, in seconds, of the live processes among ``pids``."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2 :].split()
        total += int(rest[11]) + int(rest[12])  # fields 14 and 15 of the whole line
    return total / tick


@dataclass(slots=True)
class LoadResult:
    """What ``closed_loop`` measured."""

    hist: Histogram = field(default_factory=Histogram)
    errors: int = 0


async def closed_loop(
    *,
    clients: int,
    seconds: float,
    warmup: float,
    read_ratio: float,
    value_size: int,
    keys: int,
    seed: int,
    put: Put,
    get: Get,
    on_window: Callable[[str], Awaitable[None]] | None = None,
) -> LoadResult:
    """Run the load; ``on_window("start")`` / ``("end")`` are awaited at the window's edges."""
    result = LoadResult()
    clock = time.perf_counter
    start = clock()
    measure_from = start + warmup
    end = measure_from + seconds
    latencies: list[float] = []

    async def one(index: int) -> None:
        rng = random.Random(seed * 1_000_003 + index)
        n = 0
        while True:
            started = clock()
            if started >= end:
                return
            n += 1
            key = f"k{rng.randrange(keys)}"
            try:
                if rng.random() < read_ratio:
                    ok = await get(index, key)
                else:
                    ok = await put(index, key, make_value(index, n, value_size))
            except Exception:  # any failure of one command: counted, the load goes on
                ok = False
            done = clock()
            if not ok:
                result.errors += 1
                await asyncio.sleep(0.001)  # no hot spin against a refusing server
                continue
            if measure_from <= done <= end:
                latencies.append(done - started)

    async def window() -> None:
        if on_window is None:
            return
        await asyncio.sleep(max(0.0, measure_from - clock()))
        await on_window("start")
        await asyncio.sleep(max(0.0, end - clock()))
        await on_window("end")

    await asyncio.gather(window(), *(one(i) for i in range(clients)))
    for v in latencies:
        result.hist.record(v)
    return result
