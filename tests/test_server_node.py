"""The node runtime with raw protocol frames: election, client requests, bad input."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from pyxos.core.messages import ClientReply, ClientRequest
from pyxos.net.codec import PROTOCOL_VERSION, FrameDecoder, Hello, encode_hello, encode_message
from pyxos.server.config import Config
from pyxos.server.node import CLIENT_ID_BASE, NodeServer, NodeStartupError
from pyxos.statemachine.kv import QUERY_OPS, Command, Result, decode_result
from test_server_harness import (
    CLUSTER,
    cluster_configs,
    start_nodes,
    stop_nodes,
    wait_for,
    wait_leader,
)


class RawClient:
    """A minimal binary-protocol client: Hello, then request frames, reply frames back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.replies: list[ClientReply] = []

    @classmethod
    async def connect(cls, port: int, cluster: str = CLUSTER) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        hello = Hello(version=PROTOCOL_VERSION, cluster=cluster, node=0, role="client")
        writer.write(encode_hello(hello))
        return cls(reader, writer)

    async def call(self, cmd: Command, timeout: float = 3.0) -> ClientReply:
        body = msgspec.msgpack.encode(cmd)
        req = ClientRequest(0, cmd.client, cmd.seq, body, cmd.op in QUERY_OPS)
        self.writer.write(encode_message(req))
        await self.writer.drain()
        return await asyncio.wait_for(self._reply(cmd.client, cmd.seq), timeout)

    async def _reply(self, client: int, seq: int) -> ClientReply:
        while True:
            for msg in self.replies:
                if msg.client == client and msg.seq == seq:
                    self.replies.remove(msg)
                    return msg
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("closed")
            self.replies += [m for m in self.decoder.feed(data) if isinstance(m, ClientReply)]

    def close(self) -> None:
        self.writer.close()


def test_single_node_serves_requests(tmp_path: Path) -> None:
    async def main() -> None:
        (config,) = cluster_configs(tmp_path, 1)
        (node,) = await start_nodes([config])
        try:
            await wait_for(lambda: node.is_leader, 3.0, "the single node to lead")
            c = await RawClient.connect(node.client_port)
            reply = await c.call(Command(7, 1, "put", "k", "v"))
            assert reply.ok and reply.src == 1
            assert decode_result(reply.result) == Result(ok=True)
            reply = await c.call(Command(7, 2, "get", "k"))
            assert decode_result(reply.result) == Result(ok=True, value="v")
            # A retry of seq 2 is answered from the session table, not applied again.
            reply = await c.call(Command(7, 2, "get", "k"))
            assert decode_result(reply.result).value == "v"
            assert node.stats.fsyncs >= 1
            c.close()
        finally:
            await stop_nodes([node])

    asyncio.run(main())


@pytest.mark.parametrize("forward", [True, False])
def test_three_nodes_elect_and_a_follower_forwards_or_redirects(
    tmp_path: Path, forward: bool
) -> None:
    async def main() -> None:
        configs = cluster_configs(tmp_path, 3, forward_requests=forward)
        nodes = await start_nodes(configs)
        try:
            leader = await wait_leader(nodes)
            follower = next(n for n in nodes if n is not leader)
            c = await RawClient.connect(follower.client_port)
            reply = await c.call(Command(9, 1, "put", "a", "1"))
            assert reply.ok is forward
            assert reply.src == follower.config.node_id
            assert reply.leader == leader.config.node_id
            c.close()
            c = await RawClient.connect(leader.client_port)
            reply = await c.call(Command(9, 1, "put", "a", "1"))
            assert reply.ok
            await wait_for(
                lambda: all(n.node is not None and n.node.app.get_local("a") == "1" for n in nodes),
                3.0,
                "every replica to apply the put",
            )
            c.close()
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())


