"""Bad input on both ports: a truncated frame, an oversized frame, a frame of another
cluster id and a valid frame of the wrong message type are refused, counted, and the
node keeps serving (over real sockets on loopback)."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

from pyxos.client.aio import AsyncClient
from pyxos.core.ballot import Ballot
from pyxos.core.messages import Commit
from pyxos.net.codec import MAX_FRAME_BYTES, PROTOCOL_VERSION, Hello, encode_hello, encode_message
from test_server_harness import (
    CLUSTER,
    cluster_configs,
    start_nodes,
    stop_nodes,
    wait_for,
    wait_leader,
)


async def _closed_by_peer(port: int, payload: bytes, then_close: bool = False) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    if then_close:
        writer.write_eof()
    try:
        data = await asyncio.wait_for(reader.read(), 5.0)
    finally:
        writer.close()
    return data == b""


def test_both_ports_refuse_bad_frames_and_the_node_keeps_serving(tmp_path: Path) -> None:
    async def main() -> None:
        configs = cluster_configs(tmp_path)
        nodes = await start_nodes(configs)
        try:
            leader = await wait_leader(nodes)
            # Impersonate a follower we stop first: a live one would reconnect and
            # replace our connection (the newest connection from a node wins).
            gone = next(n for n in nodes if n is not leader)
            await gone.shutdown()
            peer_id = gone.config.node_id
            peer_hello = Hello(version=PROTOCOL_VERSION, cluster=CLUSTER, node=peer_id, role="peer")
            client_hello = Hello(version=PROTOCOL_VERSION, cluster=CLUSTER, node=0, role="client")
            foreign = Hello(
                version=PROTOCOL_VERSION, cluster="elsewhere", node=peer_id, role="peer"
            )
            oversized = struct.pack(">I", MAX_FRAME_BYTES + 1) + b"x" * 64
            truncated = struct.pack(">I", 100) + b"only ten b"
            for port, hello in ((leader.peer_port, peer_hello), (leader.client_port, client_hello)):
                before = dict(
                    leader.net_counters if port == leader.peer_port else leader.client_counters
                )
                # Another cluster's handshake.
                assert await _closed_by_peer(port, encode_hello(foreign))
                # An oversized frame after a good handshake.
                assert await _closed_by_peer(port, encode_hello(hello) + oversized)
                # A truncated frame: the peer hangs up mid-frame; nothing is stepped.
                assert await _closed_by_peer(port, encode_hello(hello) + truncated, then_close=True)
                after = leader.net_counters if port == leader.peer_port else leader.client_counters
                assert after["handshake_refused"] > before.get("handshake_refused", 0)
                assert after["oversized_frames"] > before.get("oversized_frames", 0)
            # A well-formed protocol message on the client port is not a client request:
            # ignored and counted, never stepped into the replica.
            _, writer = await asyncio.open_connection("127.0.0.1", leader.client_port)
            writer.write(encode_hello(client_hello) + encode_message(Commit(2, Ballot(99, 2), 0)))
            await writer.drain()
            writer.close()
            # The node still serves, and no bogus ballot reached the replica.
            async with AsyncClient(
                [f"127.0.0.1:{c.client_port}" for c in configs], cluster=CLUSTER
            ) as client:
                await client.put("still", "serving")
                assert await client.get("still") == "serving"
            await wait_for(
                lambda: leader.stats.unexpected_client_messages >= 1,
                5.0,
                "the stray protocol message to be counted",
            )
            assert leader.node is not None
            assert leader.node.replica.acceptor.promised < Ballot(99, 0)
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())
