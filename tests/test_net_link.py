"""asyncio links over real sockets on 127.0.0.1 (pyxos.net.link).

Every wait is on a condition with a deadline; ports come from binding port 0.
"""

import asyncio
import logging
import random
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from pyxos.core.ballot import Ballot
from pyxos.core.messages import Accepted, Commit, Message, Snapshot
from pyxos.net.codec import PROTOCOL_VERSION, Hello, encode_frames, encode_hello, encode_message
from pyxos.net.link import (
    COUNTER_NAMES,
    FramedProtocol,
    PeerLinks,
    PeerServer,
    backoff_delay,
    flush_pending,
    new_counters,
    serve_peers,
)

HOST = "127.0.0.1"
B = Ballot(1, 1)
GOOD_HELLO = encode_hello(Hello(version=1, cluster="a", node=2, role="peer"))


def run(main: Callable[[], Coroutine[Any, Any, None]], timeout: float = 10.0) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(main(), timeout)

    asyncio.run(bounded())


async def eventually(condition: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.005)


class Inbox:
    """Collects what a server delivers; remembers the size of every delivery."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, Message]] = []
        self.deliveries: list[int] = []

    def __call__(self, peer_id: int, msgs: list[Message]) -> None:
        self.deliveries.append(len(msgs))
        self.messages += [(peer_id, m) for m in msgs]

    def slots_from(self, peer_id: int) -> list[int]:
        return [m.slot for p, m in self.messages if p == peer_id and isinstance(m, Accepted)]


async def with_server(
    body: Callable[[PeerServer, Inbox], Awaitable[None]], *, node_id: int = 1, **kwargs: Any
) -> None:
    inbox = Inbox()
    server = await serve_peers(HOST, 0, "a", node_id, inbox, **kwargs)
    try:
        await body(server, inbox)
    finally:
        server.close()
        await server.wait_closed()


def accepted(i: int, src: int = 2) -> bytes:
    return encode_message(Accepted(src=src, ballot=B, slot=i))


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Write ``data`` on a fresh connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(), 5.0)
    finally:
        writer.close()


def test_two_nodes_exchange_10000_messages_each_in_order() -> None:
    async def main() -> None:
        inbox1, inbox2 = Inbox(), Inbox()
        server1 = await serve_peers(HOST, 0, "a", 1, inbox1)
        server2 = await serve_peers(HOST, 0, "a", 2, inbox2)
        peers = {1: (HOST, server1.port), 2: (HOST, server2.port)}
        links1 = PeerLinks(1, "a", peers, rng=random.Random(1))
        links2 = PeerLinks(2, "a", peers, rng=random.Random(2))
        assert links1.peers == (2,) and links2.peers == (1,)
        links1.start()
        links2.start()
        await eventually(lambda: links1.is_connected(2) and links2.is_connected(1))
        for start in range(0, 10_000, 500):  # a realistic pass: 500 frames, one write
            for i in range(start, start + 500):
                assert links1.send(2, accepted(i, src=1))
                assert links2.send(1, accepted(i, src=2))
            await asyncio.sleep(0)
        await eventually(lambda: len(inbox1.messages) == len(inbox2.messages) == 10_000)
        assert inbox2.slots_from(1) == list(range(10_000))
        assert inbox1.slots_from(2) == list(range(10_000))
        # Coalescing: far fewer deliveries (and writes) than messages.
        assert len(inbox2.deliveries) < 1_000
        assert links1.counters["frames_sent"] == 10_000
        assert server2.counters["frames_received"] == 10_000
        await links1.close()
        await links2.close()
        for server in (server1, server2):
            server.close()
            await server.wait_closed()
        assert not server1.connections and not server2.connections

    run(main)


def test_broadcast_sends_the_same_bytes_to_every_peer() -> None:
    async def main() -> None:
        inboxes = {n: Inbox() for n in (2, 3)}
        servers = {n: await serve_peers(HOST, 0, "a", n, inboxes[n]) for n in (2, 3)}
        peers = {n: (HOST, s.port) for n, s in servers.items()}
        links = PeerLinks(1, "a", {1: (HOST, 1), **peers})
        links.start()
        await eventually(lambda: links.connected() == {2, 3})
        commit = Commit(src=1, ballot=B, chosen=5)
        assert links.broadcast([2, 3], encode_message(commit)) == 2
        await eventually(lambda: all(i.messages for i in inboxes.values()))
        assert [i.messages for i in inboxes.values()] == [[(1, commit)], [(1, commit)]]
        await links.close()
        for server in servers.values():
            server.close()
            await server.wait_closed()

    run(main)


def test_a_restarted_peer_is_reconnected_to_and_traffic_resumes() -> None:
    async def main() -> None:
        inbox = Inbox()
        server = await serve_peers(HOST, 0, "a", 2, inbox)
        port = server.port
        links = PeerLinks(1, "a", {2: (HOST, port)}, rng=random.Random(7), backoff_cap=0.2)
        links.start()
        await eventually(lambda: links.is_connected(2))
        assert links.send(2, accepted(0, src=1))
        await eventually(lambda: len(inbox.messages) == 1)

        server.close()  # the peer "crashes": listener and connections gone
        await server.wait_closed()
        await eventually(lambda: not links.is_connected(2), what="link down")
        assert not links.send(2, accepted(1, src=1))  # lossy while down
        assert links.counters["dropped_disconnected"] >= 1
        await eventually(lambda: links.counters["connect_failures"] >= 1, what="redials")

        server = await serve_peers(HOST, port, "a", 2, inbox)  # the peer restarts
        await eventually(lambda: links.is_connected(2), what="reconnect")
        assert links.counters["connects"] == 2
        assert links.counters["disconnects"] == 1
        assert links.send(2, accepted(2, src=1))
        await eventually(lambda: len(inbox.messages) == 2)
        assert inbox.slots_from(1) == [0, 2]
        await links.close()
        server.close()
        await server.wait_closed()

    run(main)


@pytest.mark.parametrize(
    ("garbage", "counter"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "oversized_frames"),  # prefix reads as 1.2 GB
        (b"\x00\x00\x00\x03\xc1\xc1\xc1", "malformed_frames"),  # not a Hello
        (encode_message(Commit(src=2, ballot=B, chosen=1)), "malformed_frames"),  # no Hello
        (
            GOOD_HELLO + b"\0\0\0\2\xc1\xc1",
            "malformed_frames",
        ),
        (
            GOOD_HELLO + b"\xff" * 8,
            "oversized_frames",
        ),
        (b"\x00\x00\x00\x00", "malformed_frames"),  # empty frame
    ],
    ids=["http", "garbage", "no-hello", "garbage-after-hello", "huge-after-hello", "empty"],
)
def test_garbage_closes_only_that_connection_and_is_counted(garbage: bytes, counter: str) -> None:
    async def body(server: PeerServer, inbox: Inbox) -> None:
        assert await raw_exchange(server.port, garbage) == b""  # closed by the server
        await eventually(lambda: server.counters[counter] == 1)
        assert sum(server.counters[c] for c in ("oversized_frames", "malformed_frames")) == 1
        # The server keeps running and accepts a good peer.
        links = PeerLinks(2, "a", {1: (HOST, server.port)})
        links.start()
        await eventually(lambda: links.is_connected(1))
        links.send(1, accepted(9))
        await eventually(lambda: inbox.messages == [(2, Accepted(src=2, ballot=B, slot=9))])
        await links.close()

    run(lambda: with_server(body))


def test_a_violation_discards_the_chunk_but_not_earlier_deliveries() -> None:
    async def body(server: PeerServer, inbox: Inbox) -> None:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(encode_hello(Hello(version=1, cluster="a", node=2, role="peer")))
        writer.write(accepted(1))
        await eventually(lambda: len(inbox.messages) == 1)
        writer.write(b"\0\0\0\1\xc1")
        assert await asyncio.wait_for(reader.read(), 5.0) == b""
        writer.close()
        assert server.counters["malformed_frames"] == 1
        assert inbox.messages == [(2, Accepted(src=2, ballot=B, slot=1))]

    run(lambda: with_server(body))


@pytest.mark.parametrize(
    ("hello", "reason"),
    [
        (Hello(version=PROTOCOL_VERSION, cluster="b", node=2, role="peer"), ": cluster 'b' != 'a'"),
        (Hello(version=99, cluster="a", node=2, role="peer"), "protocol version 99 != 1"),
        (Hello(version=1, cluster="a", node=0, role="client"), "role 'client' != 'peer'"),
        (Hello(version=1, cluster="a", node=1, role="peer"), "which is this node's id"),
        (Hello(version=1, cluster="a", node=9, role="peer"), "node 9 is not a member"),
        (Hello(magic="http", version=1, cluster="a", node=2, role="peer"), "wrong magic"),
    ],
    ids=["cluster", "version", "client", "own-id", "unknown-node", "magic"],
)
def test_a_bad_hello_is_refused_with_one_clear_log_line(
    hello: Hello, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(server: PeerServer, inbox: Inbox) -> None:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        local_port = writer.get_extra_info("sockname")[1]
        writer.write(encode_hello(hello) + accepted(1))
        assert await asyncio.wait_for(reader.read(), 5.0) == b""
        writer.close()
        assert server.counters["handshake_refused"] == 1
        assert inbox.messages == []
        lines = [r.getMessage() for r in caplog.records if r.name == "pyxos.net"]
        assert len(lines) == 1
        assert lines[0].startswith(f"refused connection from 127.0.0.1:{local_port}: ")
        assert reason in lines[0]

    caplog.set_level(logging.WARNING, logger="pyxos.net")
    run(lambda: with_server(body, known_nodes={1, 2, 3}))


def test_a_peer_of_another_cluster_never_gets_a_message_through() -> None:
    async def body(server: PeerServer, inbox: Inbox) -> None:
        links = PeerLinks(2, "b", {1: (HOST, server.port)}, backoff_base=0.01, backoff_cap=0.05)
        links.start()
        await eventually(lambda: server.counters["handshake_refused"] >= 3, what="redials")
        links.send(1, accepted(1))
        await links.close()
        assert inbox.messages == []

    run(lambda: with_server(body))


def test_a_new_connection_from_a_node_retires_its_previous_one() -> None:
    async def body(server: PeerServer, inbox: Inbox) -> None:
        old_reader, old_writer = await asyncio.open_connection(HOST, server.port)
        old_writer.write(GOOD_HELLO + accepted(1))
        await eventually(lambda: len(inbox.messages) == 1)
        _, new_writer = await asyncio.open_connection(HOST, server.port)
        new_writer.write(GOOD_HELLO + accepted(2))
        assert await asyncio.wait_for(old_reader.read(), 5.0) == b""  # node 2 restarted
        await eventually(lambda: len(inbox.messages) == 2)
        assert server.counters["connections_replaced"] == 1
        assert len(server.connections) == 1
        old_writer.close()
        new_writer.close()

    run(lambda: with_server(body))


def test_a_silent_connection_is_closed_after_the_handshake_timeout() -> None:
    async def body(server: PeerServer, inbox: Inbox) -> None:
        assert await raw_exchange(server.port, b"") == b""
        assert server.counters["handshake_timeouts"] == 1

    run(lambda: with_server(body, handshake_timeout=0.05))


def test_a_full_queue_drops_new_frames_and_counts_them() -> None:
    async def body(server: PeerServer, inbox: Inbox) -> None:
        links = PeerLinks(2, "a", {1: (HOST, server.port)}, max_queue_frames=5)
        links.start()
        await eventually(lambda: links.is_connected(1))
        taken = [links.send(1, accepted(i)) for i in range(8)]  # one pass: one flush
        assert taken == [True] * 5 + [False] * 3
        assert links.counters["dropped_queue_full"] == 3
        await eventually(lambda: len(inbox.messages) == 5)
        assert inbox.slots_from(2) == [0, 1, 2, 3, 4]
        assert links.send(1, accepted(8))  # the flush emptied the queue
        await eventually(lambda: len(inbox.messages) == 6)
        await links.close()

    run(lambda: with_server(body))


def test_frames_to_a_peer_that_does_not_read_queue_up_then_drop() -> None:
    async def main() -> None:
        # A listener that never accepts: the kernel completes the handshake and then
        # buffers what we send until the (small) receive buffer is full.
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.bind((HOST, 0))
        stalled.listen()
        links = PeerLinks(2, "a", {1: stalled.getsockname()}, max_queue_frames=4)
        try:
            links.start()
            await eventually(lambda: links.is_connected(1))
            payload = b"x" * (1 << 20)
            snapshot = encode_message(Snapshot(src=2, slot=1, offset=0, data=payload, total=1))
            await eventually(lambda: not links.send(1, snapshot), what="the kernel buffers to fill")
            assert links.counters["dropped_queue_full"] >= 1
            assert links.counters["dropped_disconnected"] == 0
        finally:
            await links.close(drain_timeout=0.05)  # unread bytes are aborted, not awaited
            stalled.close()

    run(main)


def test_frames_to_an_unreachable_peer_are_dropped_and_redials_back_off() -> None:
    async def main() -> None:
        placeholder = await asyncio.get_running_loop().create_server(asyncio.Protocol, HOST, 0)
        port = placeholder.sockets[0].getsockname()[1]
        placeholder.close()
        await placeholder.wait_closed()  # nothing listens on this port now
        links = PeerLinks(2, "a", {1: (HOST, port)}, rng=random.Random(3), backoff_cap=0.1)
        links.start()
        await eventually(lambda: links.counters["connect_failures"] >= 3)
        assert not links.send(1, accepted(1))
        assert links.broadcast([1], accepted(2)) == 0
        assert links.counters["dropped_disconnected"] == 2
        with pytest.raises(KeyError):
            links.send(7, accepted(3))
        await links.close()

    run(main)


def test_backoff_doubles_from_base_to_cap_with_jitter_in_the_upper_half() -> None:
    rng = random.Random(42)
    for attempt in range(12):
        ceiling = min(2.0, 0.05 * 2**attempt)
        for _ in range(50):
            assert ceiling / 2 <= backoff_delay(attempt, rng) <= ceiling
    assert backoff_delay(10_000, rng) <= 2.0
    assert backoff_delay(3, random.Random(5)) == backoff_delay(3, random.Random(5))


class FakeTransport(asyncio.Transport):
    """Records writes; enough of a transport to drive a FramedProtocol by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[list[bytes]] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append([bytes(data)])

    def writelines(self, list_of_data: Any) -> None:
        self.writes.append([bytes(d) for d in list_of_data])

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("10.0.0.9", 4242) if name == "peername" else default


