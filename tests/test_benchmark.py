"""The KV benchmark against a real 3-node local cluster: it runs, records, and cleans up.

Smoke tests only: no assertion on performance numbers, which depend on the machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import pyxos.benchmark as benchmark
from pyxos.benchmark import BenchResult, bench_local_cluster, format_results, summarize_latencies
from pyxos.check.history import load_history
from pyxos.check.linearizability import check_history


def _node_processes(base_dir: Path) -> list[int]:
    """Pids of live processes whose command line names a config in ``base_dir``."""
    pids = []
    marker = str(base_dir).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if b"pyxos.server" in cmdline and marker in cmdline:
            pids.append(int(entry))
    return pids


def test_four_clients_one_second_on_three_nodes(tmp_path: Path) -> None:
    base = tmp_path / "cluster"
    history = tmp_path / "history.jsonl"
    result = bench_local_cluster(
        3, 4, seconds=1.0, write_ratio=0.5, keys=20, record=str(history), base_dir=base
    )
    assert (base / "cluster.json").exists()  # the cluster really ran in base_dir
    assert _node_processes(base) == []
    assert list(base.glob("node-*.pid")) == []

    assert result.ops > 0
    assert result.ops_per_s == pytest.approx(result.ops / result.seconds)
    assert result.errors == 0 and result.unknown == 0
    assert (result.nodes, result.clients, result.connections) == (3, 4, 4)
    lat = result.latency
    assert 0 < lat.p50_ms <= lat.p90_ms <= lat.p99_ms <= lat.max_ms < 5_000

    ops = load_history(history)
    assert len(ops) == result.history_records >= result.ops  # warm-up ops are recorded too
    assert {op.op for op in ops} == {"get", "put"}
    assert all(not op.unknown for op in ops)
    verdict = check_history(ops, timeout_s=30)
    assert verdict.ok, verdict.describe()

    table = format_results([result])
    assert "| pyxos: 3 nodes, 4 clients / 4 conns, 50% writes, 100 B |" in table


def test_sixteen_sessions_over_two_connections_stay_linearizable(tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    result = bench_local_cluster(
        3, 16, connections=2, seconds=1.0, keys=20, record=str(history), base_dir=tmp_path
    )
    assert _node_processes(tmp_path) == []
    assert result.ops > 0
    assert result.errors == 0 and result.unknown == 0
    assert (result.clients, result.connections) == (16, 2)
    ops = load_history(history)
    assert len(ops) == result.history_records >= result.ops
    assert len({op.client for op in ops}) == 16  # sixteen sessions, each its own client
    verdict = check_history(ops, timeout_s=30)
    assert verdict.ok, verdict.describe()
    assert "16 clients / 2 conns" in format_results([result])


def test_the_nodes_are_stopped_when_the_run_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[int]] = []

    async def broken(*args: object, **kwargs: object) -> BenchResult:
        seen.append(_node_processes(tmp_path))
        raise RuntimeError("load generator failed")

    monkeypatch.setattr(benchmark, "run_kv_bench", broken)
    with pytest.raises(RuntimeError, match="load generator failed"):
        bench_local_cluster(3, 1, seconds=0.1, base_dir=tmp_path)
    assert len(seen) == 1 and len(seen[0]) == 3  # they were running during the load
    assert _node_processes(tmp_path) == []


def test_bad_load_is_refused_before_any_process_starts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="write_ratio"):
        bench_local_cluster(3, 1, write_ratio=1.5, base_dir=tmp_path)
    assert not (tmp_path / "cluster.json").exists()


def test_percentiles_are_nearest_rank() -> None:
    summary = summarize_latencies([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert summary.p50_ms == pytest.approx(50)
    assert summary.p90_ms == pytest.approx(90)
    assert summary.p99_ms == pytest.approx(99)
    assert summary.max_ms == pytest.approx(100)
    assert summarize_latencies([]).p99_ms == 0.0
    assert summarize_latencies([0.002]).p50_ms == pytest.approx(2)
