"""A forced new cluster with real node processes (docs/recovery.md): a 3-node cluster
loses two data directories for good; ``pyxos recover --force-new-cluster`` on the
survivor; the survivor serves every acknowledged write it had learned and takes new
ones; an old member started with its old data directory is refused and says why."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from pyxos.cli import main
from pyxos.client import Client
from pyxos.localcluster import LocalCluster

WRITES = 150


def _recover(cluster: LocalCluster, node_id: int) -> Any:
    toml = cluster.base_dir / f"node-{node_id}.toml"
    return CliRunner().invoke(main, ["recover", "--force-new-cluster", "--config", str(toml)])


def test_a_survivor_of_a_lost_majority_is_forced_into_a_new_cluster(tmp_path: Path) -> None:
    cluster = LocalCluster.create(tmp_path / "c", 3, snapshot_every=40)
    cluster.start()
    try:
        leader = cluster.wait_for_leader(20.0)
        survivor, old = (i for i in cluster.nodes if i != leader)
        with Client(cluster.client_addresses(), cluster=cluster.cluster_id, timeout=15.0) as c:
            for k in range(WRITES):
                c.put(f"k{k}", f"v{k}")
        applied = (cluster.node_status(leader) or {})["applied"]
        cluster.wait_until(
            lambda: (cluster.node_status(survivor) or {}).get("applied", 0) >= applied,
            20.0,
            "the survivor to learn every acknowledged write",
        )
        record = cluster.data_dir(survivor) / "pyxos.recovery"

        # A running node is refused, and nothing is written.
        r = _recover(cluster, survivor)
        assert r.exit_code == 2 and f"node {survivor} is running" in r.stderr, r.output
        assert not record.exists()

        # The majority is lost for good: every node killed, two data directories gone
        # (one kept aside, to bring it back by mistake later).
        for i in cluster.nodes:
            cluster.kill(i, signal.SIGKILL)
        shutil.copytree(cluster.data_dir(old), tmp_path / "old-copy")
        cluster.wipe(leader)
        cluster.wipe(old)

        r = _recover(cluster, survivor)
        assert r.exit_code == 0, r.output
        assert f"FORCED A NEW ONE-NODE CLUSTER from node {survivor}" in r.stderr
        assert "POSSIBLY LOST" in r.stderr and record.exists()

        cluster.start_node(survivor)
        cluster.wait_until(
            lambda: (cluster.node_status(survivor) or {}).get("role") == "leader",
            20.0,
            "the recovered node to lead alone",
        )
        addr = [cluster.nodes[survivor].client_address]
        with Client(addr, cluster=cluster.cluster_id, timeout=15.0) as c:
            lost = [k for k in range(WRITES) if c.get(f"k{k}") != f"v{k}"]
            assert lost == [], f"{len(lost)} of {WRITES} acknowledged writes lost"
            for k in range(20):
                c.put(f"new{k}", "x")
            assert [c.get(f"new{k}") for k in range(20)] == ["x"] * 20
        status = cluster.node_status(survivor) or {}
        recovered = status["recovered"]
        assert recovered["forced_new_cluster_from"] == survivor
        assert recovered["disowned"] == sorted((leader, old))
        assert recovered["snapshot_slot"] > 0  # the snapshot and the log tail both used
        out = CliRunner().invoke(main, ["status", "--dir", str(cluster.base_dir)]).output
        assert f"node {survivor} RECOVERED" in " ".join(out.split()), out
        log = (cluster.base_dir / f"node-{survivor}.log").read_text()
        assert "RECOVERED: forced into a new one-node cluster" in log

        # An old member started with its old data directory is refused, and says why.
        shutil.copytree(tmp_path / "old-copy", cluster.data_dir(old))
        cluster.start_node(old)
        cluster.wait_until(
            lambda: (cluster.node_status(old) or {}).get("state") == "removed",
            20.0,
            "the old member to be told it was disowned",
        )
        why = (cluster.node_status(old) or {})["removed"]
        assert f"node {survivor} says" in why and "--force-new-cluster" in why, why
        old_log = (cluster.base_dir / f"node-{old}.log").read_text()
        assert "is no longer a member" in old_log and "--force-new-cluster" in old_log
        status = cluster.node_status(survivor) or {}
        assert status["recovered"]["refused_old_members"] > 0
        assert status["role"] == "leader"
        with Client(addr, cluster=cluster.cluster_id, timeout=15.0) as c:
            c.put("after-old", "y")
            assert c.get("after-old") == "y"
            assert c.get("k0") == "v0"

        # The recovered cluster grows again with the membership operations, under new
        # ids (nodes 4 and 5 join as learners, catch up, are promoted); then the
        # recovered node itself is killed: the two new voters, a majority of the three,
        # serve every write and take new ones.
        assert cluster.kill(old)
        d = str(cluster.base_dir)
        for new in (4, 5):
            r = CliRunner().invoke(main, ["cluster", "add-node", "--timeout", "30", "--dir", d])
            assert r.exit_code == 0, r.output
            assert f"add node {new}" in r.output and f"promote node {new}" in r.output, r.output
        grown = LocalCluster.load(cluster.base_dir)
        three = [grown.nodes[i].client_address for i in (survivor, 4, 5)]
        with Client(three, cluster=cluster.cluster_id, timeout=15.0) as c:
            c.put("grown", "z")
        assert cluster.kill(survivor)  # one of three voters down: 4 and 5 go on
        with Client(three[1:], cluster=cluster.cluster_id, timeout=20.0) as c:
            lost = [k for k in range(WRITES) if c.get(f"k{k}") != f"v{k}"]
            assert lost == [], f"{len(lost)} of {WRITES} writes missing on the new members"
            assert c.get("grown") == "z" and c.get("new0") == "x"
            c.put("without-the-survivor", "w")
            assert c.get("without-the-survivor") == "w"
    finally:
        LocalCluster.load(cluster.base_dir).stop()  # the nodes added since, too


def test_values_the_survivor_fetched_after_a_restart_are_kept(tmp_path: Path) -> None:
    """A survivor that was down while writes went on learns them afterwards from its
    peers (a fetch: it never accepted them). Its log says so (LEARNED records), so the
    forced recovery keeps them too: none is a known loss."""
    cluster = LocalCluster.create(tmp_path / "c", 3)
    cluster.start()
    try:
        leader = cluster.wait_for_leader(20.0)
        survivor, other = (i for i in cluster.nodes if i != leader)
        with Client(cluster.client_addresses(), cluster=cluster.cluster_id, timeout=15.0) as c:
            c.put("before", "0")
            assert cluster.kill(survivor)
            for k in range(WRITES):  # chosen by the leader and the other node only
                c.put(f"k{k}", f"v{k}")
        applied = (cluster.node_status(leader) or {})["applied"]
        cluster.start_node(survivor)
        cluster.wait_until(
            lambda: (cluster.node_status(survivor) or {}).get("applied", 0) >= applied,
            20.0,
            "the survivor to catch up",
        )
        for i in cluster.nodes:
            cluster.kill(i, signal.SIGKILL)
        cluster.wipe(leader)
        cluster.wipe(other)
        r = _recover(cluster, survivor)
        assert r.exit_code == 0, r.output
        assert "LOST" not in r.stderr.replace("POSSIBLY LOST", ""), r.stderr
        cluster.start_node(survivor)
        cluster.wait_until(
            lambda: (cluster.node_status(survivor) or {}).get("role") == "leader",
            20.0,
            "the recovered node to lead alone",
        )
        status = cluster.node_status(survivor) or {}
        assert status["recovered"]["known_chosen_not_held"] == 0, status["recovered"]
        addr = [cluster.nodes[survivor].client_address]
        with Client(addr, cluster=cluster.cluster_id, timeout=15.0) as c:
            lost = [k for k in range(WRITES) if c.get(f"k{k}") != f"v{k}"]
            assert lost == [], f"{len(lost)} of {WRITES} writes it had learned are lost"
            assert c.get("before") == "0"
    finally:
        cluster.stop()
