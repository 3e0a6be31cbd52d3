"""Flexible quorums (issue 11, item 4; docs/architecture.md, *Flexible quorums*): sizes
validated at start everywhere they can be given, the simulator safe with the smallest
legal phase-2 quorum, and the mutant that bypasses the intersection check caught from
its seeds."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyxos.cli import main
from pyxos.core.quorum import FlexibleQuorum, Majority, quorum_sizes, quorum_system
from pyxos.core.replica import ReplicaConfig
from pyxos.localcluster import ClusterError, LocalCluster
from pyxos.server.__main__ import main as server_main
from pyxos.server.config import Config, ConfigError
from pyxos.sim.kv import run_kv
from pyxos.sim.nemesis import parse_faults

ALL = parse_faults("all")
ALL_DISK = parse_faults("all,disk")

NODE = """
cluster_id = "c1"
node_id = 1
client_port = 7101
data_dir = "/tmp/pyxos-fq-1"
{quorum}
[peers]
1 = "127.0.0.1:7001"
2 = "127.0.0.1:7002"
3 = "127.0.0.1:7003"
4 = "127.0.0.1:7004"
5 = "127.0.0.1:7005"
"""


def _node_file(tmp_path: Path, quorum: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(NODE.format(quorum=quorum))
    return path


# -- sizes ---------------------------------------------------------------------------


def test_sizes_default_to_majorities_and_a_missing_one_is_the_smallest_that_meets() -> None:
    assert quorum_sizes(5) == (3, 3)
    assert quorum_sizes(4) == (3, 3)
    assert quorum_sizes(5, q2=2) == (4, 2)
    assert quorum_sizes(5, q1=2) == (2, 4)
    assert quorum_sizes(5, 5, 1) == (5, 1)
    assert isinstance(quorum_system([1, 2, 3]), Majority)
    q = quorum_system([1, 2, 3, 4, 5], q2=2)
    assert isinstance(q, FlexibleQuorum) and (q.q1, q.q2) == (4, 2)


@pytest.mark.parametrize(
    ("q1", "q2", "match"), [(2, 2, "must exceed"), (6, 1, "1..5"), (0, 5, "1..5")]
)
def test_sizes_that_do_not_intersect_or_do_not_fit_are_refused(
    q1: int, q2: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        quorum_sizes(5, q1, q2)
    with pytest.raises(ValueError):
        quorum_system([1, 2, 3, 4, 5], q1, q2)


# -- the node's configuration and `pyxos serve` ----------------------------------------


def test_config_reads_a_quorum_table_and_overrides_win(tmp_path: Path) -> None:
    path = _node_file(tmp_path, "quorum = { q1 = 4, q2 = 2 }")
    c = Config.load(path)
    assert (c.q1, c.q2) == (4, 2) and c.quorum_sizes == (4, 2)
    q = c.quorum_system()
    assert q.is_phase2_quorum({4, 5}) and not q.is_phase1_quorum({1, 2, 3})
    assert Config.load(path, q1=5, q2=1).quorum_sizes == (5, 1)
    assert Config.load(_node_file(tmp_path, "")).quorum_sizes == (3, 3)
    assert Config.load(_node_file(tmp_path, "quorum = { q2 = 1 }")).quorum_sizes == (5, 1)


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ("quorum = { q1 = 2, q2 = 2 }", "quorum: q1 \\+ q2 must exceed n=5"),
        ("quorum = { q1 = 9 }", "quorum: q1=9 must lie in 1..5"),
        ("quorum = { q3 = 1 }", "quorum: unknown key 'q3'"),
        ("quorum = 3", "quorum: expected a table"),
        ('quorum = { q2 = "two" }', "q2: expected int"),
    ],
)
def test_config_refuses_a_bad_quorum_with_a_clear_error(
    tmp_path: Path, table: str, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        Config.load(_node_file(tmp_path, table))


def test_serve_refuses_non_intersecting_quorums_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _node_file(tmp_path, "quorum = { q1 = 4, q2 = 2 }")
    assert server_main(["--config", str(path), "--q1", "3"]) == 2
    err = capsys.readouterr().err
    assert "configuration error: quorum: q1 + q2 must exceed n=5" in err
    assert "q1=3 q2=2" in err


# -- the local cluster ------------------------------------------------------------------


def test_cluster_create_refuses_non_intersecting_quorums_and_writes_nothing(
    tmp_path: Path,
) -> None:
    with pytest.raises(ClusterError, match="q1 \\+ q2 must exceed n=5"):
        LocalCluster.create(tmp_path / "c", 5, q1=2, q2=2)
    assert not (tmp_path / "c" / "cluster.json").exists()
    res = CliRunner().invoke(
        main, ["cluster", "start", "--nodes", "3", "--q2", "4", "--dir", str(tmp_path / "d")]
    )
    assert res.exit_code == 1 and "q2=4 must lie in 1..3" in res.output


def _status(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url + "/v1/status", timeout=5) as resp:
        data = json.loads(resp.read())
    assert isinstance(data, dict)
    return data


def test_a_real_cluster_with_q2_of_one_commits_with_both_followers_down(tmp_path: Path) -> None:
    """q1 = 3, q2 = 1 on three processes: the leader's own durable vote chooses a slot,
    so writes go on with both followers killed, which a majority cluster cannot do;
    the sizes reach the nodes through `cluster start --q2` and their configs."""
    runner = CliRunner()
    base = tmp_path / "c"
    res = runner.invoke(main, ["cluster", "start", "--nodes", "3", "--q2", "1", "--dir", str(base)])
    assert res.exit_code == 0, res.output
    cluster = LocalCluster.load(base)
    try:
        assert "quorum = { q1 = 3, q2 = 1 }" in (base / "node-1.toml").read_text()
        leader = cluster.wait_for_leader(20.0)
        assert _status(cluster.nodes[leader].http_url)["quorum"] == {"q1": 3, "q2": 1}
        kv = ["kv", "--dir", str(base)]
        assert runner.invoke(main, [*kv, "put", "a", "1"]).output.strip() == "OK"
        for node_id in cluster.nodes:
            if node_id != leader:
                assert cluster.kill(node_id)
        put = runner.invoke(main, [*kv, "--timeout", "10", "put", "b", "2"])
        assert put.output.strip() == "OK", put.output
        assert runner.invoke(main, [*kv, "get", "b"]).output.strip() == "2"
    finally:
        runner.invoke(main, ["cluster", "stop", "--dir", str(base)])


# -- the simulator ----------------------------------------------------------------------


def test_sim_cli_refuses_non_intersecting_sizes() -> None:
    res = CliRunner().invoke(main, ["sim", "kv", "--nodes", "5", "--q1", "2", "--q2", "2"])
    assert res.exit_code == 2 and "q1 + q2 must exceed n=5" in res.output


def _sweep(seeds: range, **kw: object) -> None:
    failures = []
    for seed in seeds:
        r = run_kv(seed, nodes=5, faults=ALL_DISK, trace=False, q2=2, **kw)  # type: ignore[arg-type]
        if r.violation is not None:
            failures.append(f"seed {seed}: {r.violation}\n  replay: {r.replay}")
        else:
            assert r.ok > 0 and r.slots > 0, f"seed {seed} did nothing"
    assert not failures, "\n".join(failures[:3])


def test_five_nodes_with_the_smallest_phase2_quorum_stay_safe() -> None:
    _sweep(range(20))


@pytest.mark.slow
def test_long_sweep_smallest_phase2_quorum() -> None:
    _sweep(range(300))


def test_replay_command_names_the_sizes() -> None:
    r = run_kv(0, nodes=5, faults=frozenset(), q2=2, ops_per_client=2, trace=False)
    assert r.violation is None
    assert " --nodes 5 " in r.replay and r.replay.endswith("--q1 4 --q2 2 --trace")
    default = run_kv(0, nodes=5, faults=frozenset(), ops_per_client=2, trace=False)
    assert default.replay.endswith("--q1 3 --q2 3 --trace")


# The mutant: q1 = q2 = 2 on five nodes, the start-up check bypassed. With leases (the
# default) the lease check fires first: node 5's lease, confirmed by two acceptors,
# leaves three free to promise another candidate (seed 2). Without leases two values
# are chosen for one slot (seed 11; seed 1 until a lone chosen watermark stopped
# starting an fsync). Both are the first seed to fail.
MUTANT_SEEDS = [
    (2, ReplicaConfig(), "lease"),
    (11, ReplicaConfig(lease=0), "agreement"),
]


@pytest.mark.parametrize(("seed", "config", "check"), MUTANT_SEEDS, ids=["lease", "agreement"])
def test_non_intersecting_quorums_mutant_is_caught_and_replays(
    seed: int, config: ReplicaConfig, check: str
) -> None:
    kw: dict[str, object] = {"nodes": 5, "faults": ALL, "config": config}
    a = run_kv(seed, mutant="non-intersecting-quorums", **kw)  # type: ignore[arg-type]
    assert a.violation is not None and a.violation.check == check, a.violation
    assert "--mutant non-intersecting-quorums" in a.replay
    b = run_kv(seed, mutant="non-intersecting-quorums", **kw)  # type: ignore[arg-type]
    assert b.violation is not None and b.violation.check == check
    assert a.trace_text() == b.trace_text()
    # The same seeds with legal sizes (majorities; the smallest legal q2) are clean.
    for sizes in ({}, {"q2": 2}):
        r = run_kv(seed, trace=False, **sizes, **kw)  # type: ignore[arg-type]
        assert r.violation is None, f"seed {seed} {sizes}: {r.violation}"


def test_non_intersecting_quorums_mutant_from_the_command_line() -> None:
    res = CliRunner().invoke(
        main,
        ["sim", "kv", "--seed", "2", "--nodes", "5", "--mutant", "non-intersecting-quorums"],
    )
    assert res.exit_code == 1
    assert "lease violated" in res.output
    assert "quorums q1 / q2" in res.output and "2 / 2" in res.output
