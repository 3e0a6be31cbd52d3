"""``pyxos bench recovery``: restart, memory and rebuild figures of a loaded cluster.

Theory of operation
-------------------
One local cluster of real node processes (``LocalCluster``, fsync on) is loaded with
``keys`` distinct keys of ``value_size`` bytes each through the binary client
(``ClientPool`` sessions, closed loop), with snapshots off on every node so that the
whole history sits in each node's write-ahead log. Then, on one follower at a time:

1. **memory**: the resident set (``VmRSS``) of every node process holding every key;
2. **restart from the WAL**: the follower is killed (SIGKILL) and started again; the
   figures are the seconds until its status answers (storage recovered: the WAL is
   replayed before the node listens) and until it has applied every slot the leader
   had chosen, and the WAL bytes on its disk divided by the latter (MB/s replayed);
3. **restart from a snapshot**: the follower's config gets the snapshot settings under
   test (the node defaults unless given), it is restarted once so that it takes a
   snapshot of everything and compacts its log, then killed and started again: the
   same figures over the snapshot bytes;
4. **restart at the snapshot threshold** (the worst case the settings allow): about
   ``snapshot_bytes`` more of values are written past that snapshot (the follower's
   slot trigger lifted for the phase, so the byte budget alone bounds the log), and
   the follower is restarted: snapshot plus the longest log replay the byte setting
   lets build up;
5. **rebuild**: another follower is killed, its data directory deleted, and it is
   started again: it rebuilds from its peers (a catch-up snapshot of the leader's
   applied state, then the log after it); the seconds until it votes again with every
   key applied.

Nothing here asserts a speed: it reports. The figures of a shared, loaded machine
swing; ``--json`` keeps them with the command line that produced them.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pyxos.localcluster import ClusterError, LocalCluster
from pyxos.statemachine.service import SNAPSHOT_BYTES, SNAPSHOT_EVERY

__all__ = ["RecoveryOptions", "RecoveryReport", "format_report", "run_recovery_bench"]

SNAPSHOTS_OFF = 10**12
"""``snapshot_every``/``snapshot_bytes`` large enough that no snapshot is ever taken."""


@dataclass(frozen=True, slots=True)
class RecoveryOptions:
    """What ``pyxos bench recovery`` loads and measures."""

    keys: int = 1_000_000
    value_size: int = 1000
    nodes: int = 3
    clients: int = 256
    connections: int = 4
    snapshot_every: int | None = None
    """The snapshot settings under test (None: the node defaults)."""
    snapshot_bytes: int | None = None
    phases: tuple[str, ...] = ("memory", "wal", "snapshot", "threshold", "rebuild")
    timeout: float = 1800.0
    """Seconds any one wait (load, restart, rebuild) may take before giving up."""
    base_dir: Path | None = None
    """Where the cluster lives (default: a temporary directory, removed after)."""


@dataclass(slots=True)
class Restart:
    """One measured restart (or rebuild) of one node."""

    node: int
    wal_bytes: int
    snapshot_bytes: int
    seconds_to_status: float
    """From the start of the process until its status answers (storage recovered)."""
    seconds_to_caught_up: float
    """From the start of the process until it applied every slot chosen before."""
    mb_per_s: float
    """(WAL + snapshot bytes on its disk before the start; for a wiped node the key and
    value bytes it rebuilds) / seconds_to_caught_up."""


@dataclass(slots=True)
class RecoveryReport:
    """Everything ``run_recovery_bench`` measured (``asdict`` for JSON)."""

    options: dict[str, Any]
    load_seconds: float = 0.0
    load_ops_per_s: float = 0.0
    rss_bytes: dict[int, int] = field(default_factory=dict)
    rss_bytes_per_key: float = 0.0
    restart_wal: Restart | None = None
    restart_snapshot: Restart | None = None
    restart_threshold: Restart | None = None
    rebuild: Restart | None = None


def _disk_usage(data_dir: Path) -> tuple[int, int]:
    """(WAL bytes, snapshot bytes) in a node's data directory."""
    wal = snap = 0
    for root, _dirs, files in os.walk(data_dir):
        for name in files:
            try:
                size = (Path(root) / name).stat().st_size
            except OSError:
                continue
            if "snapshot" in root or name.startswith("snapshot"):
                snap += size
            elif name.endswith(".log"):
                wal += size
    return wal, snap


def _rss(pid: int) -> int:
    """Resident set size of a process, in bytes (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def set_snapshot_config(cluster: LocalCluster, node_id: int, every: int, nbytes: int) -> None:
    """Rewrite one node's ``snapshot_every``/``snapshot_bytes`` (read at its next start)."""
    path = cluster.base_dir / f"node-{node_id}.toml"
    text = path.read_text()
    text = re.sub(r"(?m)^snapshot_(every|bytes) = \d+\n", "", text)
    path.write_text(f"snapshot_every = {every}\nsnapshot_bytes = {nbytes}\n" + text)


