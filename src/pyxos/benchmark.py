"""KV benchmark: closed-loop clients against a running cluster, or a local one.

Theory of operation
-------------------
``run_kv_bench`` drives ``clients`` *logical clients* in one event loop. Each is one
session of the store (its own ``client_id``) with exactly one command outstanding: it
sends, waits for the answer, and sends the next at once (closed loop, no think time).
A command is a put with probability ``write_ratio`` and otherwise a get, of a key drawn
uniformly from ``keys`` keys (``k0``, ``k1``, ...), seeded per client so a run is
repeatable in what it asks (not in how the cluster interleaves it). Every value is
unique (client index and seq, padded to ``value_bytes``), which keeps a recorded history
cheap for the linearizability checker.

Sharing connections: with ``connections < clients`` the logical clients are sessions
of one ``ClientPool`` (``pyxos.client.mux``), spread over ``connections`` connections
per node, so the frames of many sessions leave in one write per connection per pass
and each command costs the client one Future, no Task or timer. With ``connections``
equal to (or above) ``clients``, each logical client is its own ``AsyncClient`` with
its own connection, the old path, kept for comparison. ``BenchResult.connections``
reports the number actually used (``min(connections, clients)``).

Timing: each command's latency is ``time.perf_counter()`` around the awaited call, so
it includes the client's own event-loop time (the load generator shares the machine
with the nodes). The first ``warmup`` seconds (connecting, finding the leader) are
excluded: a command counts when it *completes* within the measured window of
``seconds``, and throughput is that count over ``seconds``. Rejected commands are
``errors``; commands whose outcome the client could not learn (``OutcomeUnknown``) are
``unknown``; neither counts in throughput or latency.

Recording: with ``record``, every get and put (warm-up included, since the checker
needs the whole history) is kept in memory by the client's ``history`` hook and written
at the end as JSON lines in the docs/architecture.md "Histories" format, for ``pyxos check``.
Buffering rather than a flush per line keeps the recording off the measured path.

``bench_local_cluster`` wraps it: a fresh ``LocalCluster`` of real node processes
(fsync on every node) in a temporary directory, started, a leader awaited, the load run
in its own event loop (uvloop when installed, like the nodes), and the processes stopped
in a ``finally`` whatever happens.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from pyxos.client.aio import AsyncClient, ClientError, OutcomeUnknown
from pyxos.client.mux import ClientPool, Session
from pyxos.localcluster import LocalCluster

__all__ = [
    "WARMUP_SECONDS",
    "BenchResult",
    "LatencySummary",
    "bench_local_cluster",
    "format_results",
    "median_result",
    "run_kv_bench",
    "summarize_latencies",
]

WARMUP_SECONDS = 0.5
"""Seconds at the start of a run whose commands are not measured."""

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Percentiles of a set of latencies, in milliseconds (all 0.0 when empty)."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


def summarize_latencies(latencies_s: Sequence[float]) -> LatencySummary:
    """Nearest-rank p50 / p90 / p99 and the maximum of latencies given in seconds."""
    if not latencies_s:
        return LatencySummary(0.0, 0.0, 0.0, 0.0)
    ordered = sorted(latencies_s)
    n = len(ordered)

    def rank(p: float) -> float:
        # Nearest rank: the smallest value with at least p% of the samples at or below.
        return ordered[min(n - 1, max(0, -int(-p * n // 100) - 1))] * 1000.0

    return LatencySummary(rank(50), rank(90), rank(99), ordered[-1] * 1000.0)


@dataclass(frozen=True, slots=True)
class BenchResult:
    """One benchmark run: the load it applied and what it measured.

    ``ops`` counts the commands that completed successfully within the measured
    ``seconds`` (after the warm-up); latencies are over those commands.
    """

    system: str
    """What was measured: ``"pyxos"``, or another system for a comparison row."""
    nodes: int | None
    """Cluster size, when known (a local cluster); None for an external cluster."""
    clients: int
    connections: int
    """Client connections per node actually used (one per logical client on the
    ``AsyncClient`` path, fewer with a ``ClientPool``); 0 when the load runs inside a
    node process (no client connection)."""
    seconds: float
    write_ratio: float
    value_bytes: int
    keys: int
    ops: int
    ops_per_s: float
    latency: LatencySummary
    errors: int
    """Commands the service refused (their effect is known: none)."""
    unknown: int
    """Commands whose outcome is unknown (the client timed out)."""
    history_records: int = 0
    """Operations written to ``record`` (0 without recording)."""
    note: str = ""

    @property
    def config(self) -> str:
        """A one-line description of the load, for tables."""
        nodes = f"{self.nodes} nodes, " if self.nodes is not None else ""
        conns = f"{self.connections} conns" if self.connections else "in-process"
        return (
            f"{self.system}: {nodes}{self.clients} clients / {conns}, "
            f"{self.write_ratio:.0%} writes, {self.value_bytes} B"
        )

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON-ready dict (latencies flattened)."""
        return {
            "system": self.system,
            "nodes": self.nodes,
            "clients": self.clients,
            "connections": self.connections,
            "seconds": self.seconds,
            "write_ratio": self.write_ratio,
            "value_bytes": self.value_bytes,
            "keys": self.keys,
            "ops": self.ops,
            "ops_per_s": self.ops_per_s,
            "p50_ms": self.latency.p50_ms,
            "p90_ms": self.latency.p90_ms,
            "p99_ms": self.latency.p99_ms,
            "max_ms": self.latency.max_ms,
            "errors": self.errors,
            "unknown": self.unknown,
            "history_records": self.history_records,
            "note": self.note,
        }


