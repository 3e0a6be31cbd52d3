"""``pyxos bench kv --api http`` with its load generators: wrk's script and output, and
1-second runs checked for the JSON's shape only (no assertion on speed). The runs that
need ``wrk`` are skipped where it is not on the PATH (``apt-get install wrk``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyxos.bench.kv import KvOptions, KvReport, http_loadgen
from pyxos.bench.wrk import parse_wrk_output, wrk_script
from pyxos.cli import main

_LINE = (
    '{"requests": 1200, "duration_us": 2000000, "bytes": 99, "connect": 0, "read": 1, '
    '"write": 0, "status": 200, "timeout": 2, "p50_us": 1500.0, "p90_us": 2500.0, '
    '"p99_us": 9000.0, "p999_us": 12000.0, "max_us": 15000.0}'
)


def test_parse_wrk_output_counts_only_2xx_answers_as_ops() -> None:
    out = parse_wrk_output(f"Running 2s test @ http://127.0.0.1:1\n{_LINE}\n")
    assert out.ops == 1000  # 1,200 answers, 200 of them non-2xx
    assert out.errors == 200 + 1 + 2  # statuses, a read error, timeouts
    assert out.seconds == 2.0 and out.ops_per_s == 500.0
    assert (out.p50_ms, out.p90_ms, out.p99_ms, out.p999_ms, out.max_ms) == (
        1.5, 2.5, 9.0, 12.0, 15.0,
    )  # fmt: skip


def test_parse_wrk_output_counts_a_gets_404_as_an_answer() -> None:
    line = _LINE.replace('{"requests"', '{"not_found": 150, "requests"')
    out = parse_wrk_output(line)
    assert out.ops == 1150 and out.errors == 50 + 1 + 2


def test_parse_wrk_output_without_a_result_line_is_an_error() -> None:
    with pytest.raises(ValueError, match="no result line"):
        parse_wrk_output("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_wrk_script_per_system_and_refused_inputs() -> None:
    pyxos = wrk_script("pyxos", keys=7, read_ratio=0.25, value_size=10, seed=3, token="t0k")
    assert 'local mode = "pyxos"' in pyxos and "local keys = 7" in pyxos
    assert "local read_ratio = 0.25" in pyxos and 'local auth = "t0k"' in pyxos
    assert "/v1/kv/k" in pyxos
    etcd = wrk_script("etcd", keys=1000, read_ratio=0.0, value_size=10)
    assert "/v3/kv/put" in etcd and "/v3/kv/range" in etcd
    with pytest.raises(ValueError):
        wrk_script("zookeeper", keys=1, read_ratio=0.0, value_size=1)
    with pytest.raises(ValueError):
        wrk_script("pyxos", keys=1, read_ratio=0.0, value_size=1, token='a"b')


def test_http_loadgen_choice() -> None:
    report = KvReport()
    assert http_loadgen(KvOptions(api="http", http_loadgen="aiohttp"), report) == "aiohttp"
    shared = KvOptions(api="http", clients=(64,), connections=4, http_loadgen="auto")
    assert http_loadgen(shared, KvReport()) == "aiohttp"  # wrk cannot share connections
    if shutil.which("wrk") is not None:
        with pytest.raises(ValueError, match="own connection"):
            http_loadgen(KvOptions(api="http", clients=(64,), connections=4, http_loadgen="wrk"),
                         KvReport())  # fmt: skip


def _run_http(tmp_path: Path, loadgen: str) -> dict[str, object]:
    out = tmp_path / f"http-{loadgen}.json"
    result = CliRunner().invoke(
        main,
        [
            "bench", "kv", "--api", "http", "--http-loadgen", loadgen, "--clients", "2",
            "--connections", "2", "--duration", "1", "--keys", "20",
            "--json", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"HTTP load generator: {loadgen}" in result.output
    doc: dict[str, object] = json.loads(out.read_text())
    return doc


@pytest.mark.parametrize("loadgen", ["wrk", "aiohttp"])
def test_bench_kv_http_one_second_writes_json_of_the_documented_shape(
    tmp_path: Path, loadgen: str
) -> None:
    if loadgen == "wrk" and shutil.which("wrk") is None:
        pytest.skip("no wrk on the PATH (apt-get install wrk)")
    doc = _run_http(tmp_path, loadgen)
    config = doc["config"]
    assert isinstance(config, dict) and config["http_loadgen"] == loadgen
    assert config["api"] == "http"
    results = doc["results"]
    assert isinstance(results, list) and [(r["system"], r["api"]) for r in results] == [
        ("pyxos", "http")
    ]
    (r,) = results
    assert set(r) == set(doc["fields"])  # type: ignore[arg-type]
    assert r["ops"] > 0 and r["errors"] == 0
    assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["p999_ms"] <= r["max_ms"]
    assert r["cpu_s_per_1k_ops"] is None or r["cpu_s_per_1k_ops"] > 0
    assert r["connections"] == 2