async def _load(
    cluster: LocalCluster, opts: RecoveryOptions, progress: Callable[[str], None]
) -> None:
    from pyxos.client.mux import ClientPool

    pool = ClientPool(
        cluster.client_addresses(),
        cluster=cluster.cluster_id,
        connections=opts.connections,
        timeout=60.0,
    )
    value = "v" * opts.value_size
    next_key = 0
    done = 0

    async def worker() -> None:
        nonlocal next_key, done
        session = pool.session()
        while next_key < opts.keys:
            k = next_key
            next_key += 1
            await session.put(f"k{k:09d}", value)
            done += 1
            if done % 100_000 == 0:
                progress(f"loaded {done:,} keys")

    try:
        await asyncio.gather(*(worker() for _ in range(min(opts.clients, opts.keys))))
    finally:
        await pool.close()


def _applied(cluster: LocalCluster, node_id: int) -> int:
    st = cluster.node_status(node_id, timeout=2.0)
    return int(st.get("applied", -1)) if st else -1


def _wait_applied_everywhere(cluster: LocalCluster, timeout: float) -> int:
    """Wait until every node applied what the leader has applied; that slot."""
    leader = cluster.wait_for_leader(timeout)
    target = _applied(cluster, leader)
    cluster.wait_until(
        lambda: all(_applied(cluster, i) >= target for i in cluster.nodes),
        timeout,
        f"every node to apply slot {target}",
    )
    return target


def _timed_start(
    cluster: LocalCluster, node_id: int, target: int, timeout: float, logical_bytes: int = 0
) -> Restart:
    """Start a stopped node; time its status and its catching up to ``target``. The
    MB/s figure is over the bytes on its disk, or ``logical_bytes`` if it has none (a
    wiped node: the keys and values it rebuilds)."""
    wal, snap = _disk_usage(cluster.data_dir(node_id))
    moved = (wal + snap) or logical_bytes
    t0 = time.monotonic()
    cluster.start_node(node_id)
    t_status = None
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        st = cluster.node_status(node_id, timeout=2.0)
        now = time.monotonic()
        if st is not None and st.get("state") not in (None, "starting"):
            if t_status is None:
                t_status = now - t0
            if st.get("state") == "voting" and int(st.get("applied", -1)) >= target:
                total = now - t0
                return Restart(node_id, wal, snap, t_status, total, moved / 1e6 / max(total, 1e-9))
        if cluster.pid(node_id) is None:
            raise ClusterError(f"node {node_id} exited while starting (see its log)")
        time.sleep(0.02)
    raise ClusterError(f"node {node_id} did not catch up to slot {target} within {timeout:.0f}s")


def _snapshot_count(cluster: LocalCluster, node_id: int) -> int:
    st = cluster.node_status(node_id, timeout=2.0)
    return int(st["driver"].get("snapshots", 0)) if st else -1