def _check_load(
    clients: int, seconds: float, write_ratio: float, value_bytes: int, keys: int
) -> None:
    """Raise ValueError on a load that cannot be run (before anything is started)."""
    if clients < 1:
        raise ValueError(f"clients must be >= 1, not {clients}")
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, not {seconds}")
    if not 0.0 <= write_ratio <= 1.0:
        raise ValueError(f"write_ratio must be in [0, 1], not {write_ratio}")
    if value_bytes < 1:
        raise ValueError(f"value_bytes must be >= 1, not {value_bytes}")
    if keys < 1:
        raise ValueError(f"keys must be >= 1, not {keys}")


class _Tally:
    """What the logical clients measured, shared by all of them (one event loop)."""

    __slots__ = ("errors", "latencies", "unknown")

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0
        self.unknown = 0


async def _closed_loop(
    index: int,
    client: AsyncClient | Session,
    rng: random.Random,
    *,
    write_ratio: float,
    value_bytes: int,
    keys: int,
    measure_from: float,
    end: float,
    tally: _Tally,
) -> None:
    """One logical client: one command at a time until ``end`` (perf_counter)."""
    clock = time.perf_counter
    latencies = tally.latencies
    n = 0
    while True:
        started = clock()
        if started >= end:
            return
        n += 1
        key = f"k{int(rng.random() * keys)}"  # uniform; randrange costs 5 calls
        try:
            if rng.random() < write_ratio:
                await client.put(key, f"{index}.{n}.".ljust(value_bytes, "x"))
            else:
                await client.get(key)
        except OutcomeUnknown:
            tally.unknown += 1
            continue
        except ClientError:  # CommandRejected, or the client refused to run it
            tally.errors += 1
            continue
        done = clock()
        if measure_from <= done <= end:
            latencies.append(done - started)


async def run_kv_bench(
    addresses: Sequence[str] | Mapping[int, str],
    cluster_id: str,
    *,
    clients: int,
    connections: int,
    seconds: float,
    write_ratio: float,
    value_bytes: int,
    keys: int,
    record: str | None,
    warmup: float = WARMUP_SECONDS,
    seed: int = 0,
    nodes: int | None = None,
    latency_sink: list[float] | None = None,
) -> BenchResult:
    """Run a closed-loop KV load against the cluster at ``addresses``; what it measured.

    ``clients`` sessions each keep one command in flight for ``warmup + seconds``
    seconds; see the module docstring for what is measured and how. With
    ``connections < clients`` the clients are sessions of one ``ClientPool`` over
    ``connections`` connections per node; otherwise each is its own ``AsyncClient``
    (one connection each). ``record`` names a file to write the history to (JSON
    lines, for ``pyxos check``); it is overwritten. ``nodes`` is only reported.
    ``latency_sink``, when given, receives every measured latency in seconds (for a
    histogram kept by the caller).
    """
    _check_load(clients, seconds, write_ratio, value_bytes, keys)
    if connections < 1:
        raise ValueError(f"connections must be >= 1, not {connections}")
    history: list[dict[str, Any]] | None = [] if record is not None else None
    hook: Callable[[dict[str, Any]], None] | None = history.append if history is not None else None
    pool: ClientPool | None = None
    sessions: list[AsyncClient | Session]
    if connections < clients:
        pool = ClientPool(addresses, cluster=cluster_id, connections=connections, history=hook)
        sessions = [pool.session() for _ in range(clients)]
    else:
        connections = clients
        sessions = [
            AsyncClient(addresses, cluster=cluster_id, history=hook) for _ in range(clients)
        ]
    tally = _Tally()
    if latency_sink is not None:
        tally.latencies = latency_sink
    try:
        start = time.perf_counter()
        measure_from = start + warmup
        end = measure_from + seconds
        await asyncio.gather(
            *(
                _closed_loop(
                    i,
                    session,
                    random.Random(seed * 1_000_003 + i),
                    write_ratio=write_ratio,
                    value_bytes=value_bytes,
                    keys=keys,
                    measure_from=measure_from,
                    end=end,
                    tally=tally,
                )
                for i, session in enumerate(sessions)
            )
        )
    finally:
        if pool is not None:
            await pool.close()
        else:
            await asyncio.gather(
                *(s.close() for s in sessions if isinstance(s, AsyncClient)),
                return_exceptions=True,
            )
    records = 0
    if record is not None and history is not None:
        with open(record, "w", encoding="utf-8") as f:
            for op in history:
                f.write(json.dumps(op, separators=(",", ":")) + "\n")
        records = len(history)
    ops = len(tally.latencies)
    return BenchResult(
        system="pyxos",
        nodes=nodes,
        clients=clients,
        connections=connections,
        seconds=seconds,
        write_ratio=write_ratio,
        value_bytes=value_bytes,
        keys=keys,
        ops=ops,
        ops_per_s=ops / seconds,
        latency=summarize_latencies(tally.latencies),
        errors=tally.errors,
        unknown=tally.unknown,
        history_records=records,
    )


