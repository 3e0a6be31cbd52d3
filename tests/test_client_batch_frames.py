"""Batched client frames (client protocol 2, ``net.codec``) over real sockets: a client
of protocol 2 gets the replies of one pass in one ``ClientReplies`` frame, a client of
protocol 1 gets one ``ClientReply`` frame per reply even when a batch of its requests is
answered together, and a client of an unknown newer protocol is refused at the door."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec

from pyxos.client import ClientPool
from pyxos.client.mux import BATCH_BYTES
from pyxos.core.messages import ClientReplies, ClientReply, ClientRequest, ClientRequests, Message
from pyxos.net.codec import (
    CLIENT_PROTOCOL_VERSION,
    FrameDecoder,
    Hello,
    encode_frames,
    encode_hello,
    encode_message,
)
from pyxos.statemachine.kv import Command
from test_server_harness import CLUSTER, cluster_configs, start_nodes, stop_nodes, wait_leader

enc = msgspec.msgpack.Encoder()
COMMANDS = 20


def puts(base: int) -> list[ClientRequest]:
    """One put from each of ``COMMANDS`` clients."""
    return [
        ClientRequest(0, base + i, 1, enc.encode(Command(base + i, 1, "put", f"k{i}", "v")))
        for i in range(COMMANDS)
    ]


async def exchange(port: int, version: int, payload: bytes) -> list[Message]:
    """Say ``Hello`` with ``version``, send ``payload``, and collect what comes back
    until ``COMMANDS`` replies arrived (or the node hung up)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    hello = Hello(version=version, cluster=CLUSTER, node=0, role="client")
    writer.write(encode_hello(hello) + payload)
    decoder = FrameDecoder()
    received: list[Message] = []
    replies = 0
    try:
        while replies < COMMANDS:
            data = await asyncio.wait_for(reader.read(65536), 10.0)
            if not data:
                break
            for msg in decoder.feed(data):
                received.append(msg)
                replies += len(msg.replies) if isinstance(msg, ClientReplies) else 1
    finally:
        writer.close()
    return received


def test_replies_are_batched_for_protocol_2_and_one_by_one_for_protocol_1(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        configs = cluster_configs(tmp_path)
        nodes = await start_nodes(configs)
        try:
            leader = await wait_leader(nodes)
            assert leader.node is not None and leader.node.batch_replies  # not traced
            # Protocol 2: one frame of requests, answered with one frame of replies
            # (they all arrive in one chunk, so they share one slot).
            got = await exchange(
                leader.client_port,
                CLIENT_PROTOCOL_VERSION,
                encode_message(ClientRequests(0, puts(100))),
            )
            assert [type(m) for m in got] == [ClientReplies]
            batch = got[0]
            assert isinstance(batch, ClientReplies)
            assert sorted(r.client for r in batch.replies) == list(range(100, 100 + COMMANDS))
            assert all(r.ok and r.error is None for r in batch.replies)
            # Protocol 1: the same load as single frames in one write; the replies come
            # one frame each, never a ClientReplies (which such a client cannot read).
            got = await exchange(leader.client_port, 1, encode_frames(puts(200)))
            assert len(got) == COMMANDS
            assert all(type(m) is ClientReply and m.ok for m in got)
            assert sorted(m.client for m in got) == list(range(200, 200 + COMMANDS))  # type: ignore[union-attr]
            # A batched frame from a client of protocol 1 is served too (the node reads
            # every frame type from every client); its replies still go one by one.
            got = await exchange(
                leader.client_port, 1, encode_message(ClientRequests(0, puts(300)))
            )
            assert len(got) == COMMANDS and all(type(m) is ClientReply for m in got)
            # A newer protocol than the node knows: refused at the handshake.
            refused = leader.client_counters.get("handshake_refused", 0)
            got = await exchange(
                leader.client_port, CLIENT_PROTOCOL_VERSION + 1, encode_frames(puts(400))
            )
            assert got == []
            assert leader.client_counters["handshake_refused"] == refused + 1
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())


def test_a_pool_batches_small_commands_and_sends_large_ones_alone(tmp_path: Path) -> None:
    """Sessions of one pool connection that issue commands in the same pass share
    frames; a command over ``BATCH_BYTES`` goes in a frame of its own, and a batch
    is cut before it grows past ``BATCH_BYTES``: every command completes."""

    async def main() -> None:
        configs = cluster_configs(tmp_path)
        nodes = await start_nodes(configs)
        try:
            leader = await wait_leader(nodes)
            mapping = {c.node_id: f"127.0.0.1:{c.client_port}" for c in configs}
            async with ClientPool(mapping, cluster=CLUSTER, connections=1) as pool:
                sessions = [pool.session() for _ in range(60)]
                for _ in range(2):  # finds the leader, then opens the link to it
                    await sessions[0].put("warm", "up")
                assert pool.leader == leader.config.node_id
                before = leader.client_counters["frames_received"]
                large = "L" * (BATCH_BYTES + 1)
                medium = "m" * (BATCH_BYTES // 8)  # eight of them fill a batch

                def value(i: int) -> str:
                    return large if i % 10 == 0 else medium if i % 10 == 1 else f"v{i}"

                await asyncio.gather(*(s.put(f"k{i}", value(i)) for i, s in enumerate(sessions)))
                frames = leader.client_counters["frames_received"] - before
                for i, s in enumerate(sessions):
                    assert await s.get(f"k{i}") == value(i)
                # 60 commands: 6 large ones alone, the others in a few batches.
                assert 6 < frames < 20, frames
                assert all(s.retries == 0 for s in sessions)
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())
