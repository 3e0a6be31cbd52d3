"""``pyxos bench kv``: pyxos and the systems it is compared with, interleaved case by case.

Theory of operation
-------------------
A *case* is one client count of the sweep. For each repetition, for each case, every
system runs once, in a fixed order (pyxos first, then ``vs`` in the order given), each
on a fresh cluster: a noisy stretch of a shared machine then spreads over every system
and case instead of sinking one, and the medians of the repetitions are compared.
Before the sweep the disk's raw fsync rate is measured on the same filesystem as the
clusters' temporary directories, so the figures can be read against it.

A system that cannot run here (PySyncObj not importable, no ``etcd`` on the PATH, no
ceiling script) is skipped with the reason, which the report prints and the JSON keeps
under ``unavailable``; a system that fails mid-run stops the benchmark (its processes
are stopped first), since a ratio against half a sweep would mislead.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pyxos.bench import systems
from pyxos.bench.pysyncobj import pysyncobj_available, run_pysyncobj
from pyxos.bench.results import CaseResult, median_case
from pyxos.core.quorum import quorum_sizes
from pyxos.storage.bench import measure_raw_fsync

__all__ = ["SYSTEMS", "KvOptions", "KvReport", "http_loadgen", "record_path", "run_kv"]

SYSTEMS = ("pysyncobj", "etcd", "ceiling", "majority")
"""What ``--vs`` accepts (``majority``: pyxos itself with majority quorums, beside a
pyxos run with ``--q2``)."""


@dataclass(frozen=True, slots=True)
class KvOptions:
    """Everything ``pyxos bench kv`` was asked for."""

    clients: tuple[int, ...] = (1, 64, 256)
    connections: int = 4
    value_size: int = 10
    read_ratio: float = 0.0
    duration: float = 5.0
    api: str = "binary"
    repeat: int = 1
    nodes: int = 3
    keys: int = 1000
    warmup: float = 0.5
    vs: tuple[str, ...] = ()
    ceiling_dir: str | None = None
    record: str | None = None
    raw_fsync_seconds: float = 1.0
    q2: int | None = None
    """pyxos's phase-2 quorum size (flexible quorums; None: majorities)."""
    http_loadgen: str = "auto"
    """``--api http``'s load generator: ``wrk``, ``aiohttp``, or ``auto`` (wrk when it
    is on the PATH and every client has its own connection, else aiohttp)."""

    def to_json(self) -> dict[str, Any]:
        """The options as a JSON-ready dict."""
        return {
            "clients": list(self.clients),
            "connections": self.connections,
            "value_size": self.value_size,
            "read_ratio": self.read_ratio,
            "duration": self.duration,
            "api": self.api,
            "repeat": self.repeat,
            "nodes": self.nodes,
            "keys": self.keys,
            "warmup": self.warmup,
            "vs": list(self.vs),
            "q1": quorum_sizes(self.nodes, q2=self.q2)[0] if self.q2 is not None else None,
            "q2": self.q2,
            "http_loadgen": self.http_loadgen,
        }


@dataclass(slots=True)
class KvReport:
    """What the sweep measured: medians, every run, the skipped systems, the disk."""

    results: list[CaseResult] = field(default_factory=list)
    runs: list[CaseResult] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    raw_fsync_per_s: float | None = None
    http_loadgen: str | None = None
    """The HTTP load generator used (``--api http``), else None."""


def record_path(record: str, clients: int, rep: int, single: bool) -> str:
    """Where a pyxos run's history goes: ``record`` itself for a single run, else
    ``STEM-c<clients>-r<rep>SUFFIX`` beside it (each run is its own cluster)."""
    if single:
        return record
    p = Path(record)
    return str(p.with_name(f"{p.stem}-c{clients}-r{rep}{p.suffix}"))


def http_loadgen(options: KvOptions, report: KvReport) -> str:
    """The HTTP load generator the sweep uses (``wrk`` or ``aiohttp``), with a note in
    ``report`` saying which and why; ValueError when ``wrk`` was asked for but cannot
    run the load (not on the PATH, or fewer connections than clients)."""
    from pyxos.bench.wrk import wrk_binary

    shared = options.connections < max(options.clients)
    if options.http_loadgen == "aiohttp":
        choice = "aiohttp"
    elif options.http_loadgen == "wrk":
        if wrk_binary() is None:
            raise ValueError("--http-loadgen wrk: no wrk on the PATH (apt-get install wrk)")
        if shared:
            raise ValueError(
                "--http-loadgen wrk gives every client its own connection: "
                "pass --connections >= the largest --clients"
            )
        choice = "wrk"
    elif options.http_loadgen == "auto":
        choice = "wrk" if wrk_binary() is not None and not shared else "aiohttp"
        if choice == "aiohttp":
            why = "clients share connections" if shared else "no wrk on the PATH"
            report.notes.append(f"HTTP load by aiohttp's client ({why}): it may be the limit")
    else:
        raise ValueError(f"unknown HTTP load generator {options.http_loadgen!r}")
    report.notes.append(f"HTTP load generator: {choice} (the same for every system)")
    return choice


