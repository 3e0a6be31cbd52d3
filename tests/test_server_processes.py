"""Real node processes (``python -m pyxos.server``) and the blocking client.

SIGKILL the leader: a new one serves writes within 3 s and every acknowledged write is
readable. Restart the killed node, then kill another: the cluster that now depends on
the restarted node still serves everything. SIGTERM stops a node cleanly.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyxos.client import Client
from test_server_harness import CLUSTER, free_ports


class Cluster:
    """Three node processes from one TOML file, ``--node-id`` chosen per process."""

    def __init__(self, tmp_path: Path, n: int = 3) -> None:
        self.tmp_path = tmp_path
        self.n = n
        ports = free_ports(2 * n)
        self.client_ports = {i + 1: ports[n + i] for i in range(n)}
        peers = "\n".join(f'{i + 1} = "127.0.0.1:{ports[i]}"' for i in range(n))
        self.config = tmp_path / "cluster.toml"
        self.config.write_text(
            f'cluster_id = "{CLUSTER}"\nnode_id = 1\nclient_port = 0\n'
            f'data_dir = "{tmp_path}/unused"\nelection_timeout = [0.15, 0.3]\n'
            f"heartbeat_interval = 0.03\n\n[peers]\n{peers}\n"
        )
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, node: int) -> None:
        log = (self.tmp_path / f"node{node}.log").open("ab")
        first_time = not (self.tmp_path / f"data{node}").exists()
        self.procs[node] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pyxos.server",
                "--config",
                str(self.config),
                "--node-id",
                str(node),
                "--data-dir",
                str(self.tmp_path / f"data{node}"),
                "--client-port",
                str(self.client_ports[node]),
                *(["--init"] if first_time else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def addresses(self) -> dict[int, str]:
        return {node: f"127.0.0.1:{port}" for node, port in self.client_ports.items()}

    def kill(self, node: int, sig: int = signal.SIGKILL) -> int:
        proc = self.procs.pop(node)
        proc.send_signal(sig)
        return proc.wait(timeout=10)

    def stop_all(self) -> None:
        for node in list(self.procs):
            proc = self.procs.pop(node)
            proc.kill()
            proc.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(
            f"--- node{i}.log\n" + (self.tmp_path / f"node{i}.log").read_text(errors="replace")
            for i in range(1, self.n + 1)
            if (self.tmp_path / f"node{i}.log").exists()
        )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop_all()


def test_sigkill_leader_failover_restart_and_catch_up(cluster: Cluster) -> None:
    for node in range(1, 4):
        cluster.start(node)
    with Client(cluster.addresses(), cluster=CLUSTER, timeout=15.0) as c:
        c.put("warmup", "1")  # waits for the processes to start and elect
        c.async_client.timeout = 5.0
        acknowledged = {}
        for i in range(30):
            c.put(f"k{i}", f"v{i}")
            acknowledged[f"k{i}"] = f"v{i}"
        assert c.cas("k0", "v0", "w0") is True
        acknowledged["k0"] = "w0"
        leader = c.async_client.leader
        assert leader in (1, 2, 3)

        cluster.kill(leader)
        started = time.monotonic()
        c.put("after-kill", "yes")
        elapsed = time.monotonic() - started
        assert elapsed < 3.0, f"failover took {elapsed:.2f} s\n{cluster.logs()}"
        acknowledged["after-kill"] = "yes"
        assert c.async_client.leader != leader
        for key, value in acknowledged.items():
            assert c.get(key) == value

        # Restart the killed node; then kill another one, so the restarted node is
        # needed for every quorum from now on.
        cluster.start(leader)
        c.async_client.timeout = 10.0
        c.put("while-restarting", "ok")
        other = next(n for n in (1, 2, 3) if n != leader)
        cluster.kill(other)
        c.put("needs-restarted", "ok")
        acknowledged["needs-restarted"] = "ok"
        acknowledged["while-restarting"] = "ok"
        for key, value in acknowledged.items():
            assert c.get(key) == value, cluster.logs()
        assert c.list("k1") == sorted((k, v) for k, v in acknowledged.items() if k.startswith("k1"))


def test_sigterm_stops_a_node_cleanly(cluster: Cluster) -> None:
    for node in range(1, 4):  # a new cluster bootstraps once every node has answered
        cluster.start(node)
    history: list[dict[str, object]] = []
    with Client(cluster.addresses(), cluster=CLUSTER, timeout=15.0, history=history.append) as c:
        c.put("a", "1")
        assert c.get("a") == "1"
    assert [(h["op"], h["ok"]) for h in history] == [("put", True), ("get", True)]
    assert cluster.kill(1, signal.SIGTERM) == 0, cluster.logs()
    assert "node 1 stopped" in (cluster.tmp_path / "node1.log").read_text()
