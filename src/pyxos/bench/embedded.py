"""``pyxos bench embedded``: a replicated counter in embedded nodes beside PySyncObj's.

Theory of operation
-------------------
Three pyxos node processes (``python -m pyxos.embedded.benchnode``), each an
:class:`~pyxos.embedded.EmbeddedNode` hosting one :class:`~pyxos.objects.Counter`, with
its own data directory and fsync on as always; the load runs inside the leader's
process: ``clients`` calls of ``counter.incr`` outstanding in a closed loop (a command
is acknowledged once chosen, fsynced on a quorum and applied), each a future from
``counter.incr.submit()`` with a done-callback that submits the next (``api
"submit"``, as the ceiling keeps its commands in flight), or ``clients`` asyncio tasks
each ``await counter.incr()`` (``api "await"``). Beside it, in
the same run and interleaved round by round, PySyncObj's own counter
(``pysyncobj.batteries.ReplCounter``, ``inc``) on three processes, its load inside its
leader too, as callback chains (``pyxos.bench.pysyncobj``; batch and tick every 1 ms,
its best configuration here; PySyncObj does not fsync). Both count the commands that
complete within ``duration`` seconds after a 0.5 s warm-up; each round starts fresh
processes (and, for pyxos, fresh data directories). The table shows, per client
count, the median over the rounds of committed ops/s and latency.

The raw fsync rate of the disk is measured once per round (100-byte writes, one
``fdatasync`` each): on a shared disk it moves a lot, and one client's ops/s follows it.

With ``vs_ceiling`` the ceiling's embedded mode (``bench.py --mode embedded`` of
``../shared/ceiling`` or ``ceiling_dir``: a development aid, not a dependency; its load
is generated inside its leader too, with the same number of commands outstanding, fsync
on) runs in the same rounds, and the table prints pyxos's figure as a ratio to it.
Every system's CPU seconds per 1,000 operations (its three node processes over the
measured window) are in the table too: on a loaded machine they compare better than ops/s.

After each pyxos round the counter is read once more (linearizably): it must be at
least the number of increments acknowledged in the round; the report says if not.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyxos.bench.loadgen import cpu_seconds
from pyxos.bench.systems import ceiling_json
from pyxos.localcluster import free_ports
from pyxos.storage.bench import measure_raw_fsync

__all__ = [
    "SYSTEMS",
    "WARMUP_SECONDS",
    "format_table",
    "run_ceiling_embedded",
    "run_embedded_bench",
    "run_pyxos_counter",
]

SYSTEMS = ("pysyncobj", "ceiling")
"""What ``--vs`` may name."""

WARMUP_SECONDS = 0.5


class _Proc:
    """One node process spoken to one JSON line at a time (killed with its group)."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
        )

    def ask(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"node pid {self.proc.pid} did not answer {request['cmd']}")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"node pid {self.proc.pid} exited")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def kill(self) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5.0)


def run_pyxos_counter(clients: int, *, seconds: float, api: str = "submit") -> dict[str, Any]:
    """One round: 3 embedded-node processes, ``clients`` tasks of ``incr`` in the
    leader's; the leader's reply (``ops``, ``p50_ms``... ``errors``, ``unknown``,
    ``value``), ``cpu_s`` of the three processes over the load and ``leader_cpu_s``
    of the leader's alone."""
    ports = free_ports(3)
    peers = {str(i + 1): f"127.0.0.1:{p}" for i, p in enumerate(ports)}
    with tempfile.TemporaryDirectory(prefix="pyxos-bench-embedded-") as tmp:
        procs = [
            _Proc(
                [
                    "-m",
                    "pyxos.embedded.benchnode",
                    node,
                    json.dumps(peers),
                    os.path.join(tmp, f"n{node}"),
                ]
            )
            for node in peers
        ]
        try:
            deadline = time.monotonic() + 30.0
            leader: _Proc | None = None
            while leader is None:
                if time.monotonic() > deadline:
                    raise TimeoutError("the embedded nodes elected no leader within 30 s")
                statuses = [p.ask({"cmd": "status"}, 10.0) for p in procs]
                leaders = [i for i, s in enumerate(statuses) if s["leader"]]
                if len(leaders) == 1 and all(s["ready"] for s in statuses):
                    leader = procs[leaders[0]]
                else:
                    time.sleep(0.05)
            pids = [p.proc.pid for p in procs]
            before = cpu_seconds(pids)
            leader_before = cpu_seconds([leader.proc.pid])
            request = {"cmd": "bench", "clients": clients, "seconds": seconds, "api": api}
            request["warmup"] = WARMUP_SECONDS
            reply = leader.ask(request, seconds + WARMUP_SECONDS + 60.0)
            scale = seconds / (seconds + WARMUP_SECONDS)
            cpu = (cpu_seconds(pids) - before) * scale
            leader_cpu = (cpu_seconds([leader.proc.pid]) - leader_before) * scale
        finally:
            for p in procs:
                p.kill()
    return {**reply, "cpu_s": cpu, "leader_cpu_s": leader_cpu}