def test_garbage_closes_only_that_connection(tmp_path: Path) -> None:
    async def main() -> None:
        (config,) = cluster_configs(tmp_path, 1)
        (node,) = await start_nodes([config])
        try:
            await wait_for(lambda: node.is_leader, 3.0, "the node to lead")
            good = await RawClient.connect(node.client_port)
            reader, writer = await asyncio.open_connection("127.0.0.1", node.client_port)
            writer.write(b"\xff\xff\xff\xffGARBAGE" * 10)
            assert await asyncio.wait_for(reader.read(), 3.0) == b""  # closed by the node
            writer.close()
            # A well-formed Hello of another cluster is refused too.
            bad = await RawClient.connect(node.client_port, cluster="other")
            assert await asyncio.wait_for(bad.reader.read(), 3.0) == b""
            bad.close()
            # Garbage after a good Hello.
            reader, writer = await asyncio.open_connection("127.0.0.1", node.client_port)
            hello = Hello(version=PROTOCOL_VERSION, cluster=CLUSTER, node=0, role="client")
            writer.write(encode_hello(hello) + b"\x00\x00\x00\x03abc")
            assert await asyncio.wait_for(reader.read(), 3.0) == b""
            writer.close()
            # Garbage, and a client's Hello, on the peer port.
            for junk in (b"GET / HTTP/1.1\r\n\r\n", encode_hello(hello)):
                reader, writer = await asyncio.open_connection("127.0.0.1", node.peer_port)
                writer.write(junk)
                assert await asyncio.wait_for(reader.read(), 3.0) == b""
                writer.close()
            reply = await good.call(Command(5, 1, "put", "x", "y"))
            assert reply.ok
            assert (
                node.client_counters["malformed_frames"] + node.client_counters["oversized_frames"]
                >= 2
            )
            assert node.client_counters["handshake_refused"] >= 1
            good.close()
        finally:
            await stop_nodes([node])

    asyncio.run(main())


def test_restart_recovers_promise_and_rejoins(tmp_path: Path) -> None:
    async def main() -> None:
        configs = cluster_configs(tmp_path, 3)
        nodes = await start_nodes(configs)
        try:
            leader = await wait_leader(nodes)
            c = await RawClient.connect(leader.client_port)
            for seq in range(1, 6):
                assert (await c.call(Command(3, seq, "put", f"k{seq}", str(seq)))).ok
            c.close()
            victim = next(n for n in nodes if n is not leader)
            i = nodes.index(victim)
            promised = victim.node.replica.acceptor.promised if victim.node else None
            await victim.shutdown()
            nodes[i] = NodeServer(configs[i])
            await nodes[i].startup()
            assert nodes[i].node is not None
            assert nodes[i].node.replica.acceptor.promised == promised
            await wait_for(
                lambda: nodes[i].node is not None and nodes[i].node.app.get_local("k5") == "5",
                5.0,
                "the restarted node to catch up",
            )
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())


def test_client_ids_never_collide_with_node_ids(tmp_path: Path) -> None:
    assert CLIENT_ID_BASE >= 1_000_000
    (config,) = cluster_configs(tmp_path, 1)
    server = NodeServer(config)
    assert server.attach_sink(lambda reply: None) >= CLIENT_ID_BASE
    with pytest.raises(AssertionError, match="not started"):
        _ = server.client_port


@pytest.mark.parametrize("damage", ["corrupt", "wiped"])
def test_a_corrupt_or_lost_log_rebuilds_from_peers(tmp_path: Path, damage: str) -> None:
    async def main() -> None:
        configs = cluster_configs(tmp_path, 3)
        nodes = await start_nodes(configs)
        try:
            leader = await wait_leader(nodes)
            c = await RawClient.connect(leader.client_port)
            for seq in range(1, 6):
                assert (await c.call(Command(1, seq, "put", f"k{seq}", str(seq)))).ok
            victim = next(n for n in nodes if n is not leader)
            i = nodes.index(victim)
            await victim.shutdown()
            segments = sorted(configs[i].data_dir.glob("wal-*.log"))
            if damage == "corrupt":
                data = bytearray(segments[0].read_bytes())
                data[30] ^= 0xFF  # damage an early record; intact ones follow
                segments[0].write_bytes(bytes(data))
            else:
                for segment in segments:
                    segment.unlink()
            nodes[i] = NodeServer(configs[i])
            await nodes[i].startup()
            back = nodes[i]
            assert back.node is not None
            assert back.node.replica.rebuilding  # it does not vote yet
            assert back.status()["rebuilding"] is True
            if damage == "corrupt":
                assert (configs[i].data_dir / "quarantine-1").is_dir()
            await wait_for(
                lambda: (
                    back.node is not None
                    and not back.node.replica.rebuilding
                    and back.node.app.get_local("k5") == "5"
                ),
                5.0,
                "the rebuild to finish and catch up",
            )
            assert (await c.call(Command(1, 6, "put", "k6", "6"))).ok
            c.close()
            # The finished rebuild is durable: a restart votes at once.
            await back.shutdown()
            nodes[i] = NodeServer(configs[i])
            await nodes[i].startup()
            assert nodes[i].node is not None and not nodes[i].node.replica.rebuilding
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())


