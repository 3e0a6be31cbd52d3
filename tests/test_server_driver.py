"""The node driver's ordering, checked with a scripted node, a gated fsync and fake links.

The rules are ``pyxos.driver.ReadyDriver``'s, run here by the server: persist is
written first, ``send_now`` leaves at once, ``send_after_sync`` only after an fsync
covering the persist of its Ready (and never ahead of older waiting sends), one fsync
in flight covers everything written meanwhile, and messages to ourselves come back
through ``step`` in a later pass.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pyxos.core.ballot import Ballot
from pyxos.core.messages import ClientRequest, Commit, Entry, Message, Nack, Promise
from pyxos.core.ready import Persist, Ready, Send
from pyxos.server.node import NodeFailed, NodeServer
from test_server_harness import cluster_configs, wait_for

B = Ballot(1, 1)


class ScriptedNode:
    """Returns the queued Readies one per ``ready()``; records what it was fed."""

    def __init__(self) -> None:
        self.script: list[Ready] = []
        self.stepped: list[Message] = []
        self.ticks = 0
        self.advances = 0

    def tick(self, now: float) -> None:
        self.ticks += 1

    def step(self, msg: Message) -> None:
        self.stepped.append(msg)

    def ready(self) -> Ready:
        return self.script.pop(0) if self.script else Ready()

    def advance(self) -> None:
        self.advances += 1

    def next_deadline(self) -> float | None:
        return None


class GatedDurable:
    """``sync`` blocks until the test opens the gate; counts what each sync covered."""

    def __init__(self) -> None:
        self.written: list[Persist] = []
        self.synced_counts: list[int] = []
        self.gate = threading.Semaphore(0)
        self._durable = 0

    def write(self, persist: Persist) -> None:
        self.written.append(persist)

    def sync(self) -> int:
        target = len(self.written)
        self.gate.acquire()
        self.synced_counts.append(target - self._durable)
        self._durable = target
        return target

    def close(self) -> None:
        pass


class FakeLinks:
    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes]] = []

    def send(self, dst: int, frame: bytes) -> bool:
        self.sent.append((dst, frame))
        return True

    async def close(self, drain_timeout: float = 1.0) -> None:
        pass


def nack(dst: int) -> Send:
    return Send((dst,), Nack(1, B, B))


def commit(dst: int) -> Send:
    return Send((dst,), Commit(1, B, 0))


def make(tmp_path: Path) -> tuple[NodeServer, ScriptedNode, GatedDurable, FakeLinks]:
    (config,) = cluster_configs(tmp_path, 1)
    server = NodeServer(config)
    node, durable, links = ScriptedNode(), GatedDurable(), FakeLinks()
    loop = asyncio.get_running_loop()
    server._loop = server.router.loop = loop
    server.clock.start(loop)
    server._stopped = asyncio.Event()
    server.effects.open(loop, durable)  # type: ignore[arg-type]
    server.node = node  # type: ignore[assignment]
    server.links = server.router.links = links  # type: ignore[assignment]
    return server, node, durable, links


def stop(server: NodeServer) -> None:
    server.effects.executor.shutdown(wait=False)


async def feed(server: NodeServer) -> None:
    """One input, then let the event-loop pass end (the driver drives once per pass)."""
    server._input(())
    await asyncio.sleep(0)


def dsts(links: FakeLinks) -> list[int]:
    return [dst for dst, _ in links.sent]


def test_acceptor_replies_wait_for_the_fsync_and_fsyncs_group(tmp_path: Path) -> None:
    async def main() -> None:
        server, node, durable, links = make(tmp_path)
        try:
            # Ready 1: persist, a proposer message (now) and an acceptor reply (after).
            node.script.append(
                Ready(Persist(promised=B), send_now=[commit(2)], send_after_sync=[nack(3)])
            )
            await feed(server)
            assert dsts(links) == [2]  # send_now left, the reply waits
            assert len(durable.written) == 1
            # Ready 2 and 3 arrive while the first fsync runs: written, but no second
            # fsync starts, and their replies queue behind the first one.
            node.script.append(Ready(Persist(promised=B), send_after_sync=[nack(4)]))
            await feed(server)
            node.script.append(Ready(Persist(promised=B), send_after_sync=[nack(5)]))
            await feed(server)
            assert len(durable.written) == 3
            assert dsts(links) == [2]
            durable.gate.release()  # fsync 1 completes: it covered only record 1
            await wait_for(lambda: dsts(links) == [2, 3], 2.0, "the first reply")
            # The second fsync started at once and covers records 2 and 3 together.
            durable.gate.release()
            await wait_for(lambda: dsts(links) == [2, 3, 4, 5], 2.0, "the grouped replies")
            assert durable.synced_counts == [1, 2]
            assert server.driver.synced == server.driver.written == 3

            # Nothing unsynced and nothing waiting: an acceptor reply leaves at once.
            node.script.append(Ready(send_after_sync=[nack(6)]))
            await feed(server)
            assert dsts(links)[-1] == 6
            assert node.advances == node.ticks == 4
        finally:
            durable.gate.release()
            stop(server)

    asyncio.run(main())


def test_a_reply_without_persist_does_not_overtake_a_waiting_one(tmp_path: Path) -> None:
    async def main() -> None:
        server, node, durable, links = make(tmp_path)
        try:
            node.script.append(Ready(Persist(promised=B), send_after_sync=[nack(2)]))
            await feed(server)
            node.script.append(Ready(send_after_sync=[nack(3)]))  # nothing to persist
            await feed(server)
            assert dsts(links) == []
            durable.gate.release()
            await wait_for(lambda: dsts(links) == [2, 3], 2.0, "both replies, in order")
        finally:
            durable.gate.release()
            stop(server)

    asyncio.run(main())


def test_messages_to_ourselves_come_back_through_step_after_the_sync(tmp_path: Path) -> None:
    async def main() -> None:
        server, node, durable, links = make(tmp_path)
        me = server.config.node_id
        own: Any = Promise(me, B)
        try:
            node.script.append(Ready(Persist(promised=B), send_after_sync=[Send((me,), own)]))
            await feed(server)
            await asyncio.sleep(0)
            assert node.stepped == []  # not before the fsync
            durable.gate.release()
            await wait_for(lambda: node.stepped == [own], 2.0, "our own message")
            assert links.sent == []  # never put on the network
        finally:
            durable.gate.release()
            stop(server)

    asyncio.run(main())


def test_what_an_fsync_released_to_ourselves_is_stepped_and_driven_in_its_report(
    tmp_path: Path,
) -> None:
    """The fsync thread's report reaches the loop in one hand-off, and in that very
    callback the node steps what it released to itself (a leader's own Accepted) and
    carries out the Ready that follows (its commit and replies): it used to take five
    event-loop passes. The next fsync starts one pass later (group commit)."""

    async def main() -> None:
        server, node, durable, links = make(tmp_path)
        me = server.config.node_id
        own: Any = Promise(me, B)
        seen: list[tuple[list[Message], list[int], bool]] = []
        report = server.effects._on_synced

        def recorded(future: Any) -> None:
            report(future)
            seen.append((list(node.stepped), dsts(links), server.driver.fsync_in_flight))

        server.effects._on_synced = recorded  # type: ignore[method-assign]
        # The scripted node has no membership or replica to observe after a pass.
        server.peerbook.observe = lambda node: None  # type: ignore[method-assign]
        server._majority_lost.observe = lambda node: None  # type: ignore[method-assign]
        try:
            node.script.append(Ready(Persist(promised=B), send_after_sync=[Send((me,), own)]))
            await feed(server)
            # Written while the fsync runs: its record needs the next fsync.
            node.script.append(Ready(Persist(promised=B)))
            await feed(server)
            # What the node does once it steps its own message: sends a Commit.
            node.script.append(Ready(send_now=[commit(2)]))
            durable.gate.release()
            await wait_for(lambda: seen != [], 2.0, "the fsync's report")
            # Stepped and driven within the report; the next fsync not started yet.
            assert seen == [([own], [2], False)]
            await asyncio.sleep(0)
            assert server.driver.fsync_in_flight, "the next fsync starts a pass later"
        finally:
            durable.gate.release()
            durable.gate.release()
            stop(server)

    asyncio.run(main())


def test_an_all_but_idle_leader_fsyncs_on_its_loop_and_a_busy_one_in_its_thread(
    tmp_path: Path,
) -> None:
    """One client, one write at a time: the leader's fsync runs on the loop thread (no
    hand-off to the thread and back), and what it released to the leader itself is fed
    and driven in the same pass. A bigger write, or another proposal in flight, goes to
    the fsync thread as before (the loop keeps serving meanwhile)."""

    async def main() -> None:
        server, node, durable, links = make(tmp_path)
        node.replica = SimpleNamespace(is_leader=True, in_flight={})  # type: ignore[attr-defined]
        server.peerbook.observe = lambda node: None  # type: ignore[method-assign]
        server._majority_lost.observe = lambda node: None  # type: ignore[method-assign]
        me = server.config.node_id
        own: Any = Promise(me, B)
        small = Persist(accepted=[Entry(1, B, b"x" * 100)])
        try:
            durable.gate.release()  # the inline sync must not block
            node.script.append(Ready(small, send_after_sync=[Send((me,), own)]))
            node.script.append(Ready(send_now=[commit(2)]))  # once it steps its own message
            server._input(())
            await asyncio.sleep(0)  # one pass: drive, inline fsync, own message, drive
            assert durable.synced_counts == [1] and node.stepped == [own]
            assert dsts(links) == [2]
            assert server.stats.leader_inline_fsyncs == 1 and server.effects.fsync_future is None
            # A write over inline_leader_bytes: the fsync thread.
            big = Persist(accepted=[Entry(2, B, b"x" * 1000)])
            node.script.append(Ready(big, send_after_sync=[nack(3)]))
            await feed(server)
            assert server.effects.fsync_future is not None and dsts(links) == [2]
            durable.gate.release()
            await wait_for(lambda: dsts(links) == [2, 3], 2.0, "the reply after the thread's fsync")
            # Another proposal in flight: the thread too.
            node.replica.in_flight = {1: None, 2: None}  # type: ignore[attr-defined]
            node.script.append(Ready(small, send_after_sync=[nack(4)]))
            await feed(server)
            assert server.effects.fsync_future is not None
            durable.gate.release()
            await wait_for(lambda: dsts(links) == [2, 3, 4], 2.0, "the reply")
            assert server.stats.leader_inline_fsyncs == 1
        finally:
            durable.gate.release()
            stop(server)

    asyncio.run(main())


def test_a_failed_fsync_stops_the_node(tmp_path: Path) -> None:
    class FailingDurable(GatedDurable):
        def sync(self) -> int:
            raise OSError(5, "Input/output error")

    async def main() -> None:
        server, node, _, links = make(tmp_path)
        server.durable = FailingDurable()  # type: ignore[assignment]
        node.script.append(Ready(Persist(promised=B), send_after_sync=[nack(2)]))
        await feed(server)
        with pytest.raises(NodeFailed, match="Input/output error"):
            await asyncio.wait_for(server.serve_forever(), 5.0)
        assert links.sent == []  # the reply never left

    asyncio.run(main())


def test_peer_messages_naming_another_sender_are_dropped(tmp_path: Path) -> None:
    async def main() -> None:
        server, node, _, _ = make(tmp_path)
        try:
            good = Commit(2, B, 0)
            forwarded = ClientRequest(2, 1, 1, b"")  # a follower forwarding a request
            server.router.on_peer_messages(
                2, [good, Commit(3, B, 0), forwarded, ClientRequest(3, 1, 1, b"")]
            )
            assert node.stepped == [good, forwarded]
            assert server.stats.dropped_peer_messages == 2
            server.router.on_peer_messages(2, [good])
            assert node.stepped[-1] == good
        finally:
            stop(server)

    asyncio.run(main())


def test_an_oversized_message_is_dropped_not_raised(tmp_path: Path) -> None:
    from pyxos.core.messages import Accept
    from pyxos.net.codec import MAX_FRAME_BYTES

    async def main() -> None:
        server, node, _, links = make(tmp_path)
        try:
            huge = Accept(1, B, 0, (b"x" * (MAX_FRAME_BYTES + 1),))
            node.script.append(Ready(send_now=[Send((2,), huge), commit(3)]))
            await feed(server)
            assert dsts(links) == [3]
            assert server.stats.oversized_dropped == 1
            assert node.advances == 1  # the Ready was carried out to the end
        finally:
            stop(server)

    asyncio.run(main())


def test_an_internal_error_stops_the_node(tmp_path: Path) -> None:
    class Broken(ScriptedNode):
        def step(self, msg: Message) -> None:
            raise RuntimeError("core bug")

    async def main() -> None:
        server, _, _, _ = make(tmp_path)
        broken = Broken()
        server.node = broken  # type: ignore[assignment]
        server.router.on_peer_messages(2, [Commit(2, B, 0)])
        server.router.on_peer_messages(2, [Commit(2, B, 0)])  # ignored: the node is failing
        with pytest.raises(NodeFailed, match="core bug"):
            await asyncio.wait_for(server.serve_forever(), 5.0)
        assert server.stats.inputs == 1

    asyncio.run(main())


def test_inputs_of_one_event_loop_pass_share_one_ready(tmp_path: Path) -> None:
    async def main() -> None:
        server, node, _, _ = make(tmp_path)
        try:
            node.script.append(Ready(send_now=[commit(2)]))
            for _ in range(5):
                server._input(())
            assert node.ticks == 5 and node.advances == 0, "nothing is driven mid-pass"
            await asyncio.sleep(0)
            assert node.advances == 1, "one Ready for the whole pass"
        finally:
            stop(server)

    asyncio.run(main())


@pytest.mark.parametrize("role", ["idle_leader", "follower"])
def test_a_failed_inline_fsync_stops_the_node_before_anything_it_held_leaves(
    tmp_path: Path, role: str
) -> None:
    """The loop thread's own fsync (a follower's, an all but idle leader's) fails: the
    node stops, its reply never leaves and the leader never steps its own Accepted,
    not even from the pass's end (``pass_done``), where an inline report is fed."""

    class FailingDurable(GatedDurable):
        def sync(self) -> int:
            raise OSError(5, "Input/output error")

    async def main() -> None:
        server, node, _, links = make(tmp_path)
        durable = FailingDurable()
        server.effects.durable = durable  # type: ignore[assignment]
        node.replica = SimpleNamespace(  # type: ignore[attr-defined]
            is_leader=role == "idle_leader", in_flight={}
        )
        server.peerbook.observe = lambda node: None  # type: ignore[method-assign]
        server._majority_lost.observe = lambda node: None  # type: ignore[method-assign]
        me = server.config.node_id
        own: Any = Promise(me, B)
        small = Persist(accepted=[Entry(1, B, b"x" * 10)])
        node.script.append(Ready(small, send_after_sync=[Send((me,), own), nack(2)]))
        node.script.append(Ready(send_now=[commit(3)]))
        try:
            await feed(server)
            with pytest.raises(NodeFailed, match="Input/output error"):
                await asyncio.wait_for(server.serve_forever(), 5.0)
            assert server.effects.fsync_future is None  # it ran inline
            assert links.sent == []  # the reply never left
            assert node.stepped == []  # nor did the leader count its own Accepted
            assert server.stats.leader_inline_fsyncs == 0
        finally:
            stop(server)

    asyncio.run(main())


