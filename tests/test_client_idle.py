"""Idle binary client connections: closed after ``client_idle_timeout``, and the
clients that own them reconnect without noticing.

Real sockets on 127.0.0.1 against an in-process one-node cluster (it leads alone).
Before the idle timeout, a connection that said ``Hello`` and then nothing was kept
for ever, so ``max_connections`` (1,024) of them locked every new client out of the
client port. Every wait is on a condition with a deadline; nothing asserts how long
anything took.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pyxos.client import AsyncClient, ClientPool, NodeUnavailable
from pyxos.net.codec import PROTOCOL_VERSION, Hello, encode_hello
from pyxos.net.limits import DEFAULT_MAX_CONNECTIONS
from pyxos.net.link import new_counters, serve_peers
from pyxos.server.config import DEFAULT_CLIENT_IDLE_TIMEOUT, Config, ConfigError
from test_server_harness import CLUSTER, cluster_configs, start_nodes, stop_nodes, wait_for

HOST = "127.0.0.1"
CLIENT_HELLO = encode_hello(Hello(version=PROTOCOL_VERSION, cluster=CLUSTER, node=0, role="client"))


async def closed_by_node(reader: asyncio.StreamReader, timeout: float) -> bool:
    """True once the node has closed the connection (end of stream or a reset; what it
    wrote first, a refusal's notice, is read and dropped); False if it is still open
    after ``timeout`` seconds."""
    try:
        await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def test_more_than_the_cap_of_idle_hello_connections_are_closed_and_clients_get_back_in(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        (config,) = cluster_configs(tmp_path, n=1, client_idle_timeout=1.0)
        assert config.max_connections == DEFAULT_MAX_CONNECTIONS == 1024
        (node,) = await start_nodes([config])
        address = f"{HOST}:{node.client_port}"
        try:
            await wait_for(lambda: node.is_leader, 5.0, "the node to lead")
            async with (
                AsyncClient([address], cluster=CLUSTER, timeout=10.0) as client,
                ClientPool([address], cluster=CLUSTER, connections=2, timeout=10.0) as pool,
            ):
                session = pool.session()
                await client.put("k", "1")
                await session.put("p", "1")
                # One more than the cap says Hello, then nothing: the port is full.
                idle = []
                for _ in range(config.max_connections + 1):
                    reader, writer = await asyncio.open_connection(HOST, node.client_port)
                    writer.write(CLIENT_HELLO)
                    idle.append((reader, writer))
                try:
                    for reader, _ in idle:
                        assert await closed_by_node(reader, 60.0), "an idle connection was kept"
                    counters = node.client_counters
                    # Each was refused at the cap or closed for idleness; nothing else
                    # closes a handshaken connection that sends nothing.
                    assert counters["idle_timeouts"] + counters["connections_refused"] >= len(idle)
                    assert counters["idle_timeouts"] >= 1
                    # The clients' own connections went idle too and were closed ...
                    await wait_for(lambda: not client._conns, 30.0, "the client's closed")
                    await wait_for(lambda: pool.open_connections == 0, 30.0, "the pool's closed")
                    # ... and they reconnect on their next command: no error, one seq each.
                    seq, session_seq = client.seq, session.seq
                    assert await client.cas("k", "1", "2")
                    assert await client.get("k") == "2"
                    assert await session.cas("p", "1", "2")
                    assert (client.seq, session.seq) == (seq + 2, session_seq + 1)
                    # A new client gets in.
                    async with AsyncClient([address], cluster=CLUSTER, timeout=10.0) as new:
                        assert await new.get("p") == "2"
                finally:
                    for _, writer in idle:
                        writer.close()
        finally:
            await stop_nodes([node])

    asyncio.run(asyncio.wait_for(main(), 120.0))


def test_a_client_that_keeps_talking_is_not_idle(tmp_path: Path) -> None:
    async def main() -> None:
        (config,) = cluster_configs(tmp_path, n=1, client_idle_timeout=3.0)
        (node,) = await start_nodes([config])
        try:
            await wait_for(lambda: node.is_leader, 5.0, "the node to lead")
            async with AsyncClient(
                [f"{HOST}:{node.client_port}"], cluster=CLUSTER, timeout=10.0
            ) as client:
                await client.put("k", "0")
                (conn,) = client._conns.values()
                # An idle connection beside it is closed while this one keeps talking.
                reader, writer = await asyncio.open_connection(HOST, node.client_port)
                writer.write(CLIENT_HELLO)
                closed = asyncio.ensure_future(closed_by_node(reader, 60.0))
                i = 0
                while not closed.done():
                    i += 1
                    await client.put("k", str(i))
                    await asyncio.sleep(0.05)
                assert closed.result()
                writer.close()
                assert client._conns.get(0) is conn and conn.is_open
                assert node.client_counters["idle_timeouts"] == 1
        finally:
            await stop_nodes([node])

    asyncio.run(asyncio.wait_for(main(), 60.0))


def test_hello_d_peer_connections_are_bounded_by_the_members_not_by_an_idle_timeout() -> None:
    """The peer port has no idle timeout (a follower's link to another follower may
    carry nothing for a long time): a handshaken peer connection must name a member,
    and a member's new connection replaces its previous one, so at most one per member
    stays open, however many strangers say Hello and idle."""

    async def main() -> None:
        counters = new_counters()
        server = await serve_peers(
            HOST, 0, CLUSTER, 1, lambda _node, _msgs: None, known_nodes=(1, 2, 3), counters=counters
        )
        socks = []
        try:
            for i in range(60):
                node = 2 + i % 3
                hello = Hello(version=PROTOCOL_VERSION, cluster=CLUSTER, node=node, role="peer")
                reader, writer = await asyncio.open_connection(HOST, server.port)
                writer.write(encode_hello(hello))
                socks.append((reader, writer))
            # Node 4 is no member: refused. Nodes 2 and 3: each connection replaces the last.
            await wait_for(
                lambda: (
                    [counters[k] for k in ("handshake_refused", "connections_replaced")] == [20, 38]
                ),
                10.0,
                "every Hello handled",
            )
            await wait_for(lambda: len(server.connections) == 2, 10.0, "one per member")
            await wait_for(
                lambda: sum(r.at_eof() or r.exception() is not None for r, _ in socks) == 58,
                10.0,
                "every other connection closed",
            )
        finally:
            for _, writer in socks:
                writer.close()
            server.close()
            await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 60.0))


def test_the_idle_timeout_has_a_default_loads_from_toml_and_is_validated(tmp_path: Path) -> None:
    base = (
        'cluster_id = "c1"\nnode_id = 1\nclient_port = 7101\ndata_dir = "/tmp/x"\n'
        '[peers]\n1 = "127.0.0.1:7001"\n'
    )
    path = tmp_path / "node.toml"
    path.write_text(base)
    assert Config.load(path).client_idle_timeout == DEFAULT_CLIENT_IDLE_TIMEOUT == 300.0
    path.write_text("client_idle_timeout = 30\n" + base)
    assert Config.load(path).client_idle_timeout == 30.0
    for line, message in (
        ("client_idle_timeout = 0", "client_idle_timeout: 0.0 must be a finite number > 0"),
        ("client_idle_timeout = inf", "client_idle_timeout: inf must be a finite number > 0"),
        ('client_idle_timeout = "1"', "client_idle_timeout: expected seconds"),
    ):
        path.write_text(line + "\n" + base)
        with pytest.raises(ConfigError, match=message):
            Config.load(path)


def test_a_client_refused_at_the_connection_cap_is_told_why(tmp_path: Path) -> None:
    """At the cap a new connection is refused, not let in by evicting another: it gets a
    notice saying why, and a client that may use no other node raises it at once (the
    command had no effect: the node read nothing from that connection)."""

    async def main() -> None:
        (config,) = cluster_configs(tmp_path, n=1, max_connections=2)
        (node,) = await start_nodes([config])
        address = [f"{HOST}:{node.client_port}"]
        try:
            await wait_for(lambda: node.is_leader, 5.0, "the node to lead")
            held = []
            for _ in range(2):
                reader, writer = await asyncio.open_connection(HOST, node.client_port)
                writer.write(CLIENT_HELLO)
                held.append((reader, writer))
            await wait_for(
                lambda: node.status()["ports"]["client"]["connections"] == 2, 10.0, "a full port"
            )
            reason = "node 1 refused the connection: its client port has 2 connections open"
            async with (
                AsyncClient(address, cluster=CLUSTER, timeout=5.0) as client,
                ClientPool(address, cluster=CLUSTER, timeout=5.0) as pool,
            ):
                session = pool.session()
                for put in (client.put, session.put):
                    with pytest.raises(NodeUnavailable, match=reason):
                        await put("k", "1")
                assert node.client_counters["connections_refused"] >= 2
                for _, writer in held:
                    writer.close()
                await wait_for(
                    lambda: node.status()["ports"]["client"]["connections"] == 0, 10.0, "room"
                )
                await client.put("k", "2")
                assert await session.get("k") == "2"
        finally:
            await stop_nodes([node])

    asyncio.run(asyncio.wait_for(main(), 60.0))
