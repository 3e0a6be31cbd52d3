"""``pyxos cluster``, ``pyxos kv`` and ``pyxos status`` against real processes, the HTTP
API from every node, and a node whose data directory was wiped: it rebuilds instead of
voting, and catches up."""

import json
import os
import signal
import urllib.request
from pathlib import Path

from click.testing import CliRunner

from pyxos.cli import main
from pyxos.localcluster import LocalCluster


def _http(method: str, url: str, body: bytes | None = None) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_cluster_commands_http_from_any_node_and_a_wiped_node_rebuilds(tmp_path: Path) -> None:
    runner = CliRunner()
    base = tmp_path / "c"
    res = runner.invoke(main, ["cluster", "start", "--nodes", "3", "--dir", str(base)])
    assert res.exit_code == 0, res.output
    cluster = LocalCluster.load(base)
    try:
        assert "leader: node" in res.output
        # curl -X PUT node/v1/kv/a -d 1, then GET from every node.
        first = cluster.nodes[1].http_url
        assert _http("PUT", f"{first}/v1/kv/a", b"1") == (200, {"ok": True})
        for node in cluster.nodes.values():
            assert _http("GET", f"{node.http_url}/v1/kv/a") == (200, {"key": "a", "value": "1"})
        for node_id, node in cluster.nodes.items():
            status, _ = _http("PUT", f"{node.http_url}/v1/kv/from-{node_id}", b"x")
            assert status == 200

        kv = ["kv", "--dir", str(base)]
        assert runner.invoke(main, [*kv, "put", "b", "2"]).output.strip() == "OK"
        assert runner.invoke(main, [*kv, "get", "b"]).output.strip() == "2"
        missing = runner.invoke(main, [*kv, "get", "nope"])
        assert missing.exit_code == 1
        assert runner.invoke(main, [*kv, "cas", "b", "2", "3"]).exit_code == 0
        assert runner.invoke(main, [*kv, "cas", "b", "2", "4"]).exit_code == 1
        assert runner.invoke(main, [*kv, "cas", "new", "-", "v", "--absent"]).exit_code == 0
        listed = runner.invoke(main, [*kv, "list", "from-"]).output.split()
        assert listed == ["from-1=x", "from-2=x", "from-3=x"]
        assert runner.invoke(main, [*kv, "delete", "b"]).output.strip() == "3"
        status = runner.invoke(main, ["status", "--dir", str(base)])
        assert status.exit_code == 0 and "leader" in status.output

        # Wipe a follower's disk: it must rebuild from its peers before it votes again.
        leader = cluster.wait_for_leader(10.0)
        victim = next(i for i in cluster.nodes if i != leader)
        assert cluster.kill(victim, signal.SIGKILL)
        cluster.wipe(victim)
        cluster.start_node(victim)

        def rebuilt_and_caught_up() -> bool:
            mine = cluster.node_status(victim)
            theirs = cluster.node_status(leader)
            return bool(
                mine
                and theirs
                and mine.get("rebuilding") is False
                and mine.get("applied", -1) >= theirs.get("applied", 0)
            )

        cluster.wait_until(rebuilt_and_caught_up, 20.0, "the wiped node to rebuild")
        log = (base / f"node-{victim}.log").read_text()
        assert "rebuilds from its peers and does not vote until then" in log
        victim_url = cluster.nodes[victim].http_url
        assert _http("GET", f"{victim_url}/v1/kv/a?stale=true")[1]["value"] == "1"
    finally:
        stopped = runner.invoke(main, ["cluster", "stop", "--dir", str(base)])
    assert stopped.exit_code == 0
    for node_id in cluster.nodes:
        assert cluster.pid(node_id) is None
    pids = [int(p.read_text()) for p in base.glob("*.pid")]
    for pid in pids:
        try:
            os.kill(pid, 0)
            raise AssertionError(f"process {pid} is still running")
        except ProcessLookupError:
            pass
