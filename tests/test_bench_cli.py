"""``pyxos bench``: the histogram, the ratio table, and a 1-second ``bench kv`` run.

No assertion on speed: the run's JSON is checked for its shape only.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyxos.bench.histogram import Histogram
from pyxos.bench.kv import record_path
from pyxos.bench.results import (
    RATIO_FIGURES,
    CaseResult,
    format_ratios,
    median_case,
    ratio_rows,
)
from pyxos.cli import main


def _exact(ordered: list[float], p: float) -> float:
    """The nearest-rank percentile: the smallest value with >= p% at or below it."""
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


@pytest.mark.parametrize("seed", range(6))
def test_histogram_percentiles_within_one_percent_of_exact_ranks(seed: int) -> None:
    rng = random.Random(seed)
    shape = seed % 3
    n = rng.randrange(1, 5000)
    if shape == 0:
        values = [rng.lognormvariate(-7, 1.5) for _ in range(n)]  # 1 us .. 1 s
    elif shape == 1:
        values = [rng.uniform(0.0001, 0.01) for _ in range(n)]
    else:  # few distinct values, many ties, some tiny (exact buckets below 256 ns)
        values = [rng.choice([5e-8, 1e-6, 2.5e-3, 0.9]) for _ in range(n)]
    hist = Histogram(values)
    ordered = sorted(values)
    assert hist.count == n
    for p in (0, 1, 25, 50, 90, 99, 99.9, 100):
        exact = _exact(ordered, p)
        assert hist.percentile(p) == pytest.approx(exact, rel=0.01, abs=1e-9), p
    assert hist.max_ns == round(ordered[-1] * 1e9)
    summary = hist.summary_ms()
    assert list(summary) == ["p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"]
    assert summary["p50_ms"] <= summary["p90_ms"] <= summary["p99_ms"] <= summary["p999_ms"]


def test_histogram_merge_equals_one_histogram_of_everything() -> None:
    rng = random.Random(7)
    a = [rng.expovariate(1000) for _ in range(800)]
    b = [rng.expovariate(100) for _ in range(300)]
    merged = Histogram(a)
    merged.merge(Histogram(b))
    whole = Histogram(a + b)
    assert merged.count == whole.count
    for p in (1, 50, 99, 99.9):
        assert merged.percentile(p) == whole.percentile(p)
    assert (merged.min_ns, merged.max_ns) == (whole.min_ns, whole.max_ns)


def test_empty_histogram_and_bad_percentile() -> None:
    assert Histogram().percentile(99) == 0.0
    with pytest.raises(ValueError):
        Histogram([0.001]).percentile(101)


def _case(system: str, clients: int, ops_per_s: float, p99: float, cpu: float | None) -> CaseResult:
    return CaseResult(
        system=system,
        api="binary",
        nodes=3,
        clients=clients,
        connections=4,
        value_size=10,
        read_ratio=0.0,
        seconds=1.0,
        ops=int(ops_per_s),
        ops_per_s=ops_per_s,
        p50_ms=p99 / 2,
        p90_ms=p99 * 0.8,
        p99_ms=p99,
        p999_ms=p99 * 2,
        max_ms=p99 * 3,
        bytes_per_s=ops_per_s * 10,
        cpu_s_per_1k_ops=cpu,
    )


def test_ratio_rows_divide_pyxos_by_each_other_system_per_client_count() -> None:
    results = [
        _case("pyxos", 1, 1000, 2.0, 0.5),
        _case("etcd", 1, 500, 4.0, 1.0),
        _case("ceiling", 1, 4000, 1.0, None),
        _case("pyxos", 64, 30000, 6.0, 0.2),
        _case("ceiling", 64, 60000, 3.0, 0.1),
        _case("etcd", 256, 9000, 9.0, 1.0),  # no pyxos at 256: no row
    ]
    rows = ratio_rows(results)
    assert [(r["clients"], r["vs"]) for r in rows] == [(1, "ceiling"), (1, "etcd"), (64, "ceiling")]
    by = {(r["clients"], r["vs"]): r for r in rows}
    assert by[1, "etcd"]["ops_per_s"] == pytest.approx(2.0)
    assert by[1, "etcd"]["p99_ms"] == pytest.approx(0.5)
    assert by[1, "etcd"]["cpu_s_per_1k_ops"] == pytest.approx(0.5)
    assert by[1, "ceiling"]["ops_per_s"] == pytest.approx(0.25)
    assert by[1, "ceiling"]["cpu_s_per_1k_ops"] is None  # the ceiling lacked it
    assert by[64, "ceiling"]["p50_ms"] == pytest.approx(2.0)
    assert set(RATIO_FIGURES) <= set(rows[0])
    table = format_ratios(rows).splitlines()
    assert len(table) == 2 + len(rows)
    assert table[2].startswith("| 1 | ceiling | 0.25 |")
    assert " - |" in table[2]


def test_median_case_takes_field_medians_and_sums_errors() -> None:
    runs = [
        replace(_case("pyxos", 4, v, p, 0.3), errors=1)
        for v, p in ((100, 5.0), (300, 1.0), (200, 3.0))
    ]
    m = median_case(runs)
    assert (m.ops_per_s, m.p99_ms, m.errors) == (200, 3.0, 3)
    assert "median of 3" in m.note


def test_record_path_one_file_per_run() -> None:
    assert record_path("h.jsonl", 4, 0, single=True) == "h.jsonl"
    assert record_path("out/h.jsonl", 64, 2, single=False) == "out/h-c64-r2.jsonl"


def test_bench_kv_one_second_writes_json_of_the_documented_shape(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    history = tmp_path / "h.jsonl"
    result = CliRunner().invoke(
        main,
        [
            "bench", "kv", "--clients", "1,2", "--duration", "1", "--keys", "20",
            "--json", str(out), "--record", str(history),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "raw fsync rate" in result.output
    doc = json.loads(out.read_text())
    assert set(doc) >= {"config", "raw_fsync_per_s", "results", "ratios", "runs", "unavailable"}
    assert doc["config"]["clients"] == [1, 2]
    assert doc["raw_fsync_per_s"] > 0
    assert [(r["system"], r["clients"]) for r in doc["results"]] == [("pyxos", 1), ("pyxos", 2)]
    for r in doc["results"]:
        assert set(r) == set(doc["fields"])
        assert r["ops"] > 0 and r["errors"] == 0 and r["unknown"] == 0
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["p999_ms"] <= r["max_ms"]
        assert r["cpu_s_per_1k_ops"] is None or r["cpu_s_per_1k_ops"] > 0
        assert r["fsync"] is True
    assert doc["ratios"] == []  # pyxos only
    for clients in (1, 2):  # one history per run, each checkable by `pyxos check`
        recorded = tmp_path / f"h-c{clients}-r0.jsonl"
        checked = CliRunner().invoke(main, ["check", str(recorded)])
        assert checked.exit_code == 0, checked.output


@pytest.mark.parametrize("api", ["submit", "await"])
def test_bench_embedded_runs_the_counter_and_writes_json(tmp_path: Path, api: str) -> None:
    out = tmp_path / "embedded.json"
    result = CliRunner().invoke(
        main,
        ["bench", "embedded", "--clients", "4", "--duration", "0.5", "--repeat", "1",
         "--vs", "", "--api", api, "--json", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "pyxos embedded ops/s" in result.output
    doc = json.loads(out.read_text())
    assert doc["config"]["api"] == api
    (run,) = doc["runs"]["pyxos"]["4"]
    assert run["ops"] > 0 and run["errors"] == 0 and run["unknown"] == 0
    assert run["value"] >= run["ops"]  # every acknowledged increment is in the counter
    assert doc["counter_below_acknowledged"] == []


_FAKE_CEILING_EMBEDDED = """
import json, sys
args = sys.argv[1:]
assert args[args.index("--mode") + 1] == "embedded", args
n = int(args[args.index("--outstanding") + 1])
print("setting up")
print(json.dumps({"mode": "embedded", "load": n, "commits_per_s": 1000.0 * n,
                  "batch_p50_ms": 2.0, "batch_p99_ms": 4.0, "avg_batch": 100.0,
                  "cpu": {"L": {"pct": 60.0}, "F1": {"pct": 20.0}, "F2": {"pct": 20.0}}}))