def run_recovery_bench(
    opts: RecoveryOptions, progress: Callable[[str], None] = lambda _m: None
) -> RecoveryReport:
    """Run the phases of ``opts`` on a fresh cluster (see the module notes)."""
    every = opts.snapshot_every if opts.snapshot_every is not None else SNAPSHOT_EVERY
    nbytes = opts.snapshot_bytes if opts.snapshot_bytes is not None else SNAPSHOT_BYTES
    report = RecoveryReport(
        options={
            **asdict(opts),
            "base_dir": str(opts.base_dir or ""),
            "snapshot_every": every,
            "snapshot_bytes": nbytes,
        }
    )
    with tempfile.TemporaryDirectory(prefix="pyxos-recovery-") as tmp:
        base = opts.base_dir if opts.base_dir is not None else Path(tmp)
        cluster = LocalCluster.create(
            base, opts.nodes, cluster_id="pyxos-recovery", snapshot_every=SNAPSHOTS_OFF
        )
        for i in cluster.nodes:
            set_snapshot_config(cluster, i, SNAPSHOTS_OFF, SNAPSHOTS_OFF)
        try:
            cluster.start()
            leader = cluster.wait_for_leader(60.0)
            progress(f"loading {opts.keys:,} keys of {opts.value_size} B (leader: node {leader})")
            t0 = time.monotonic()
            asyncio.run(_load(cluster, opts, progress))
            report.load_seconds = time.monotonic() - t0
            report.load_ops_per_s = opts.keys / max(report.load_seconds, 1e-9)
            target = _wait_applied_everywhere(cluster, opts.timeout)
            leader = cluster.wait_for_leader(60.0)
            followers = [i for i in cluster.nodes if i != leader]
            if "memory" in opts.phases:
                for i in cluster.nodes:
                    pid = cluster.pid(i)
                    report.rss_bytes[i] = _rss(pid) if pid is not None else 0
                report.rss_bytes_per_key = sorted(report.rss_bytes.values())[
                    len(report.rss_bytes) // 2
                ] / max(opts.keys, 1)
            f = followers[0]
            if "wal" in opts.phases:
                progress(f"restart node {f} from its WAL")
                cluster.kill(f, signal.SIGKILL)
                report.restart_wal = _timed_start(cluster, f, target, opts.timeout)
            if "snapshot" in opts.phases or "threshold" in opts.phases:
                progress(f"node {f}: snapshot settings every {every} slots / {nbytes} B")
                cluster.kill(f, signal.SIGKILL)
                set_snapshot_config(cluster, f, 1, nbytes)  # snapshot everything now
                _timed_start(cluster, f, target, opts.timeout)
                cluster.wait_until(
                    lambda: (
                        _snapshot_count(cluster, f) >= 1
                        and _disk_usage(cluster.data_dir(f))[0] < nbytes + 64 * 2**20
                    ),
                    opts.timeout,
                    f"node {f} to take a snapshot and compact its log",
                )
                cluster.kill(f, signal.SIGKILL)
                set_snapshot_config(cluster, f, every, nbytes)
                if "snapshot" in opts.phases:
                    progress(f"restart node {f} from its snapshot")
                    report.restart_snapshot = _timed_start(cluster, f, target, opts.timeout)
                    cluster.kill(f, signal.SIGKILL)
                if "threshold" in opts.phases:
                    # The slot trigger lifted: the byte budget alone bounds the log.
                    set_snapshot_config(cluster, f, SNAPSHOTS_OFF, nbytes)
                    cluster.start_node(f)
                    _wait_applied_everywhere(cluster, opts.timeout)
                    # A put costs about 40 B of slot value beyond its value (key, client
                    # id, sequence, framing): stay just under the byte budget.
                    more = max(1, int(nbytes * 0.9) // (opts.value_size + 40))
                    progress(f"writing {more:,} more values past node {f}'s snapshot")
                    extra = RecoveryOptions(
                        keys=min(more, opts.keys),
                        value_size=opts.value_size,
                        clients=opts.clients,
                        connections=opts.connections,
                    )
                    written = 0
                    while written < more:
                        asyncio.run(_load(cluster, extra, progress))
                        written += extra.keys
                    target = _wait_applied_everywhere(cluster, opts.timeout)
                    cluster.kill(f, signal.SIGKILL)
                    report.restart_threshold = _timed_start(cluster, f, target, opts.timeout)
                    cluster.kill(f, signal.SIGKILL)
                    set_snapshot_config(cluster, f, every, nbytes)
                cluster.start_node(f)
                target = _wait_applied_everywhere(cluster, opts.timeout)
            if "rebuild" in opts.phases and len(followers) > 1:
                g = followers[1]
                progress(f"wipe node {g} and rebuild it from its peers")
                cluster.kill(g, signal.SIGKILL)
                cluster.wipe(g)
                logical = opts.keys * (opts.value_size + 10)
                report.rebuild = _timed_start(cluster, g, target, opts.timeout, logical)
        finally:
            cluster.stop()
    return report


def format_report(r: RecoveryReport) -> str:
    """The report as a plain-text table."""
    o = r.options
    lines = [
        f"pyxos bench recovery: {o['nodes']} nodes, {o['keys']:,} keys of {o['value_size']} B, "
        f"snapshot settings under test: every {o['snapshot_every']} slots / "
        f"{o['snapshot_bytes']} B",
        f"load: {r.load_seconds:.1f} s ({r.load_ops_per_s:,.0f} puts/s)",
    ]
    if r.rss_bytes:
        rss = ", ".join(f"node {i} {b / 2**20:,.0f} MiB" for i, b in sorted(r.rss_bytes.items()))
        lines.append(f"RSS with every key: {rss} ({r.rss_bytes_per_key:,.0f} B per key, median)")
    lines.append("| phase | node | WAL MB | snapshot MB | s to status | s to caught up | MB/s |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    for name, x in (
        ("restart from the WAL", r.restart_wal),
        ("restart from a snapshot", r.restart_snapshot),
        ("restart at the snapshot_bytes threshold", r.restart_threshold),
        ("rebuild a wiped node from its peers", r.rebuild),
    ):
        if x is not None:
            lines.append(
                f"| {name} | {x.node} | {x.wal_bytes / 1e6:,.1f} | {x.snapshot_bytes / 1e6:,.1f} "
                f"| {x.seconds_to_status:.2f} | {x.seconds_to_caught_up:.2f} | {x.mb_per_s:,.1f} |"
            )
    return "\n".join(lines)