def test_a_data_dir_of_another_node_refuses_to_start(tmp_path: Path) -> None:
    async def main() -> None:
        first, second = cluster_configs(tmp_path, 2)
        node = NodeServer(first, initialize=True)
        await node.startup()
        await node.shutdown()
        wrong = Config.from_mapping(
            {
                "cluster_id": second.cluster_id,
                "node_id": second.node_id,
                "peers": {str(k): f"{h}:{p}" for k, (h, p) in second.peers.items()},
                "client_port": second.client_port,
                "data_dir": str(first.data_dir),
            }
        )
        with pytest.raises(NodeStartupError, match="belongs to node 1"):
            await NodeServer(wrong).startup()

    asyncio.run(main())


def test_no_marker_without_init_rebuilds_instead_of_voting(tmp_path: Path) -> None:
    async def main() -> None:
        config, _, _ = cluster_configs(tmp_path, 3)
        wiped = NodeServer(config)
        await wiped.startup()
        try:
            # Its peers are down: it cannot finish the rebuild, so it must not vote.
            assert wiped.status()["rebuilding"] is True
            assert (config.data_dir / "pyxos.id").exists()
        finally:
            await wiped.shutdown()
        again = NodeServer(config)
        await again.startup()
        try:
            assert again.status()["rebuilding"] is True, "the rebuild survives restarts"
        finally:
            await again.shutdown()

    asyncio.run(main())


def test_init_starts_a_new_node_voting(tmp_path: Path) -> None:
    async def main() -> None:
        (config,) = cluster_configs(tmp_path, 1)
        node = NodeServer(config, initialize=True)
        await node.startup()
        try:
            assert node.status()["rebuilding"] is False
        finally:
            await node.shutdown()
        assert (config.data_dir / "pyxos.id").exists()

    asyncio.run(main())


def test_init_on_an_empty_directory_asks_the_peers_before_voting(tmp_path: Path) -> None:
    async def main() -> None:
        config, _, _ = cluster_configs(tmp_path, 3)
        node = NodeServer(config, initialize=True)
        await node.startup()
        try:
            # Its peers are down: it cannot know whether the cluster is new.
            status = node.status()
            assert status["state"] == "bootstrapping" and status["rebuilding"] is True
            assert status["waiting_for_peers"] == [2, 3]
        finally:
            await node.shutdown()
        for initialize in (False, True):  # the flag no longer matters: it has run before
            again = NodeServer(config, initialize=initialize)
            await again.startup()
            try:
                assert again.status()["state"] == "bootstrapping"
            finally:
                await again.shutdown()

    asyncio.run(main())


def test_init_on_a_directory_with_data_but_no_marker_rebuilds(tmp_path: Path) -> None:
    async def main() -> None:
        config, _, _ = cluster_configs(tmp_path, 3)
        node = NodeServer(config, initialize=True)
        await node.startup()
        await node.shutdown()
        (config.data_dir / "pyxos.id").unlink()
        again = NodeServer(config, initialize=True)
        await again.startup()
        try:
            assert again.status()["state"] == "rebuilding"
        finally:
            await again.shutdown()

    asyncio.run(main())
