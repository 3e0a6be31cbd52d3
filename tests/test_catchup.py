"""Catch-up of a node that is far behind, and elections while it catches up.

Regression tests for issue 8, item 1 (a restarted node that could not catch up under
load, and the elections it then stalled). Each failed on the code before the fix:

1. learning scanned the whole gap for every Accept and Commit (quadratic);
2. a Fetch was answered with one Decided of up to 256 values whatever their size
   (over the frame limit it was dropped, and catch-up never progressed);
3. a large gap was replayed slot by slot unless the peer had compacted past it;
4. a node far behind could win an election and re-propose its whole gap.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import msgspec

from pyxos.core.ballot import Ballot
from pyxos.core.messages import (
    Accept,
    ClientRequest,
    Commit,
    Decided,
    Fetch,
    Message,
    PreVote,
    PreVoteReply,
    Snapshot,
    SnapshotRequest,
)
from pyxos.core.quorum import Majority
from pyxos.core.replica import Replica, ReplicaConfig, Role
from pyxos.sim.kv import service_node_factory
from pyxos.sim.world import Simulator
from pyxos.statemachine.kv import Command
from pyxos.statemachine.service import ServiceNode
from sim_helpers import RecordingClient

Q3 = Majority([1, 2, 3])
enc = msgspec.msgpack.Encoder()


class CountingDict(dict[Any, Any]):
    """A dict that counts every lookup: the work a replica does on its log."""

    lookups = 0

    def get(self, key: Any, default: Any = None) -> Any:
        CountingDict.lookups += 1
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        CountingDict.lookups += 1
        return super().__contains__(key)

    def __getitem__(self, key: Any) -> Any:
        CountingDict.lookups += 1
        return super().__getitem__(key)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        CountingDict.lookups += 1
        return super().setdefault(key, default)


def test_a_follower_far_behind_learns_each_accept_and_commit_in_constant_work() -> None:
    gap, messages = 20_000, 200
    r = Replica(2, Q3, random.Random(2))
    r.acceptor.accepted = CountingDict()
    r.chosen = CountingDict()
    b = Ballot(1, 1)
    r.step(Commit(1, b, gap))  # slots [0, gap) are chosen; we hold none of them
    r.advance()
    CountingDict.lookups = 0
    for i in range(messages):
        r.step(Accept(1, b, gap + i, (b"v%d" % i,), gap + i))
        r.step(Commit(1, b, gap + i + 1))
        r.advance()
    # O(new information): a few lookups per message, however long the gap (the scan
    # of the gap for every message did about 2 * gap * messages = 8,000,000).
    assert CountingDict.lookups <= 10 * messages, CountingDict.lookups
    assert r.first_unchosen == 0
    # The gap arrives: everything is learned in order, the accepted slots included.
    committed = []
    for lo in range(0, gap, 1000):
        r.step(Decided(3, lo, tuple(b"x" for _ in range(1000)), gap))
        committed += r.ready().committed
        r.advance()
    assert r.first_unchosen == gap + messages
    assert [e.slot for e in committed] == list(range(gap + messages))
    assert [e.value for e in committed[gap:]] == [b"v%d" % i for i in range(messages)]


def test_a_fetch_reply_streams_in_messages_bounded_in_bytes() -> None:
    r = Replica(1, Q3, random.Random(1))  # about 1 MiB a message, 16 messages a reply
    value = b"v" * (100 * 1024)  # 100 KiB a slot: 256 slots would be a 25 MiB frame
    r.step(Commit(2, Ballot(1, 2), 1000))
    r.step(Decided(2, 0, tuple(value for _ in range(1000))))
    r.advance()
    assert r.first_unchosen == 1000
    r.step(Fetch(3, 0, 1000))
    replies = [s.msg for s in r.ready().send_now if isinstance(s.msg, Decided)]
    assert all(len(m.values) * len(value) <= 1 << 20 for m in replies)
    assert len(replies) == 16, "a reply is up to fetch_window messages"
    assert [m.slot for m in replies] == list(range(0, 160, 10))
    assert {m.end for m in replies} == {160}, "each names where the whole reply ends"


def test_the_first_message_of_a_reply_asks_for_what_follows() -> None:
    r = Replica(2, Q3, random.Random(2))
    r.step(Commit(1, Ballot(1, 1), 10_000))
    r.tick(0.0)
    assert [s.msg for s in r.ready().send_now] == [Fetch(2, 0, 10_000)]
    r.advance()
    r.step(Decided(1, 0, (b"a",) * 256, 4096))
    assert [s.msg for s in r.ready().send_now] == [Fetch(2, 4096, 10_000)]
    r.advance()
    r.step(Decided(1, 256, (b"a",) * 256, 4096))  # the same reply: nothing more to ask
    assert not r.ready().send_now


def test_a_node_far_behind_is_refused_a_prevote() -> None:
    config = ReplicaConfig(election_timeout=(0.1, 0.2), heartbeat_interval=0.02, window=8)
    r = Replica(1, Q3, random.Random(1), config=config)
    r.step(Commit(2, Ballot(1, 2), 100))
    r.step(Decided(2, 0, (b"",) * 100))
    r.advance()
    r.tick(5.0)  # the leader is long gone
    r.advance()
    r.step(PreVote(3, Ballot(5, 3), 50))
    r.step(PreVote(2, Ballot(5, 2), 95))
    replies = [s.msg for s in r.ready().send_now if isinstance(s.msg, PreVoteReply)]
    assert [(m.ballot.node, m.granted) for m in replies] == [(3, False), (2, True)]


# -- the simulator ---------------------------------------------------------------------

Drop = Callable[[int, int, Message], bool]


def _cluster(
    seed: int, configs: dict[int, ReplicaConfig], **factory: Any
) -> tuple[Simulator, list[Drop]]:
    sim = Simulator(seed)
    quorum = Majority(list(configs))
    for i, config in configs.items():
        sim.add_node(i, service_node_factory(quorum, config, **factory))
    sim.add_node(100, lambda *_: RecordingClient(), crashable=False)
    drops: list[Drop] = []
    transmit = sim._transmit

    def filtered(src: int, dst: int, msg: Message) -> None:
        if any(drop(src, dst, msg) for drop in drops):
            return
        transmit(src, dst, msg)

    sim._transmit = filtered  # type: ignore[method-assign]
    return sim, drops


def _svc(sim: Simulator, node_id: int) -> ServiceNode:
    node = sim.node(node_id)
    assert isinstance(node, ServiceNode)
    return node


def _leader(sim: Simulator, ids: list[int]) -> int | None:
    up = set(sim.live_nodes())
    leaders = [i for i in ids if i in up and _svc(sim, i).replica.role is Role.LEADER]
    return leaders[0] if len(leaders) == 1 else None


def _run_until(sim: Simulator, cond: Callable[[], bool], limit: float) -> bool:
    end = sim.now + limit
    while sim.now < end:
        if cond():
            return True
        sim.run(sim.now + 0.005)
    return cond()


def _write(sim: Simulator, leader: int, count: int, first_seq: int) -> None:
    for n in range(first_seq, first_seq + count):
        cmd = enc.encode(Command(100, n, "put", f"k{n % 7}", f"v{n}"))
        sim.send_external(100, leader, ClientRequest(100, 100, n, cmd))
        sim.run(sim.now + 0.003)


def test_a_large_gap_is_closed_by_a_snapshot_not_by_replaying_the_log() -> None:
    ids = [1, 2, 3]
    config = ReplicaConfig(election_timeout=(0.1, 0.2), heartbeat_interval=0.02)
    # No periodic snapshots: the leader has compacted nothing; only the gap decides.
    sim, drops = _cluster(7, dict.fromkeys(ids, config), snapshot_every=10**9)
    assert _run_until(sim, lambda: _leader(sim, ids) is not None, 2.0)
    leader = _leader(sim, ids)
    assert leader is not None
    lagging = next(i for i in ids if i != leader)
    sim.crash(lagging)
    _write(sim, leader, 300, 1)
    replayed = [0]

    def count(src: int, dst: int, msg: Message) -> bool:
        if dst == lagging and isinstance(msg, Decided):
            replayed[0] += len(msg.values)
        return False

    drops.append(count)
    sim.restart(lagging)
    target = _svc(sim, leader).state.applied_slot
    assert target >= 250
    assert _run_until(sim, lambda: _svc(sim, lagging).state.applied_slot >= target, 5.0)
    node = _svc(sim, lagging)
    assert node.snapshots_installed == 1
    assert replayed[0] < 40, f"{replayed[0]} slots replayed instead of a snapshot"
    assert node.app.get_local("k3") == _svc(sim, leader).app.get_local("k3")


def test_a_node_catching_up_does_not_win_the_next_election() -> None:
    ids = [1, 2, 3]
    slow = ReplicaConfig(election_timeout=(0.3, 0.6), heartbeat_interval=0.01, window=8)
    eager = ReplicaConfig(election_timeout=(0.03, 0.035), heartbeat_interval=0.01, window=8)
    lagging = 3  # the first to time out, always (seed 0: it won and re-proposed 200 slots)
    configs = {1: slow, 2: slow, lagging: eager}
    sim, drops = _cluster(0, configs, snapshot_every=10**9)
    assert _run_until(sim, lambda: _leader(sim, ids) == lagging, 2.0)
    sim.crash(lagging)  # the leader is killed and kept down while clients write
    assert _run_until(sim, lambda: _leader(sim, ids) not in (None, lagging), 3.0)
    leader = _leader(sim, ids)
    assert leader is not None
    _write(sim, leader, 200, 1)
    # It restarts, and is still catching up (its fetches go unanswered) when the
    # current leader is killed too.
    drops.append(
        lambda s, d, m: d == lagging and isinstance(m, (Decided, Snapshot, SnapshotRequest))
    )
    sim.restart(lagging)
    sim.run(sim.now + 0.1)
    behind = _svc(sim, lagging).replica.first_unchosen
    assert behind + 100 < _svc(sim, leader).replica.first_unchosen
    sim.crash(leader)
    other = next(i for i in ids if i not in (leader, lagging))
    accepts: list[int] = []
    drops.append(
        lambda s, d, m: isinstance(m, Accept) and accepts.append(len(m.values)) is not None
    )
    assert _run_until(sim, lambda: _leader(sim, ids) is not None, 5.0)
    assert _leader(sim, ids) == other, "the node far behind won the election"
    assert max(accepts, default=0) <= 8, "a new leader re-proposed a long gap"
    # Once its catch-up is let through, the node that was behind catches up.
    drops.clear()
    _write(sim, other, 5, 1000)
    target = _svc(sim, other).state.applied_slot
    assert _run_until(sim, lambda: _svc(sim, lagging).state.applied_slot >= target, 5.0)