@pytest.mark.parametrize("role", ["idle_leader", "follower"])
def test_nothing_an_inline_fsync_holds_leaves_before_it(tmp_path: Path, role: str) -> None:
    """On the loop thread's own fsync (a follower's, an all but idle leader's), what the
    pass sent at once leaves before it (``send_now``), but the reply waiting for it
    and the leader's own Accepted only after it returned."""

    async def main() -> None:
        server, node, _, links = make(tmp_path)
        seen: list[tuple[list[int], int]] = []

        class Watching(GatedDurable):
            def sync(self) -> int:
                seen.append((dsts(links), len(node.stepped)))
                self.gate.release()
                return super().sync()

        server.effects.durable = Watching()  # type: ignore[assignment]
        node.replica = SimpleNamespace(  # type: ignore[attr-defined]
            is_leader=role == "idle_leader", in_flight={}
        )
        server.peerbook.observe = lambda node: None  # type: ignore[method-assign]
        server._majority_lost.observe = lambda node: None  # type: ignore[method-assign]
        me = server.config.node_id
        own: Any = Promise(me, B)
        small = Persist(accepted=[Entry(1, B, b"x" * 10)])
        node.script.append(
            Ready(small, send_now=[commit(3)], send_after_sync=[Send((me,), own), nack(2)])
        )
        try:
            await feed(server)
            await wait_for(lambda: dsts(links) == [3, 2], 2.0, "the reply")
            assert seen == [([3], 0)]  # at the fsync: only what did not wait for it
            assert server.effects.fsync_future is None  # it ran inline
            await wait_for(lambda: node.stepped == [own], 2.0, "the own message")
        finally:
            stop(server)

    asyncio.run(main())
