"""Bootstrapping and lost state with real node processes of a local cluster.

1. A node whose data directory is wiped and which is restarted with exactly the command
   line it had (``--init`` included, as ``pyxos cluster start`` launched it) does not
   vote with its empty state: it finds that the cluster exists and rebuilds. The
   scenario is built so that a vote would lose writes: they are held by that node and
   one other only, and the other is down when the wiped node comes back.
2. Two of three data directories wiped: status, metrics and ``pyxos status`` say that
   a majority lost its state, and the log says it once.
"""

from __future__ import annotations

import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from pyxos.cli import main
from pyxos.client import Client
from pyxos.localcluster import LocalCluster

WRITES = 200
MAJORITY_LOST = "a majority lost its state: this cluster cannot recover on its own"


def _restart_with(cluster: LocalCluster, node_id: int, cmd: list[str]) -> None:
    """Start a node with a given command line, as an operator copying it from ps would."""
    log = (cluster.base_dir / f"node-{node_id}.log").open("ab")
    with log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    (cluster.base_dir / f"node-{node_id}.pid").write_text(f"{proc.pid}\n")


def _state(cluster: LocalCluster, node_id: int) -> Any:
    st = cluster.node_status(node_id)
    return None if st is None else st.get("state")


def test_a_wiped_node_restarted_with_its_init_command_line_loses_no_write(
    tmp_path: Path,
) -> None:
    cluster = LocalCluster.create(tmp_path / "c", 3)
    cluster.start()
    try:
        leader = cluster.wait_for_leader(20.0)
        commands = {i: cluster.command_line(i) for i in cluster.nodes}
        assert all(c is not None and "--init" in c for c in commands.values()), commands
        wiped, down = (i for i in cluster.nodes if i != leader)
        with Client(cluster.client_addresses(), cluster=cluster.cluster_id, timeout=15.0) as c:
            c.put("warmup", "1")
            cluster.wait_until(
                lambda: (cluster.node_status(down) or {}).get("applied", 0) > 0,
                10.0,
                f"node {down} to hold state",
            )
            assert cluster.kill(down)
            for k in range(WRITES):  # held by the leader and the node about to be wiped
                c.put(f"k{k}", f"v{k}")
        assert cluster.kill(wiped)
        cluster.wipe(wiped)
        assert cluster.kill(leader)

        # The operator restarts the wiped node with the command line ps showed.
        cmd = commands[wiped]
        assert cmd is not None
        _restart_with(cluster, wiped, cmd)
        cluster.start_node(down)  # the local cluster's restart path: never --init
        restarted = cluster.command_line(down)
        assert restarted is not None and "--init" not in restarted

        def settled() -> bool:
            return _state(cluster, wiped) == "rebuilding" or cluster.leader([wiped, down]) in (
                wiped,
                down,
            )

        cluster.wait_until(settled, 20.0, "the wiped node to start")
        status = cluster.node_status(wiped) or {}

        cluster.start_node(leader)
        with Client(cluster.client_addresses(), cluster=cluster.cluster_id, timeout=15.0) as c:
            lost = [k for k in range(WRITES) if c.get(f"k{k}") != f"v{k}"]
            assert lost == [], f"{len(lost)} of {WRITES} acknowledged writes lost"
            # While the leader was down, the wiped node knew the cluster existed (the
            # other node holds state) and waited for the leader's answer, not voting.
            assert status.get("state") == "rebuilding", status
            assert status.get("waiting_for_peers") == [leader], status
            cluster.wait_until(
                lambda: _state(cluster, wiped) == "voting", 20.0, "the wiped node to rebuild"
            )
            # Now lose the leader's disk too: the rebuilt node's copy is needed.
            assert cluster.kill(leader)
            cluster.wipe(leader)
            cluster.start_node(leader)
            lost = [k for k in range(WRITES) if c.get(f"k{k}") != f"v{k}"]
            assert lost == [], f"{len(lost)} of {WRITES} acknowledged writes lost"
            cluster.wait_until(
                lambda: _state(cluster, leader) == "voting", 20.0, "the leader to rebuild"
            )
        log = (cluster.base_dir / f"node-{wiped}.log").read_text()
        assert "bootstrapping: not voting" in log
    finally:
        cluster.stop()


def _metrics(cluster: LocalCluster, node_id: int) -> str:
    url = cluster.nodes[node_id].http_url + "/metrics"
    try:
        with urllib.request.urlopen(url, timeout=2.0) as resp:
            return str(resp.read().decode())
    except OSError:
        return ""


def test_two_wiped_data_directories_report_a_lost_majority(tmp_path: Path) -> None:
    cluster = LocalCluster.create(tmp_path / "c", 3)
    cluster.start()
    try:
        cluster.wait_for_leader(20.0)
        with Client(cluster.client_addresses(), cluster=cluster.cluster_id, timeout=15.0) as c:
            for k in range(10):
                c.put(f"k{k}", "v")
        # `cluster start` on a directory whose nodes have run never passes --init, even
        # without the cluster's own note that it was bootstrapped.
        cluster.stop()
        (cluster.base_dir / "bootstrapped").unlink()
        cluster.start()
        for i in cluster.nodes:
            cmd = cluster.command_line(i)
            assert cmd is not None and "--init" not in cmd, cmd
        leader = cluster.wait_for_leader(20.0)
        lost = [i for i in cluster.nodes if i != leader]
        for i in lost:
            assert cluster.kill(i, signal.SIGKILL)
            cluster.wipe(i)
            cluster.start_node(i)

        def reported() -> bool:
            return all(
                _state(cluster, i) == "majority_lost"
                and "pyxos_majority_lost 1.0" in _metrics(cluster, i)
                for i in lost
            )

        cluster.wait_until(reported, 30.0, "the lost majority to be reported")
        for i in lost:
            status = cluster.node_status(i)
            assert status is not None
            assert status["message"] == MAJORITY_LOST
            assert "docs/operations.md" in status["recovery"]
            assert status["peers_without_state"] == [j for j in lost if j != i]
        out = CliRunner().invoke(main, ["status", "--dir", str(cluster.base_dir)]).output
        assert MAJORITY_LOST in " ".join(out.split()), out

        # Said once, not on every rebuild round: let many rounds pass, then count.
        first = lost[0]
        inputs = (cluster.node_status(first) or {})["driver"]["inputs"]
        cluster.wait_until(
            lambda: (cluster.node_status(first) or {})["driver"]["inputs"] > inputs + 100,
            30.0,
            "more rebuild rounds",
        )
        log = (cluster.base_dir / f"node-{first}.log").read_text()
        assert log.count(MAJORITY_LOST) == 1, log
    finally:
        cluster.stop()