def test_sends_of_one_pass_become_one_write_and_pausing_holds_them() -> None:
    async def main() -> None:
        received: list[tuple[int, list[Message]]] = []
        protocol = FramedProtocol(lambda p, m: received.append((p, m)), peer_id=3)
        transport = FakeTransport()
        protocol.connection_made(transport)
        frames = [accepted(i) for i in range(3)]
        assert all(protocol.send(f) for f in frames)
        assert transport.writes == []  # nothing written until the end of the pass
        await asyncio.sleep(0)
        assert transport.writes == [frames]
        protocol.pause_writing()
        protocol.send(frames[0])
        await asyncio.sleep(0)
        assert len(transport.writes) == 1 and protocol.queued == 1
        protocol.resume_writing()
        await asyncio.sleep(0)
        assert transport.writes[1:] == [[frames[0]]]
        # Received frames: one callback per chunk, with the peer id.
        protocol.data_received(encode_frames([Commit(src=3, ballot=B, chosen=i) for i in range(4)]))
        assert [(p, len(m)) for p, m in received] == [(3, 4)]
        assert protocol.counters["frames_received"] == 4

    run(main)


def test_flush_pending_writes_every_connections_queue_now_in_the_order_they_sent() -> None:
    """A node writes what its pass sent once its Ready is carried out (``flush_pending``),
    not one event-loop pass later; the pass-end flush then finds nothing left."""

    async def main() -> None:
        first, second = FramedProtocol(lambda p, m: None), FramedProtocol(lambda p, m: None)
        order: list[str] = []
        t1, t2 = FakeTransport(), FakeTransport()
        first.connection_made(t1)
        second.connection_made(t2)
        t1.write = lambda data: order.append("first")  # type: ignore[method-assign]
        t2.write = lambda data: order.append("second")  # type: ignore[method-assign]
        second.send(accepted(1))
        first.send(accepted(2))
        assert order == []
        flush_pending()
        assert order == ["second", "first"] and first.queued == second.queued == 0
        await asyncio.sleep(0)
        assert order == ["second", "first"]  # the pass-end flush wrote nothing twice
        first.send(accepted(3))  # a later pass: flushed at its end as before
        await asyncio.sleep(0)
        assert order == ["second", "first", "first"]
        flush_pending()  # nothing queued: nothing written
        assert len(order) == 3

    run(main)


