"""Slowloris: 1,000 idle and slowly dribbling connections on a node's client port and
on its HTTP port do not stop it serving others, and the timeouts give their slots back.

A real node process (its own file descriptors, as in production); the attacking
sockets are plain blocking sockets of this process. Every wait is on a condition with
a deadline; nothing asserts how long anything took.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from pyxos.client import Client
from pyxos.net.codec import PROTOCOL_VERSION, Hello, encode_hello
from test_server_harness import CLUSTER, free_ports

HELLO = encode_hello(Hello(version=PROTOCOL_VERSION, cluster=CLUSTER, node=0, role="client"))


@contextmanager
def node_process(tmp_path: Path, frame_timeout: float) -> Iterator[tuple[int, int]]:
    """One single-node cluster; yields (client port, HTTP port)."""
    peer, client, http = free_ports(3)
    config = tmp_path / "node.toml"
    config.write_text(
        f'cluster_id = "{CLUSTER}"\nnode_id = 1\nclient_port = {client}\n'
        f'http_port = {http}\ndata_dir = "{tmp_path / "data"}"\n'
        f'frame_timeout = {frame_timeout}\n\n[peers]\n1 = "127.0.0.1:{peer}"\n'
    )
    log = (tmp_path / "node.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyxos.server", "--config", str(config), "--init"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: (status(http) or {}).get("role") == "leader", 30, "the node to lead")
        yield client, http
    finally:
        proc.kill()
        proc.wait(timeout=10)


def status(http: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/v1/status", timeout=5) as r:
            result: dict[str, Any] = json.load(r)
            return result
    except OSError:
        return None


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def attack(port: int, count: int, first: bytes, *, hello: bool = False) -> list[socket.socket]:
    """``count`` connections to ``port``; odd ones send ``first`` (then dribble); with
    ``hello`` every one says Hello first (the binary port closes a connection that
    does not within the handshake timeout)."""
    socks = []
    for i in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if hello:
            s.sendall(HELLO)
        if i % 2 and first:
            s.sendall(first)
        socks.append(s)
    return socks


def dribble(socks: list[socket.socket], data: bytes) -> None:
    """One more byte on every dribbling connection that is still open."""
    for s in socks[1::2]:
        with suppress(OSError):
            s.send(data)


def open_count(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the node has not closed."""
    alive = 0
    for s in socks:
        s.setblocking(False)
        try:
            alive += s.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
        finally:
            s.setblocking(True)
    return alive


def serve_others(client_port: int, http: int, key: str) -> None:
    """A well-behaved client writes and reads over both APIs."""
    with Client([f"127.0.0.1:{client_port}"], cluster=CLUSTER, timeout=30) as client:
        client.put(key, "binary")
        assert client.get(key) == "binary"
    request = urllib.request.Request(
        f"http://127.0.0.1:{http}/v1/kv/{key}", data=b"http", method="PUT"
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/v1/kv/{key}", timeout=30) as r:
        assert json.load(r)["value"] == "http"


def test_a_thousand_idle_and_dribbling_connections_per_port_do_not_stop_the_node(
    tmp_path: Path,
) -> None:
    # Timeouts far longer than the attack takes to set up: the connections are held
    # while the well-behaved client is served (checked, not assumed).
    with node_process(tmp_path, frame_timeout=120.0) as (client_port, http):
        # Binary: every connection says Hello (a connection without one is closed after
        # the handshake timeout); half then dribble a frame header, half stay idle.
        binary = attack(client_port, 1000, b"\x00", hello=True)
        web = attack(http, 1000, b"GET /v1/status HTTP/1.1\r\n")
        try:
            for round_ in range(3):
                dribble(web, b"X")
                dribble(binary, b"\x00" if round_ < 2 else b"")
                serve_others(client_port, http, f"k{round_}")
            held = status(http)
            assert held is not None
            assert held["ports"]["client"]["connections"] >= 1000, held["ports"]
            assert held["ports"]["http"]["connections"] >= 1000, held["ports"]
            assert open_count(binary) == 1000 and open_count(web) == 1000
        finally:
            for s in binary + web:
                s.close()


def test_idle_and_dribbling_connections_are_closed_by_the_timeouts(tmp_path: Path) -> None:
    with node_process(tmp_path, frame_timeout=1.0) as (client_port, http):
        before = status(http)
        assert before is not None
        pre_hello = attack(client_port, 100, HELLO[:3])  # idle, or a Hello never finished
        after_hello = attack(client_port, 100, b"\x00", hello=True)  # a frame never finished
        web = attack(http, 100, b"GET /v1/status HTTP/1.1\r\n")
        try:
            for socks in (pre_hello, after_hello[1::2], web):
                wait_for(lambda s=socks: open_count(s) == 0, 60, "the timeouts")
            assert open_count(after_hello[0::2]) == 50, "an idle client after its Hello stays"
            serve_others(client_port, http, "after")
            after = status(http)
            assert after is not None
            net = after["client_net"]
            old = before["client_net"]
            handshakes = net["handshake_timeouts"] - old["handshake_timeouts"]
            frames = net["frame_timeouts"] - old["frame_timeouts"]
            assert handshakes >= 50 and frames >= 50 and handshakes + frames >= 150, net
        finally:
            for s in pre_hello + after_hello + web:
                s.close()