def run_ceiling_embedded(outstanding: int, *, seconds: float, script: Path) -> dict[str, Any]:
    """One round of the ceiling's embedded mode with ``outstanding`` commands in flight:
    ``ops``, ``cpu_s`` (its three processes over the window) and its leader's batch
    latency as ``p50_ms``/``p99_ms`` (it has no per-command latency)."""
    cmd = [
        sys.executable,
        script.name,
        "--mode",
        "embedded",
        "--outstanding",
        str(outstanding),
        "--duration",
        str(seconds),
        "--warmup",
        "1",
    ]
    doc = ceiling_json(cmd, script, seconds, attempts=4)
    cpu = doc.get("cpu")
    cpu_s = (
        sum(float(v["pct"]) for v in cpu.values()) / 100.0 * seconds
        if isinstance(cpu, dict) and cpu
        else float("nan")
    )
    leader = cpu.get("L") if isinstance(cpu, dict) else None
    ops_per_s = float(doc["commits_per_s"])
    return {
        "ops": round(ops_per_s * seconds),
        "leader_cpu_s": float(leader["pct"]) / 100.0 * seconds if leader else float("nan"),
        "p50_ms": float(doc.get("batch_p50_ms") or 0.0),
        "p99_ms": float(doc.get("batch_p99_ms") or 0.0),
        "errors": 0,
        "cpu_s": cpu_s,
        "avg_batch": doc.get("avg_batch"),
        "fsyncs_per_s": doc.get("fsyncs_per_s"),
    }


def _median(rounds: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(float(r[key]) for r in rounds))


def run_embedded_bench(
    clients: Sequence[int],
    *,
    seconds: float,
    repeat: int,
    vs_pysyncobj: bool,
    progress: Any = None,
    ceiling: Path | None = None,
    api: str = "submit",
) -> dict[str, Any]:
    """Every round of every case, interleaved; the medians per system and client count.
    ``ceiling``: the ceiling's ``bench.py``, run beside pyxos (None: not run)."""
    systems = ["pyxos"]
    if vs_pysyncobj:
        systems.append("pysyncobj")
    if ceiling is not None:
        systems.append("ceiling")
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {
        s: {c: [] for c in clients} for s in systems
    }
    raw_fsync: list[float] = []
    for rep in range(repeat):
        with tempfile.TemporaryDirectory(prefix="pyxos-bench-fsync-") as tmp:
            raw_fsync.append(measure_raw_fsync(tmp, 0.5))
        for c in clients:
            for system in systems:
                if system == "pyxos":
                    r = run_pyxos_counter(c, seconds=seconds, api=api)
                elif system == "ceiling":
                    assert ceiling is not None
                    r = run_ceiling_embedded(c, seconds=seconds, script=ceiling)
                else:
                    from pyxos.bench.pysyncobj import run_pysyncobj_counter

                    r = run_pysyncobj_counter(c, seconds=seconds, seed=rep)
                r["ops_per_s"] = r["ops"] / seconds
                r["cpu_s_per_1k_ops"] = 1000.0 * r["cpu_s"] / r["ops"] if r["ops"] else 0.0
                if "leader_cpu_s" in r:
                    r["leader_cpu_s_per_1k_ops"] = (
                        1000.0 * r["leader_cpu_s"] / r["ops"] if r["ops"] else 0.0
                    )
                runs[system][c].append(r)
                if progress is not None:
                    progress(
                        f"round {rep + 1}/{repeat}: {system} {c} clients: "
                        f"{r['ops_per_s']:,.0f} ops/s"
                    )
    medians = {
        s: {
            c: {
                key: _median(runs[s][c], key)
                for key in (
                    "ops_per_s",
                    "p50_ms",
                    "p99_ms",
                    "errors",
                    "cpu_s",
                    "cpu_s_per_1k_ops",
                    "leader_cpu_s_per_1k_ops",
                )
                if all(key in r for r in runs[s][c])
            }
            for c in clients
        }
        for s in systems
    }
    lost = [
        (c, r["value"], r["ops"])
        for c in clients
        for r in runs["pyxos"][c]
        if r.get("value", 0) < r["ops"]
    ]
    return {
        "config": {
            "clients": list(clients),
            "seconds": seconds,
            "repeat": repeat,
            "systems": systems,
            "api": api,
        },
        "runs": {s: {str(c): runs[s][c] for c in clients} for s in systems},
        "medians": {s: {str(c): medians[s][c] for c in clients} for s in systems},
        "counter_below_acknowledged": lost,
        "raw_fsync_per_s": raw_fsync,
    }


