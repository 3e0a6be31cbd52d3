"""What one benchmark case measured, medians of repeats, the ratio table, JSON, plot.

Theory of operation
-------------------
A ``CaseResult`` is one run of one system at one client count: committed ops/s,
latency percentiles from a ``Histogram``, and the costs that could be measured for
that system (CPU seconds per 1,000 ops of the whole cluster, commands per fsync on
the leader); a figure a system cannot report is ``None``, never a made-up 0.
``median_case`` takes the per-field median of interleaved repeats. ``ratio_rows``
puts pyxos beside every other system at each client count: each figure of pyxos
divided by the other's (above 1 means pyxos has more of it: better for ops/s, worse
for latency and CPU). ``write_json`` and ``plot`` write what the CLI's ``--json`` and
``--plot`` ask for; matplotlib is imported only by ``plot`` (the ``plot`` extra).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from pyxos.bench.histogram import Histogram

__all__ = [
    "RATIO_FIGURES",
    "CaseResult",
    "format_cases",
    "format_ratios",
    "median_case",
    "plot",
    "ratio_rows",
    "write_json",
]

RATIO_FIGURES = ("ops_per_s", "p50_ms", "p99_ms", "p999_ms", "cpu_s_per_1k_ops")
"""The figures compared in the ratio table (pyxos's divided by the other's)."""


@dataclass(frozen=True, slots=True)
class CaseResult:
    """One system at one client count: what it did in the measured window."""

    system: str
    api: str
    nodes: int
    clients: int
    connections: int
    """Client connections used (0: the load runs inside a node process)."""
    value_size: int
    read_ratio: float
    seconds: float
    ops: int
    ops_per_s: float
    p50_ms: float
    p90_ms: float | None
    """None when the system does not report it (the ceiling)."""
    p99_ms: float
    p999_ms: float
    max_ms: float
    bytes_per_s: float
    """Value bytes moved per second (ops/s times the value size)."""
    errors: int = 0
    unknown: int = 0
    cpu_s_per_1k_ops: float | None = None
    """utime + stime of every node process over the window, per 1,000 ops."""
    cmds_per_fsync: float | None = None
    """Committed commands per fsync on the leader over the window."""
    leader_cpu_s_per_1k_ops: float | None = None
    """utime + stime of the leader's process alone over the window, per 1,000 ops
    (pyxos only: its leader's thread is what limits the rate)."""
    loadgen_cpu_s_per_1k_ops: float | None = None
    """CPU of the load generator running in the bench's own process (pyxos's binary
    client sessions, or the aiohttp HTTP client) per 1,000 ops: on a small machine it
    competes with the nodes for the cores."""
    fsync: bool = True
    note: str = ""

    @classmethod
    def from_histogram(
        cls, hist: Histogram, *, seconds: float, value_size: int, **kw: Any
    ) -> CaseResult:
        """A result whose ops and percentiles come from ``hist``."""
        ops_per_s = hist.count / seconds
        ms = hist.summary_ms()  # computed like max_ms: never above it by a rounding
        return cls(
            ops=hist.count,
            ops_per_s=ops_per_s,
            seconds=seconds,
            value_size=value_size,
            bytes_per_s=ops_per_s * value_size,
            p50_ms=ms["p50_ms"],
            p90_ms=ms["p90_ms"],
            p99_ms=ms["p99_ms"],
            p999_ms=ms["p999_ms"],
            max_ms=ms["max_ms"],
            **kw,
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)


_MEDIAN_FIELDS = (
    "ops",
    "ops_per_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "p999_ms",
    "max_ms",
    "bytes_per_s",
    "cpu_s_per_1k_ops",
    "cmds_per_fsync",
    "leader_cpu_s_per_1k_ops",
    "loadgen_cpu_s_per_1k_ops",
)


def median_case(runs: Sequence[CaseResult]) -> CaseResult:
    """Per-field medians of repeats of one case; errors and unknowns are summed."""
    if not runs:
        raise ValueError("no runs to take the median of")
    changes: dict[str, Any] = {}
    for name in _MEDIAN_FIELDS:
        values = [getattr(r, name) for r in runs if getattr(r, name) is not None]
        if values:
            m = statistics.median(values)
            changes[name] = round(m) if name == "ops" else float(m)
    changes["errors"] = sum(r.errors for r in runs)
    changes["unknown"] = sum(r.unknown for r in runs)
    if len(runs) > 1:
        changes["note"] = "; ".join(n for n in (runs[0].note, f"median of {len(runs)}") if n)
    return replace(runs[0], **changes)


def ratio_rows(results: Sequence[CaseResult], base: str = "pyxos") -> list[dict[str, Any]]:
    """pyxos (``base``) beside each other system, client count by client count.

    One row per (clients, other system): ``clients``, ``vs`` and, for each of
    ``RATIO_FIGURES``, base / other (None when either side lacks the figure or the
    other's is 0).
    """
    ours = {r.clients: r for r in results if r.system == base}
    rows: list[dict[str, Any]] = []
    for r in results:
        mine = ours.get(r.clients)
        if r.system == base or mine is None:
            continue
        row: dict[str, Any] = {"clients": r.clients, "vs": r.system}
        for name in RATIO_FIGURES:
            a, b = getattr(mine, name), getattr(r, name)
            row[name] = a / b if a is not None and b else None
        rows.append(row)
    rows.sort(key=lambda row: (row["clients"], row["vs"]))
    return rows


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_cases(results: Sequence[CaseResult]) -> str:
    """A markdown table of every result."""
    lines = [
        "| system | api | clients | conns | ops/s | p50 ms | p90 ms | p99 ms | p99.9 ms "
        "| CPU s/1k ops | cmds/fsync | MB/s | err | unk | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.system} | {r.api} | {r.clients} | {r.connections} | {r.ops_per_s:,.0f} "
            f"| {r.p50_ms:.2f} | {_num(r.p90_ms, '.2f')} | {r.p99_ms:.2f} | {r.p999_ms:.2f} "
            f"| {_num(r.cpu_s_per_1k_ops, '.3f')} | {_num(r.cmds_per_fsync, '.1f')} "
            f"| {r.bytes_per_s / 1e6:.2f} | {r.errors} | {r.unknown} | {r.note} |"
        )
    return "\n".join(lines)


def format_ratios(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of ``ratio_rows``: pyxos's figure / the other's."""
    head = "| clients | pyxos / | " + " | ".join(RATIO_FIGURES) + " |"
    lines = [head, "|---:|---|" + "---:|" * len(RATIO_FIGURES)]
    for row in rows:
        cells = " | ".join(_num(row[n], ".2f") for n in RATIO_FIGURES)
        lines.append(f"| {row['clients']} | {row['vs']} | {cells} |")
    return "\n".join(lines)


def write_json(
    path: str | Path,
    *,
    config: dict[str, Any],
    results: Sequence[CaseResult],
    runs: Sequence[CaseResult],
    raw_fsync_per_s: float | None,
    unavailable: dict[str, str],
) -> dict[str, Any]:
    """Write the whole benchmark (medians, every run, ratios) as JSON; the document."""
    doc = {
        "config": config,
        "raw_fsync_per_s": raw_fsync_per_s,
        "results": [r.to_json() for r in results],
        "ratios": ratio_rows(results),
        "runs": [r.to_json() for r in runs],
        "unavailable": unavailable,
        "fields": [f.name for f in fields(CaseResult)],
    }
    Path(path).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return doc


def plot(path: str | Path, results: Sequence[CaseResult], title: str = "") -> None:
    """Throughput against p99 latency over the client sweep, one line per system."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("--plot needs matplotlib: pip install 'pyxos[plot]'") from e
    fig, ax = plt.subplots(figsize=(8, 5))
    systems = list(dict.fromkeys(r.system for r in results))
    for system in systems:
        rows = sorted((r for r in results if r.system == system), key=lambda r: r.clients)
        ax.plot([r.ops_per_s for r in rows], [r.p99_ms for r in rows], marker="o", label=system)
        for r in rows:
            ax.annotate(
                str(r.clients),
                (r.ops_per_s, r.p99_ms),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
            )
    ax.set_xlabel("committed ops/s")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_yscale("log")
    ax.set_title(title or "throughput vs p99 latency (labels: clients)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