def test_a_pass_writes_its_peer_links_after_its_other_connections() -> None:
    """A leader's reply to its client leaves before the Commits of the same pass (each
    a system call that wakes a follower): peer links are ``flush_last``."""

    async def main() -> None:
        order: list[str] = []
        link = FramedProtocol(lambda p, m: None, flush_last=True)
        client = FramedProtocol(lambda p, m: None)
        for name, protocol in (("link", link), ("client", client)):
            transport = FakeTransport()
            transport.write = lambda data, name=name: order.append(name)  # type: ignore[method-assign]
            protocol.connection_made(transport)
        link.send(accepted(1))  # the Commit is sent first...
        client.send(accepted(2))  # ...then the reply
        await asyncio.sleep(0)
        assert order == ["client", "link"]

    run(main)


def test_a_dialer_writes_its_hello_first_and_losing_the_connection_drops_the_queue() -> None:
    async def main() -> None:
        hello = Hello(version=1, cluster="a", node=2, role="peer")
        lost: list[Exception | None] = []
        protocol = FramedProtocol(
            lambda p, m: None, hello=hello, on_lost=lambda p, e: lost.append(e)
        )
        transport = FakeTransport()
        protocol.connection_made(transport)
        assert transport.writes == [[encode_hello(hello)]]
        protocol.send(accepted(1))
        error = ConnectionResetError("reset")
        protocol.connection_lost(error)
        assert lost == [error] and protocol.lost_reason is error
        assert protocol.counters["dropped_on_disconnect"] == 1
        assert not protocol.send(accepted(2))
        assert protocol.counters["dropped_disconnected"] == 1
        await protocol.wait_closed()

    run(main)