def _run_loop(main: Coroutine[Any, Any, _T]) -> _T:
    """Run ``main`` in a fresh event loop: uvloop when installed, as the nodes do."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def bench_local_cluster(
    nodes: int = 3,
    clients: int = 16,
    *,
    connections: int | None = None,
    seconds: float = 5.0,
    write_ratio: float = 0.5,
    value_bytes: int = 100,
    keys: int = 1000,
    record: str | None = None,
    warmup: float = WARMUP_SECONDS,
    seed: int = 0,
    base_dir: str | Path | None = None,
    leader_timeout: float = 15.0,
) -> BenchResult:
    """Benchmark a fresh local cluster of ``nodes`` real processes; always stops them.

    The cluster lives in ``base_dir`` (which must not hold a cluster yet) or in a
    temporary directory removed afterwards. ``connections`` defaults to ``clients``.
    The other arguments are those of :func:`run_kv_bench`.
    """
    _check_load(clients, seconds, write_ratio, value_bytes, keys)
    tmp = tempfile.TemporaryDirectory(prefix="pyxos-bench-") if base_dir is None else None
    try:
        base = Path(tmp.name) if tmp is not None else Path(str(base_dir))
        cluster = LocalCluster.create(base, nodes, cluster_id="pyxos-bench")
        try:
            cluster.start()
            cluster.wait_for_leader(leader_timeout)
            addresses = {n.node_id: n.client_address for n in cluster.nodes.values()}
            return _run_loop(
                run_kv_bench(
                    addresses,
                    cluster.cluster_id,
                    clients=clients,
                    connections=connections if connections is not None else clients,
                    seconds=seconds,
                    write_ratio=write_ratio,
                    value_bytes=value_bytes,
                    keys=keys,
                    record=record,
                    warmup=warmup,
                    seed=seed,
                    nodes=nodes,
                )
            )
        finally:
            cluster.stop()
    finally:
        if tmp is not None:
            tmp.cleanup()


def format_results(results: Sequence[BenchResult]) -> str:
    """A markdown table: config, ops/s, p50 / p90 / p99 / max ms, errors, unknown.

    A ``note`` column is added when any result carries a note.
    """
    notes = any(r.note for r in results)
    head = "| config | ops/s | p50 ms | p90 ms | p99 ms | max ms | errors | unknown |"
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|"
    lines = [head + " note |" if notes else head, rule + "---|" if notes else rule]
    for r in results:
        lat = r.latency
        line = (
            f"| {r.config} | {r.ops_per_s:,.0f} | {lat.p50_ms:.2f} | {lat.p90_ms:.2f} "
            f"| {lat.p99_ms:.2f} | {lat.max_ms:.2f} | {r.errors} | {r.unknown} |"
        )
        lines.append(line + f" {r.note} |" if notes else line)
    return "\n".join(lines)


def median_result(runs: Sequence[BenchResult]) -> BenchResult:
    """The per-field median of repeated runs of one configuration (noisy machines).

    Throughput and each latency percentile are medians taken separately; errors and
    unknown outcomes are summed, so none is hidden by the repetition.
    """
    if not runs:
        raise ValueError("no runs to take the median of")
    first = runs[0]
    repeated = f"median of {len(runs)}" if len(runs) > 1 else ""

    def med(values: Sequence[float]) -> float:
        return float(statistics.median(values))

    return replace(
        first,
        ops=round(med([r.ops for r in runs])),
        ops_per_s=med([r.ops_per_s for r in runs]),
        latency=LatencySummary(
            med([r.latency.p50_ms for r in runs]),
            med([r.latency.p90_ms for r in runs]),
            med([r.latency.p99_ms for r in runs]),
            med([r.latency.max_ms for r in runs]),
        ),
        errors=sum(r.errors for r in runs),
        unknown=sum(r.unknown for r in runs),
        history_records=sum(r.history_records for r in runs),
        note="; ".join(n for n in (first.note, repeated) if n),
    )