"""


def test_bench_embedded_vs_ceiling_prints_the_ratio(tmp_path: Path) -> None:
    """``--vs ceiling`` runs the ceiling's embedded mode with the same number of
    commands outstanding (a stand-in script printing its JSON line), in the same rounds,
    and prints pyxos's figure as a ratio to it."""
    ceiling = tmp_path / "ceiling"
    ceiling.mkdir()
    (ceiling / "bench.py").write_text(_FAKE_CEILING_EMBEDDED)
    out = tmp_path / "embedded.json"
    result = CliRunner().invoke(
        main,
        ["bench", "embedded", "--clients", "3", "--duration", "0.5", "--repeat", "1",
         "--vs", "ceiling", "--ceiling-dir", str(ceiling), "--json", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "pyxos / ceiling ops/s" in result.output
    doc = json.loads(out.read_text())
    assert doc["config"]["systems"] == ["pyxos", "ceiling"]
    (ceil,) = doc["runs"]["ceiling"]["3"]
    assert ceil["ops_per_s"] == pytest.approx(3000.0)  # the script's commits_per_s
    assert ceil["cpu_s"] == pytest.approx(1.0 * 0.5)  # L + F1 + F2 over the window
    assert ceil["cpu_s_per_1k_ops"] == pytest.approx(1000 * 0.5 / 1500)
    pyxos = doc["medians"]["pyxos"]["3"]
    ratio = f"{pyxos['ops_per_s'] / 3000.0:.2f}x"
    (row,) = [ln for ln in result.output.splitlines() if ln.startswith("| 3 |")]
    assert ratio in row
    missing = CliRunner().invoke(
        main,
        ["bench", "embedded", "--clients", "2", "--duration", "0.3", "--repeat", "1",
         "--vs", "ceiling", "--ceiling-dir", str(tmp_path / "nowhere")],
    )  # fmt: skip
    assert missing.exit_code == 0, missing.output
    assert "the ceiling is skipped" in missing.output


def test_bench_embedded_refuses_an_unknown_system() -> None:
    result = CliRunner().invoke(main, ["bench", "embedded", "--vs", "etcd"])
    assert result.exit_code == 2
    assert "etcd" in result.output


def test_bench_kv_refuses_an_unknown_system() -> None:
    result = CliRunner().invoke(main, ["bench", "kv", "--vs", "zookeeper"])
    assert result.exit_code == 2
    assert "zookeeper" in result.output


def test_histogram_percentiles_never_exceed_the_maximum() -> None:
    # Regression: p99.9 was (ns / 1e9) * 1e3 and max ns / 1e6, which differ in the last
    # bit for some values (34.908567000000005 > 34.908567): the bench JSON test flaked.
    from pyxos.bench.histogram import Histogram
    from pyxos.bench.results import CaseResult

    for value in (0.034908567, 0.022073793, 0.0012345678, 1.000000001, 0.000999):
        s = Histogram([value]).summary_ms()
        assert s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] <= s["p999_ms"] <= s["max_ms"]
        assert s["p999_ms"] == s["max_ms"]
        # ... and so in the results `pyxos bench kv` writes (the second flake's value).
        r = CaseResult.from_histogram(
            Histogram([value]), seconds=1.0, value_size=10, system="x", api="binary",
            nodes=3, clients=1, connections=1, read_ratio=0.0, errors=0,
        )  # fmt: skip
        assert r.p50_ms <= r.p90_ms <= r.p99_ms <= r.p999_ms <= r.max_ms


_FAKE_CEILING = """\
import json, sys
args = sys.argv[1:]
clients = int(args[args.index("--clients") + 1])
print("set-up noise the runner must skip")
print(json.dumps({"commits_per_s": 1000.0 * clients, "p50_ms": 0.5, "p90_ms": 0.8,
                  "p99_ms": 1.0, "p999_ms": 2.0, "max_ms": 3.0,
                  "cpu": {"L": {"pct": 50.0}, "F1": {"pct": 20.0}, "F2": {"pct": 20.0},
                          "LG": {"pct": 90.0}}}))
"""


def test_bench_kv_vs_ceiling_writes_ratios_json_and_plot(tmp_path: Path) -> None:
    """The command of issue 13's "must show", end to end with 1-second runs: a sweep
    beside the ceiling (a stand-in script printing the ceiling's JSON line, so the
    shape is checked without its load), the ratio table, the JSON and the PNG."""
    pytest.importorskip("matplotlib")
    ceiling = tmp_path / "ceiling"
    ceiling.mkdir()
    (ceiling / "bench.py").write_text(_FAKE_CEILING)
    out, png = tmp_path / "out.json", tmp_path / "out.png"
    result = CliRunner().invoke(
        main,
        [
            "bench", "kv", "--clients", "1,4", "--duration", "1", "--keys", "20",
            "--vs", "ceiling", "--ceiling-dir", str(ceiling),
            "--json", str(out), "--plot", str(png),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Ratios" in result.output
    doc = json.loads(out.read_text())
    assert doc["config"]["vs"] == ["ceiling"]
    assert doc["unavailable"] == {}
    assert [(r["system"], r["clients"]) for r in doc["results"]] == [
        ("pyxos", 1), ("ceiling", 1), ("pyxos", 4), ("ceiling", 4),
    ]  # fmt: skip
    ceil = {r["clients"]: r for r in doc["results"] if r["system"] == "ceiling"}
    assert ceil[4]["ops_per_s"] == 4000.0  # read from the script's last JSON line
    assert ceil[4]["cpu_s_per_1k_ops"] == pytest.approx(0.9 * 1 / 4000 * 1000)  # nodes only
    pyxos = {r["clients"]: r for r in doc["results"] if r["system"] == "pyxos"}
    assert [(r["clients"], r["vs"]) for r in doc["ratios"]] == [(1, "ceiling"), (4, "ceiling")]
    for row in doc["ratios"]:
        c = row["clients"]
        assert row["ops_per_s"] == pytest.approx(pyxos[c]["ops_per_s"] / ceil[c]["ops_per_s"])
        assert row["p50_ms"] == pytest.approx(pyxos[c]["p50_ms"] / ceil[c]["p50_ms"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_kv_q2_runs_flexible_quorums_beside_majorities(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        main,
        [
            "bench", "kv", "--clients", "2", "--duration", "1", "--keys", "20",
            "--q2", "1", "--vs", "majority", "--json", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "3 nodes, q2 = 1 (q1 = 3)" in result.output
    doc = json.loads(out.read_text())
    assert (doc["config"]["q1"], doc["config"]["q2"]) == (3, 1)
    assert [r["system"] for r in doc["results"]] == ["pyxos", "pyxos-majority"]
    assert all(r["ops"] > 0 and r["errors"] == 0 for r in doc["results"])
    assert [row["vs"] for row in doc["ratios"]] == ["pyxos-majority"]
    bad = CliRunner().invoke(main, ["bench", "kv", "--nodes", "5", "--q2", "6"])
    assert bad.exit_code == 2 and "q2=6 must lie in 1..5" in bad.output


def test_bench_kv_vs_majority_without_q2_is_refused() -> None:
    """``--vs majority`` without ``--q2`` would put majorities beside majorities under
    two labels: refused before any cluster starts."""
    result = CliRunner().invoke(
        main, ["bench", "kv", "--clients", "1", "--duration", "0.2", "--vs", "majority"]
    )
    assert result.exit_code == 1, result.output
    assert "without --q2 both runs would be majorities" in result.output
    assert "pyxos-majority" not in result.output


def test_bench_recovery_reports_every_phase_at_a_tiny_scale(tmp_path: Path) -> None:
    """``pyxos bench recovery`` end to end on 300 keys (the shape only: no timing)."""
    out = tmp_path / "recovery.json"
    args = ["bench", "recovery", "--keys", "300", "--value-size", "50", "--clients", "16"]
    args += ["--snapshot-bytes", "20000", "--timeout", "120", "--json", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["options"]["keys"] == 300 and doc["options"]["snapshot_bytes"] == 20000
    assert doc["load_seconds"] > 0 and len(doc["rss_bytes"]) == 3
    assert all(v > 0 for v in doc["rss_bytes"].values())
    for phase in ("restart_wal", "restart_snapshot", "restart_threshold", "rebuild"):
        r = doc[phase]
        assert r is not None, phase
        assert 0 < r["seconds_to_status"] <= r["seconds_to_caught_up"], (phase, r)
        assert r["mb_per_s"] > 0
    assert doc["restart_wal"]["wal_bytes"] > 0 and doc["restart_wal"]["snapshot_bytes"] == 0
    assert doc["restart_snapshot"]["snapshot_bytes"] > 0
    assert doc["rebuild"]["wal_bytes"] == doc["rebuild"]["snapshot_bytes"] == 0
    assert "restart from the WAL" in res.output and "rebuild a wiped node" in res.output


def test_bench_recovery_refuses_an_unknown_phase() -> None:
    res = CliRunner().invoke(main, ["bench", "recovery", "--phases", "memory,warp"])
    assert res.exit_code == 2 and "warp" in res.output