_NAMES = {"pysyncobj": "PySyncObj", "ceiling": "ceiling"}


def format_table(doc: dict[str, Any]) -> str:
    """The side-by-side table of the medians, with pyxos's ops/s and CPU per 1,000 ops
    as ratios to each other system's."""
    med = doc["medians"]
    others = [s for s in ("pysyncobj", "ceiling") if s in med]
    head = "| clients | pyxos embedded ops/s | pyxos p50 / p99 ms | pyxos CPU s / 1k ops |"
    rule = "|---:|---:|---|---:|"
    for o in others:
        name = _NAMES[o]
        lat = "batch p50 / p99 ms" if o == "ceiling" else "p50 / p99 ms"
        head += (
            f" {name} ops/s | {name} {lat} | {name} CPU s / 1k ops | pyxos / {name} ops/s |"
            f" pyxos / {name} CPU per op |"
        )
        rule += "---:|---|---:|---:|---:|"
    lines = [head, rule]
    for c in doc["config"]["clients"]:
        p = med["pyxos"][str(c)]
        line = (
            f"| {c} | {p['ops_per_s']:,.0f} | {p['p50_ms']:.2f} / {p['p99_ms']:.2f} |"
            f" {p['cpu_s_per_1k_ops']:.4f} |"
        )
        for o in others:
            m = med[o][str(c)]
            ratio = p["ops_per_s"] / m["ops_per_s"] if m["ops_per_s"] else float("nan")
            cpu = m["cpu_s_per_1k_ops"]
            cpu_ratio = p["cpu_s_per_1k_ops"] / cpu if cpu else float("nan")
            line += (
                f" {m['ops_per_s']:,.0f} | {m['p50_ms']:.2f} / {m['p99_ms']:.2f} |"
                f" {cpu:.4f} | {ratio:.2f}x | {cpu_ratio:.2f}x |"
            )
        lines.append(line)
    cfg = doc["config"]
    lines.append("")
    lines.append(
        f"medians of {cfg['repeat']} interleaved rounds, {cfg['seconds']:g} s each after a "
        f"{WARMUP_SECONDS} s warm-up; pyxos ({cfg.get('api', 'submit')} API) fsyncs on "
        "every node before acknowledging"
        + ("; PySyncObj does not fsync (in-memory journal)" if "pysyncobj" in med else "")
        + (
            "; the ceiling fsyncs too, its load is the same number of commands outstanding"
            " inside its leader (a 1 s warm-up)"
            if "ceiling" in med
            else ""
        )
    )
    lines.append("CPU s / 1k ops: the three node processes' user + system CPU over the window")
    leaders = [
        f"{name} {med[name][str(c)]['leader_cpu_s_per_1k_ops']:.4f} at {c}"
        for name in ("pyxos", "ceiling")
        if name in med
        for c in doc["config"]["clients"]
        if "leader_cpu_s_per_1k_ops" in med[name][str(c)]
    ]
    if leaders:
        lines.append("the leader's own CPU s / 1k ops: " + ", ".join(leaders))
    lines.append(
        "raw fsync rate of this disk in the same run (one per round): "
        + ", ".join(f"{r:,.0f}/s" for r in doc["raw_fsync_per_s"])
    )
    if doc["counter_below_acknowledged"]:
        lines.append(f"COUNTER BELOW ACKNOWLEDGED INCREMENTS: {doc['counter_below_acknowledged']}")
    return "\n".join(lines)