def _plan(options: KvOptions, report: KvReport) -> list[tuple[str, Callable[..., CaseResult]]]:
    """The systems that can run here, each with its runner; reasons for the others."""
    plan: list[tuple[str, Callable[..., CaseResult]]] = []
    for name in options.vs:
        if name == "pysyncobj":
            if not pysyncobj_available():
                report.unavailable[name] = "PySyncObj is not importable (pip install pysyncobj)"
                continue
            plan.append(
                (
                    name,
                    lambda load: run_pysyncobj(
                        load.clients,
                        seconds=load.seconds,
                        read_ratio=load.read_ratio,
                        value_size=load.value_size,
                        keys=load.keys,
                        seed=load.seed,
                    ),
                )
            )
        elif name == "etcd":
            if systems.etcd_binary() is None:
                report.unavailable[name] = (
                    "no etcd binary on the PATH (apt-get install etcd-server)"
                )
                continue
            grpc = options.api == "binary" and systems.aetcd_available()
            if options.api == "binary" and not grpc:
                report.notes.append(
                    "etcd gRPC: no asyncio gRPC etcd client (aetcd) installs here; "
                    "etcd measured over its JSON gateway"
                )
            elif grpc:
                report.notes.append(
                    "etcd over gRPC with aetcd (pyxos binary API beside etcd's gRPC API)"
                )
            plan.append((name, lambda load, grpc=grpc: systems.run_etcd(load, grpc=grpc)))
        elif name == "majority":
            if options.q2 is None:
                raise ValueError(
                    "--vs majority runs majority quorums beside a pyxos run with --q2 N: "
                    "without --q2 both runs would be majorities"
                )
            plan.append(
                (
                    name,
                    lambda load: systems.run_pyxos(replace(load, q2=None), system="pyxos-majority"),
                )
            )
        elif name == "ceiling":
            script = systems.ceiling_script(options.ceiling_dir)
            if script is None:
                where = options.ceiling_dir or "../shared/ceiling"
                report.unavailable[name] = f"no {where}/bench.py (pass --ceiling-dir)"
                continue
            resolved = script.resolve()
            plan.append((name, lambda load, s=resolved: systems.run_ceiling(load, s)))
            if options.value_size != 10 or options.read_ratio != 0.0:
                report.notes.append(
                    "the ceiling always runs 10-byte writes: its ratios compare "
                    "different loads unless --value-size 10 --read-ratio 0"
                )
        else:
            raise ValueError(f"unknown system {name!r}: choose from {', '.join(SYSTEMS)}")
    return plan


def run_kv(options: KvOptions, progress: Callable[[str, int, int], None] | None = None) -> KvReport:
    """Run the whole sweep.

    ``progress(description, done, total)`` is called before every run (and once at the
    end with ``done == total``).
    """
    if options.record is not None and options.api != "binary":
        raise ValueError("--record needs --api binary (the history comes from the client)")
    if not options.clients or min(options.clients) < 1:
        raise ValueError("--clients: every client count must be >= 1")
    report = KvReport()
    loadgen = http_loadgen(options, report) if options.api == "http" else "aiohttp"
    report.http_loadgen = loadgen if options.api == "http" else None
    plan = _plan(options, report)
    with tempfile.TemporaryDirectory(prefix="pyxos-bench-fsync-") as tmp:
        report.raw_fsync_per_s = measure_raw_fsync(tmp, options.raw_fsync_seconds)
    runs: dict[tuple[str, int], list[CaseResult]] = {}
    total = options.repeat * len(options.clients) * (1 + len(plan))
    done = 0
    single = options.repeat == 1 and len(options.clients) == 1
    for rep in range(options.repeat):
        for clients in options.clients:
            load = systems.Load(
                clients=clients,
                connections=options.connections,
                value_size=options.value_size,
                read_ratio=options.read_ratio,
                seconds=options.duration,
                nodes=options.nodes,
                keys=options.keys,
                warmup=options.warmup,
                seed=rep,
                api=options.api,
                q2=options.q2,
                http_loadgen=loadgen,
            )
            if progress is not None:
                progress(f"pyxos, {clients} clients, run {rep + 1}", done, total)
            record = record_path(options.record, clients, rep, single) if options.record else None
            result = systems.run_pyxos(load, record=record)
            runs.setdefault(("pyxos", clients), []).append(result)
            report.runs.append(result)
            done += 1
            for name, runner in plan:
                if progress is not None:
                    progress(f"{name}, {clients} clients, run {rep + 1}", done, total)
                result = runner(load)
                runs.setdefault((name, clients), []).append(result)
                report.runs.append(result)
                done += 1
    if progress is not None:
        progress("done", done, total)
    order = ["pyxos", *(name for name, _ in plan)]
    report.results = [
        median_case(runs[name, c]) for c in options.clients for name in order if (name, c) in runs
    ]
    return report