def test_counters_start_at_zero_with_every_name() -> None:
    assert new_counters() == dict.fromkeys(COUNTER_NAMES, 0)
    assert len(set(COUNTER_NAMES)) == len(COUNTER_NAMES)


def test_links_follow_the_membership_added_and_removed_at_run_time() -> None:
    async def main() -> None:
        inboxes = {n: Inbox() for n in (2, 3)}
        servers = {n: await serve_peers(HOST, 0, "a", n, inboxes[n]) for n in (2, 3)}
        changes: list[tuple[int, bool]] = []
        links = PeerLinks(
            1, "a", {2: (HOST, servers[2].port)}, on_link=lambda p, up: changes.append((p, up))
        )
        links.start()
        await eventually(lambda: links.connected() == {2})
        with pytest.raises(KeyError):
            links.send(3, accepted(0, src=1))  # not a peer yet
        links.add_peer(3, (HOST, servers[3].port))  # a member added at run time
        await eventually(lambda: links.connected() == {2, 3})
        assert links.send(3, accepted(7, src=1))
        await eventually(lambda: inboxes[3].slots_from(1) == [7])
        links.remove_peer(2)  # a member removed: the link closes, no redial
        assert links.peers == (3,) and (2, False) in changes
        await eventually(lambda: not servers[2].connections, what="node 2's link closed")
        await asyncio.sleep(0.2)
        assert not servers[2].connections, "a removed peer is not dialed again"
        await links.close()
        for server in servers.values():
            server.close()
            await server.wait_closed()

    run(main)


def test_a_refused_handshake_can_say_why_in_a_frame_before_the_close() -> None:
    from pyxos.core.messages import Removed
    from pyxos.net.codec import HandshakeError

    def check(node: int) -> None:
        if node == 2:
            why = "node 2 was removed"
            raise HandshakeError(why, farewell=encode_message(Removed(1, 2, 5, why)))

    async def body(server: PeerServer, inbox: Inbox) -> None:
        got: list[Message] = []
        links = PeerLinks(2, "a", {1: (HOST, server.port)}, on_messages=lambda p, m: got.extend(m))
        links.start()
        await eventually(lambda: bool(got), what="the Removed frame")
        assert got[0] == Removed(1, 2, 5, "node 2 was removed")
        assert not inbox.messages and server.counters["handshake_refused"] >= 1
        await links.close()

    run(lambda: with_server(body, check_node=check))
