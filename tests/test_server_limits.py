"""A node under the memory attack of issue 8, item 2: its ports' limits hold and it serves.

Real sockets on 127.0.0.1 against an in-process one-node cluster (it leads alone). The
attack connections send a valid client ``Hello`` and then frames they never finish;
the node must close what exceeds the per-port connection cap, the buffered-bytes
budget or the frame timeout, count it, release the bytes at once (asserted on the
ports' accounting and on the closed protocols' own buffers, not on process memory),
and serve a legitimate client throughout. The HTTP port gets the same treatment.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from pyxos.client.aio import AsyncClient
from pyxos.net.codec import HEADER_BYTES, MAX_FRAME_BYTES, PROTOCOL_VERSION, Hello, encode_hello
from pyxos.server.config import (
    DEFAULT_CLIENT_MAX_FRAME_BYTES,
    MIN_CLIENT_FRAME_BYTES,
    Config,
    ConfigError,
)
from pyxos.server.node import NodeServer
from pyxos.statemachine.kv import MAX_VALUE_BYTES
from test_server_harness import CLUSTER, cluster_configs, start_nodes, stop_nodes, wait_for

CLIENT_HELLO = encode_hello(Hello(version=PROTOCOL_VERSION, cluster=CLUSTER, node=0, role="client"))
HOST = "127.0.0.1"


async def closed_by_node(reader: asyncio.StreamReader, timeout: float = 10.0) -> bool:
    """True once the node has closed the connection (end of stream or a reset); what it
    wrote first (the notice of a connection refused at the cap) is read and dropped."""
    with contextlib.suppress(ConnectionResetError):
        await asyncio.wait_for(reader.read(), timeout)
    return True


async def still_open(reader: asyncio.StreamReader) -> bool:
    """Whether the node has not closed the connection (nothing is pending on it)."""
    return not reader.at_eof() and reader.exception() is None


def one_node(
    tmp_path: Path,
    body: Callable[[NodeServer, AsyncClient], Awaitable[None]],
    **config: Any,
) -> None:
    async def main() -> None:
        configs = cluster_configs(tmp_path, n=1, **config)
        (node,) = await start_nodes(configs)
        try:
            await wait_for(lambda: node.is_leader, 5.0, "the node to lead")
            async with AsyncClient(
                [f"{HOST}:{node.client_port}"], cluster=CLUSTER, timeout=10.0
            ) as client:
                await client.put("before", "1")  # the legitimate client's connection
                await body(node, client)
        finally:
            await stop_nodes([node])

    asyncio.run(asyncio.wait_for(main(), 60.0))


async def serves(client: AsyncClient, key: str) -> None:
    """The legitimate client writes and reads back."""
    await client.put(key, key)
    assert await client.get(key) == key


def test_client_connections_over_the_cap_are_refused_while_a_client_is_served(
    tmp_path: Path,
) -> None:
    async def body(node: NodeServer, client: AsyncClient) -> None:
        # The legitimate client holds one of the 4 places; 3 more fit, then no more.
        held = [await asyncio.open_connection(HOST, node.client_port) for _ in range(3)]
        refused = [await asyncio.open_connection(HOST, node.client_port) for _ in range(5)]
        for reader, _ in refused:
            assert await closed_by_node(reader), "a connection over the cap was kept"
        assert node.client_counters.get("connections_refused") == 5
        for reader, _ in held:
            assert await still_open(reader)
        await serves(client, "during")
        assert node.status()["ports"]["client"]["connections"] == 4
        # Closing the held ones makes room: a second client connects and is served.
        for _, writer in held + refused:
            writer.close()
        await wait_for(
            lambda: node.status()["ports"]["client"]["connections"] == 1, 5.0, "room again"
        )
        async with AsyncClient(
            [f"{HOST}:{node.client_port}"], cluster=CLUSTER, timeout=10.0
        ) as second:
            await serves(second, "second")

    one_node(tmp_path, body, max_connections=4)


def test_unfinished_frames_over_the_budget_are_closed_freed_and_the_node_serves(
    tmp_path: Path,
) -> None:
    budget = MAX_FRAME_BYTES + HEADER_BYTES  # the smallest budget the config allows
    frame = 4_000_000  # under the client frame limit, so only the budget can stop it
    sent = frame - 100_000
    attackers = 6  # 6 x 3.9 MB > the 16 MiB budget

    async def body(node: NodeServer, client: AsyncClient) -> None:
        guard = node.client_server.guard if node.client_server is not None else None
        assert guard is not None
        header = struct.pack(">I", frame)
        connections = []
        for _ in range(attackers):
            reader, writer = await asyncio.open_connection(HOST, node.client_port)
            writer.write(CLIENT_HELLO + header)
            connections.append((reader, writer))
        await wait_for(lambda: guard.buffered == attackers * HEADER_BYTES, 5.0, "every header held")
        protocols = list(guard.connections)  # kept, to look at their buffers after close
        attack = [p for p in protocols if p.buffered == HEADER_BYTES]
        assert len(attack) == attackers
        for _, writer in connections:
            writer.write(b"\x91" * sent)

        def settled() -> bool:  # every attacker holds all it sent, or was closed
            return all(not p.is_open or p.buffered == HEADER_BYTES + sent for p in attack)

        await wait_for(
            lambda: node.client_counters.get("buffer_budget_exceeded", 0) >= 2 and settled(),
            20.0,
            "the attackers over the budget to be closed",
        )
        closed = [p for p in attack if not p.is_open]
        assert len(closed) == node.client_counters["buffer_budget_exceeded"]
        assert all(p.buffered == 0 for p in closed), "a closed connection kept its buffer"
        survivors = [p for p in attack if p.is_open]
        assert 1 <= len(survivors) <= budget // (HEADER_BYTES + sent)
        assert guard.buffered == len(survivors) * (HEADER_BYTES + sent)
        assert guard.peak_buffered <= budget
        await serves(client, "during")
        # The attackers hang up: every byte is released at once, nothing waits for gc.
        for _, writer in connections:
            writer.close()
        await wait_for(lambda: guard.buffered == 0, 5.0, "every buffer released")
        await wait_for(lambda: len(guard.connections) == 1, 5.0, "only the client left")
        assert all(p.buffered == 0 for p in protocols)
        await serves(client, "after")

    one_node(tmp_path, body, max_buffered_bytes=budget)


def test_a_client_frame_over_its_limit_is_refused_on_the_header(tmp_path: Path) -> None:
    async def body(node: NodeServer, client: AsyncClient) -> None:
        reader, writer = await asyncio.open_connection(HOST, node.client_port)
        # The attack of the issue: a 15 MB frame, refused before any of it is kept.
        writer.write(CLIENT_HELLO + struct.pack(">I", 15_000_000) + b"\x91" * 1_000_000)
        assert await closed_by_node(reader)
        assert node.client_counters.get("oversized_frames") == 1
        assert node.status()["ports"]["client"]["peak_buffered_bytes"] == 0
        writer.close()
        # The largest legitimate request still fits the smallest allowed limit.
        await client.cas("big", None, "v" * MAX_VALUE_BYTES)
        assert await client.cas("big", "v" * MAX_VALUE_BYTES, "w" * MAX_VALUE_BYTES)
        assert await client.get("big") == "w" * MAX_VALUE_BYTES

    one_node(tmp_path, body, client_max_frame_bytes=MIN_CLIENT_FRAME_BYTES)


def test_a_frame_that_does_not_complete_in_time_is_closed_but_clients_live(
    tmp_path: Path,
) -> None:
    async def body(node: NodeServer, client: AsyncClient) -> None:
        # An idle connection past its handshake is not timed out: it has no frame.
        idle_reader, idle = await asyncio.open_connection(HOST, node.client_port)
        idle.write(CLIENT_HELLO)
        stalled_reader, stalled = await asyncio.open_connection(HOST, node.client_port)
        stalled.write(CLIENT_HELLO + struct.pack(">I", 1000) + b"\x91" * 500)
        assert await closed_by_node(stalled_reader)
        assert node.client_counters.get("frame_timeouts") == 1
        ports = node.status()["ports"]["client"]
        assert ports["buffered_bytes"] == 0
        # The legitimate client, connected for longer than the timeout, still works,
        # and so does the idle connection, older than the stalled one.
        await serves(client, "after-timeout")
        assert await still_open(idle_reader)
        assert ports["connections"] == 2  # the client and the idle connection
        idle.close()
        stalled.close()

    one_node(tmp_path, body, frame_timeout=0.5)


def http_request(method: str, path: str, length: int, body: bytes = b"") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {length}\r\n"
        "Content-Type: application/json\r\n\r\n"
    ).encode() + body


async def http_get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
    try:
        return await asyncio.wait_for(reader.read(), 10.0)
    finally:
        writer.close()


def test_http_bodies_are_budgeted_and_timed_out(tmp_path: Path) -> None:
    budget = MAX_FRAME_BYTES + HEADER_BYTES
    cas_body = 2 * 1024 * 1024  # the largest body the HTTP API reads (a cas)

    async def body(node: NodeServer, client: AsyncClient) -> None:
        assert node.http is not None
        port, guard = node.http.port, node.http.guard
        # Bodies that never finish: 9 x 1.9 MB go over the 16 MiB budget; the ones
        # that fit are answered 408 after the frame timeout.
        slow = []
        for _ in range(9):
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(http_request("POST", "/v1/kv/k/cas", cas_body, b" " * 1_900_000))
            slow.append((reader, writer))
        answers = [await asyncio.wait_for(reader.read(), 20.0) for reader, _ in slow]
        refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
        timed_out = [a for a in answers if a.startswith(b"HTTP/1.1 408")]
        assert refused and timed_out, answers
        assert len(refused) + len(timed_out) == 9, answers
        assert node.http.counters["buffer_budget_exceeded"] == len(refused)
        assert node.http.counters["frame_timeouts"] == len(timed_out)
        assert guard.peak_buffered <= budget
        await wait_for(lambda: guard.buffered == 0, 5.0, "every body released")
        for _, writer in slow:
            writer.close()
        await wait_for(lambda: not guard.connections, 5.0, "the slow connections gone")
        assert b'"ok": true' in await http_get(port, "/healthz")
        await serves(client, "binary-still")

    one_node(tmp_path, body, http_port=0, max_buffered_bytes=budget, frame_timeout=4.0)


def test_the_http_port_caps_connections(tmp_path: Path) -> None:
    async def body(node: NodeServer, client: AsyncClient) -> None:
        assert node.http is not None
        port, guard = node.http.port, node.http.guard
        held = [await asyncio.open_connection(HOST, port) for _ in range(3)]
        await wait_for(lambda: len(guard.connections) == 3, 5.0, "three held")
        refused_reader, refused_writer = await asyncio.open_connection(HOST, port)
        assert await closed_by_node(refused_reader)
        assert node.http.counters["connections_refused"] == 1
        held[0][1].close()
        await wait_for(lambda: len(guard.connections) == 2, 5.0, "room for one")
        assert b'"ok": true' in await http_get(port, "/healthz")
        await serves(client, "binary-still")
        # Visible to monitoring: the refusal, and each port's open connections.
        metrics = (await http_get(port, "/metrics")).decode()
        assert 'pyxos_http_net_total{event="connections_refused"} 1.0' in metrics
        assert 'pyxos_client_net_total{event="connections_refused"} 0.0' in metrics
        assert 'pyxos_open_connections{port="http"} 3.0' in metrics  # 2 held + this one
        assert 'pyxos_buffered_bytes{port="client"} 0.0' in metrics
        for _, writer in [*held[1:], (refused_reader, refused_writer)]:
            writer.close()

    one_node(tmp_path, body, http_port=0, max_connections=3)


def test_the_limits_have_defaults_load_from_toml_and_are_validated(tmp_path: Path) -> None:
    base = (
        'cluster_id = "c1"\nnode_id = 1\nclient_port = 7101\ndata_dir = "/tmp/x"\n'
        '[peers]\n1 = "127.0.0.1:7001"\n'
    )
    path = tmp_path / "node.toml"
    path.write_text(base)
    c = Config.load(path)
    assert (c.max_connections, c.max_buffered_bytes, c.frame_timeout) == (
        1024,
        64 * 1024 * 1024,
        10.0,
    )
    assert c.client_max_frame_bytes == DEFAULT_CLIENT_MAX_FRAME_BYTES == 4 * 1024 * 1024
    path.write_text(
        "max_connections = 10\nmax_buffered_bytes = 20000000\nframe_timeout = 2\n"
        f"client_max_frame_bytes = {MIN_CLIENT_FRAME_BYTES}\n" + base
    )
    c = Config.load(path)
    assert (c.max_connections, c.max_buffered_bytes, c.frame_timeout) == (10, 20_000_000, 2.0)
    for line, message in (
        ("max_connections = 0", "max_connections: 0 must be >= 1"),
        ("max_connections = 1.5", "max_connections: expected int"),
        ("frame_timeout = 0", "frame_timeout: 0.0 must be a finite number > 0"),
        ("frame_timeout = inf", "frame_timeout: inf must be a finite number > 0"),
        ("frame_timeout = nan", "frame_timeout: nan must be a finite number > 0"),
        ('frame_timeout = "1"', "frame_timeout: expected seconds"),
        ("max_buffered_bytes = 1000", "one peer frame of the largest size must fit"),
        ("client_max_frame_bytes = 1000", "a cas of two 1 MiB values, must fit"),
        (f"client_max_frame_bytes = {MAX_FRAME_BYTES + 1}", "client_max_frame_bytes"),
    ):
        path.write_text(line + "\n" + base)
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            Config.load(path)


def test_the_file_limit_is_raised_for_the_connection_caps_or_a_warning_says_so() -> None:
    script = (
        "import logging, resource, sys\n"
        "logging.basicConfig(level='WARNING')\n"
        "from pyxos.server.config import Config\n"
        "from pyxos.server.disk import ensure_file_limit\n"
        "soft, hard = int(sys.argv[1]), int(sys.argv[2])\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))\n"
        "config = Config.from_mapping({'cluster_id': 'c', 'node_id': 1, 'client_port': 1,\n"
        "    'data_dir': '/tmp/x', 'peers': {'1': '127.0.0.1:2'}, 'max_connections': 1000})\n"
        "print(ensure_file_limit(config), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )

    def run_with(soft: int, hard: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", script, str(soft), str(hard)],
            capture_output=True,
            text=True,
            timeout=30,
        )

    needed = 3 * 1000 + 256
    raised = run_with(512, needed + 100)
    assert raised.stdout.split() == [str(needed), str(needed)], raised.stderr
    assert "limit on open files" not in raised.stderr
    capped = run_with(512, 1024)
    assert capped.stdout.split() == ["1024", "1024"], capped.stderr
    assert "the limit on open files is 1024, below the 3256" in capped.stderr
