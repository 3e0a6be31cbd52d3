"""Helpers for the server and client tests: in-process clusters on free local ports."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path

from pyxos.server.config import Config
from pyxos.server.node import NodeServer

CLUSTER = "test-cluster"


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports that were free a moment ago (bind port 0 to find them)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def cluster_configs(tmp_path: Path, n: int = 3, **extra: object) -> list[Config]:
    """Configs of an ``n``-node cluster on 127.0.0.1 (client ports fixed, too)."""
    ports = free_ports(2 * n)
    peers = {str(i + 1): f"127.0.0.1:{ports[i]}" for i in range(n)}
    configs = []
    for i in range(n):
        raw: dict[str, object] = {
            "cluster_id": CLUSTER,
            "node_id": i + 1,
            "peers": peers,
            "client_port": ports[n + i],
            "data_dir": str(tmp_path / f"node{i + 1}"),
            "election_timeout": [0.15, 0.3],
            "heartbeat_interval": 0.03,
        }
        raw.update(extra)
        configs.append(Config.from_mapping(raw))
    return configs


def client_addresses(configs: list[Config]) -> list[str]:
    """The client addresses of a cluster, in node order."""
    return [f"127.0.0.1:{c.client_port}" for c in configs]


async def wait_for(
    condition: Callable[[], object], timeout: float = 5.0, what: str = "condition"
) -> None:
    """Poll ``condition`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


async def start_nodes(configs: list[Config]) -> list[NodeServer]:
    """Start one ``NodeServer`` per config."""
    nodes = [NodeServer(c, initialize=True) for c in configs]
    for node in nodes:
        await node.startup()
    return nodes


def leaders(nodes: list[NodeServer]) -> list[NodeServer]:
    """The running nodes that lead right now."""
    return [n for n in nodes if n.running and n.is_leader]


async def wait_leader(nodes: list[NodeServer], timeout: float = 5.0) -> NodeServer:
    """Wait until exactly one running node leads and every running node follows it."""

    def one() -> bool:
        live = [n for n in nodes if n.running]
        found = leaders(nodes)
        return len(found) == 1 and all(n.leader == found[0].config.node_id for n in live)

    await wait_for(one, timeout, "a single leader")
    return leaders(nodes)[0]


async def stop_nodes(nodes: list[NodeServer]) -> None:
    """Shut every node down."""
    for node in nodes:
        await node.shutdown()


def test_free_ports_are_distinct() -> None:
    ports = free_ports(6)
    assert len(set(ports)) == 6
