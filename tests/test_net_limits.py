"""Port limits over real sockets on 127.0.0.1 (pyxos.net.limits, issue 8 item 2).

A port refuses connections over its cap and counts them while the admitted ones are
served; an unfinished frame that would take the port over its buffered-bytes budget,
or that does not complete within the frame timeout, closes its connection and its
buffer is released at once (asserted on the guard's accounting and the protocol's
own buffer, not on the process's memory). Every wait is on a condition with a
deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import struct

from pyxos.core.messages import Snapshot
from pyxos.net.codec import PROTOCOL_VERSION, FrameDecoder, Hello, encode_hello, encode_message
from pyxos.net.limits import PortGuard, PortLimits
from pyxos.net.link import FramedProtocol, PeerServer
from test_net_link import GOOD_HELLO, HOST, Inbox, accepted, eventually, run, with_server


def hello(node: int) -> bytes:
    """The handshake of peer ``node`` (each connection its own node: a second
    connection from the same node would retire the first)."""
    return encode_hello(Hello(version=PROTOCOL_VERSION, cluster="a", node=node, role="peer"))


def snapshot_frame(size: int) -> bytes:
    """One valid frame of about ``size`` bytes (a snapshot chunk from node 2)."""
    return encode_message(Snapshot(src=2, slot=1, offset=0, data=b"s" * size, total=size))


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    """True once the server has closed the connection (end of stream or a reset)."""
    try:
        return await asyncio.wait_for(reader.read(), timeout) == b""
    except ConnectionResetError:
        return True


def test_connections_over_the_cap_are_closed_and_counted_while_the_others_are_served() -> None:
    async def body(server: PeerServer, inbox: Inbox) -> None:
        first_reader, first = await asyncio.open_connection(HOST, server.port)
        first.write(GOOD_HELLO + accepted(1))
        _, second = await asyncio.open_connection(HOST, server.port)
        await eventually(lambda: len(server.connections) == 2, what="two connections")
        refused = [await asyncio.open_connection(HOST, server.port) for _ in range(3)]
        for reader, _ in refused:
            assert await closed_by_server(reader)
        assert server.counters["connections_refused"] == 3
        assert server.counters["connections_accepted"] == 2
        assert len(server.connections) == 2
        # The admitted connections are served throughout.
        first.write(accepted(2))
        await eventually(lambda: inbox.slots_from(2) == [1, 2], what="both messages")
        # A closed connection makes room for a new one.
        second.close()
        await eventually(lambda: len(server.connections) == 1, what="room for one more")
        third_reader, third = await asyncio.open_connection(HOST, server.port)
        await eventually(lambda: len(server.connections) == 2, what="the new connection")
        assert server.counters["connections_refused"] == 3
        assert not first_reader.at_eof() and not third_reader.at_eof()
        for _, writer in refused:
            writer.close()
        first.close()
        third.close()

    run(lambda: with_server(body, limits=PortLimits(max_connections=2)))


def test_an_unfinished_frame_over_the_port_budget_closes_its_connection_and_frees_it() -> None:
    frame = snapshot_frame(1000)
    half = len(frame) // 2 + 100

    async def body(server: PeerServer, inbox: Inbox) -> None:
        guard = server.guard
        reader_a, a = await asyncio.open_connection(HOST, server.port)
        a.write(GOOD_HELLO + frame[:half])
        await eventually(lambda: guard.buffered == half, what="A's half frame reserved")
        (protocol_a,) = server.connections
        assert protocol_a.buffered == half
        # B's half frame does not fit beside A's: B is closed, A keeps its reservation.
        reader_b, b = await asyncio.open_connection(HOST, server.port)
        await eventually(lambda: len(server.connections) == 2, what="B admitted")
        (protocol_b,) = server.connections - {protocol_a}
        b.write(hello(3) + frame[:half])
        assert await closed_by_server(reader_b)
        assert server.counters["buffer_budget_exceeded"] == 1
        await eventually(lambda: protocol_b.lost_reason is not None or not protocol_b.is_open)
        assert protocol_b.buffered == 0, "a closed connection's buffer is released at once"
        assert guard.buffered == half
        assert guard.peak_buffered <= guard.limits.max_buffered_bytes
        # A completes its frame: delivered, and its bytes go back to the budget.
        a.write(frame[half:])
        await eventually(lambda: len(inbox.messages) == 1, what="A's frame delivered")
        assert guard.buffered == 0 and protocol_a.buffered == 0
        # Now B's frame fits (the budget was only borrowed, never leaked).
        reader_c, c = await asyncio.open_connection(HOST, server.port)
        c.write(hello(4) + frame)
        await eventually(lambda: len(inbox.messages) == 2, what="C's frame delivered")
        # A connection closed by its client mid-frame gives its bytes back too.
        a.write(frame[:half])
        await eventually(lambda: guard.buffered == half, what="A's second half frame")
        a.close()
        await eventually(lambda: guard.buffered == 0, what="A's bytes released on close")
        assert protocol_a.buffered == 0
        assert not reader_c.at_eof()
        b.close()
        c.close()
        del reader_a

    run(lambda: with_server(body, limits=PortLimits(max_buffered_bytes=1000)))


def test_a_frame_past_the_frame_timeout_closes_its_connection_but_slow_traffic_lives() -> None:
    frames = [snapshot_frame(200) for _ in range(12)]

    async def body(server: PeerServer, inbox: Inbox) -> None:
        guard = server.guard
        # An idle connection (handshake done, no frame started) is never timed out.
        idle_reader, idle = await asyncio.open_connection(HOST, server.port)
        idle.write(GOOD_HELLO)
        await eventually(lambda: len(server.connections) == 1, what="the idle connection")
        (idle_protocol,) = server.connections
        # A steady sender always has a frame unfinished, for longer than the timeout in
        # all, but each frame completes within it: every write finishes one frame and
        # starts the next, so the timer must follow frames, not the connection.
        steady_reader, steady = await asyncio.open_connection(HOST, server.port)
        steady.write(hello(3) + frames[0][:100])
        for previous, current in itertools.pairwise(frames):
            await asyncio.sleep(0.05)  # pacing the sender, not waiting for a result
            steady.write(previous[100:] + current[:100])
        steady.write(frames[-1][100:])
        await eventually(lambda: len(inbox.messages) == len(frames), what="every frame")
        # A stalled frame is closed after the timeout, and its bytes released.
        stalled_reader, stalled = await asyncio.open_connection(HOST, server.port)
        stalled.write(hello(4) + frames[0][:100])
        assert await closed_by_server(stalled_reader)
        assert server.counters["frame_timeouts"] == 1
        await eventually(lambda: guard.buffered == 0, what="the stalled frame released")
        # The idle connection, older than the stalled one, is still open; so is the
        # steady one.
        assert idle_protocol in server.connections
        assert not idle_reader.at_eof() and not steady_reader.at_eof()
        for writer in (idle, steady, stalled):
            writer.close()

    # 12 frames 0.05 s apart: 0.6 s with a frame in flight, each for 0.05 s.
    run(lambda: with_server(body, limits=PortLimits(frame_timeout=0.5)))


def test_the_decoder_counts_frames_and_releases_its_buffer() -> None:
    decoder = FrameDecoder()
    frame = snapshot_frame(100)
    assert decoder.feed(frame + frame[:10]) and decoder.frames == 1
    assert decoder.buffered == 10
    decoder.release()
    assert decoder.buffered == 0
    assert len(decoder.feed(frame[:50])) == 0
    assert len(decoder.feed(frame[50:] + frame)) == 2 and decoder.frames == 3
    assert decoder.buffered == 0


def test_a_guard_refuses_over_the_cap_and_never_books_more_than_its_budget() -> None:
    counters: dict[str, int] = {}
    guard = PortGuard(PortLimits(max_connections=1, max_buffered_bytes=10), counters)
    one, two = FramedProtocol(lambda *_: None), FramedProtocol(lambda *_: None)
    assert guard.admit(one) and not guard.admit(two)
    assert counters == {"connections_refused": 1}
    assert guard.take(10) and not guard.take(1)
    guard.give(10)
    assert guard.buffered == 0 and guard.peak_buffered == 10
    guard.closed(one)
    assert guard.admit(two)


def test_a_header_over_the_frame_limit_is_refused_before_anything_is_buffered() -> None:
    async def body(server: PeerServer, inbox: Inbox) -> None:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(GOOD_HELLO + struct.pack(">I", 5000) + b"x" * 3000)
        assert await closed_by_server(reader)
        assert server.counters["oversized_frames"] == 1
        assert server.guard.peak_buffered == 0
        writer.close()

    run(lambda: with_server(body, max_frame_bytes=4096))
