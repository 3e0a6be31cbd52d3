"""The rebuild rule's fence: a wiped leader's late Accept must not complete a quorum.

The simulator, run on the real WAL, found this (kv seed 224, 3 nodes, ``all,disk``):
leader L accepts slot s itself; its Accept to A is delayed; L's disk is wiped and it
restarts; A and B answer its RebuildQuery with ``last_slot = s - 1``, so the rebuild
covers slots up to s - 1 and finishes; the late Accept then reaches A, which accepts
it (a quorum with L's forgotten vote: chosen); B and the rebuilt L then choose another
value at s. The fix: a peer fences every ballot of the asker before it answers, and
lifts the fence only down to the rebuilt node's bound (``core/replica.py``,
"Rebuilding"). The scenario below is that schedule, scripted.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest

from pyxos.check.invariants import ChosenMonitor, SafetyMonitor, Violation
from pyxos.core.ballot import Ballot
from pyxos.core.messages import (
    Accept,
    ClientRequest,
    Fenced,
    FenceLift,
    Message,
    Prepare,
    PreVote,
    RebuildInfo,
    RebuildQuery,
)
from pyxos.core.quorum import Majority
from pyxos.core.ready import FenceState
from pyxos.core.replica import Replica, ReplicaConfig, Role
from pyxos.sim.kv import service_node_factory
from pyxos.sim.mutants import REPLICA_MUTANTS
from pyxos.sim.world import DATA_DIR, Simulator
from pyxos.statemachine.kv import Command
from pyxos.statemachine.service import ServiceNode

enc = msgspec.msgpack.Encoder()
IDS = [1, 2, 3]


def _replica(sim: Simulator, node_id: int) -> Replica:
    node = sim.node(node_id)
    assert isinstance(node, ServiceNode)
    return node.replica


def _put(sim: Simulator, to: int, seq: int, value: str) -> None:
    cmd = enc.encode(Command(100, seq, "put", "k", value))
    sim.send_external(100, to, ClientRequest(100, 100, seq, cmd))


def wiped_leader_late_accept(seed: int, mutant: str | None = None) -> Simulator:
    """Run the schedule; the monitors raise ``Violation`` if a slot is chosen twice."""
    sim = Simulator(seed)
    quorum = Majority(IDS)
    config = ReplicaConfig(election_timeout=(0.1, 0.2), heartbeat_interval=0.04)
    variant = REPLICA_MUTANTS[mutant] if mutant else Replica
    factory = service_node_factory(
        quorum, config, snapshot_every=1000, snapshot_chunk=1 << 20, replica_factory=variant
    )
    for i in IDS:
        sim.add_node(i, factory)
    sim.observers.append(SafetyMonitor().observe)
    sim.send_observers.append(ChosenMonitor(quorum).observe)
    transmit = sim._transmit
    rules: list[Callable[[int, int, Message], bool]] = []

    def filtered(src: int, dst: int, msg: Message) -> None:
        if not any(rule(src, dst, msg) for rule in rules):
            transmit(src, dst, msg)

    sim._transmit = filtered  # type: ignore[method-assign]

    sim.run(0.5)
    (lead,) = [i for i in IDS if _replica(sim, i).role is Role.LEADER]
    a, b = [i for i in IDS if i != lead]
    for seq in range(1, 4):
        _put(sim, lead, seq, f"a{seq}")
        sim.run(sim.now + 0.05)
    old_ballot = _replica(sim, lead).ballot
    s = _replica(sim, lead).next_slot

    # The leader's Accepts of slot s: the one to A is held back, the one to B lost.
    held: list[Message] = []

    def hold(src: int, dst: int, msg: Message) -> bool:
        if src == lead and isinstance(msg, Accept) and msg.ballot == old_ballot:
            if dst == a and msg.slot == s and not held:
                held.append(msg)
            return True
        return False

    rules.append(hold)
    _put(sim, lead, 4, "v")
    sim.run(sim.now + 0.01)
    assert held, "the leader sent no Accept for slot s"
    assert s in _replica(sim, lead).acceptor.accepted, "the leader did not accept s itself"

    # No election among A and B while the wiped leader rebuilds (in seed 224 the
    # rebuild was faster than their election timeout).
    def no_election(src: int, dst: int, msg: Message) -> bool:
        return isinstance(msg, (PreVote, Prepare))

    rules.append(no_election)
    sim.crash(lead)
    sim.procs[lead].fs.wipe(DATA_DIR)  # the disk was wiped
    sim.restart(lead)
    assert _replica(sim, lead).rebuilding
    sim.run(sim.now + 2.0, stop=lambda: not _replica(sim, lead).rebuilding)
    assert not _replica(sim, lead).rebuilding, "the rebuild did not finish"
    assert _replica(sim, lead).first_unchosen == s, "the rebuild covered slot s"

    # The late Accept reaches A; then A is cut off and B or the rebuilt node leads.
    transmit(lead, a, held[0])
    sim.run(sim.now + 0.05)
    rules.remove(no_election)
    sim.partition([[a], [lead, b]])
    for seq in range(5, 8):
        _put(sim, b, seq, f"w{seq}")
        _put(sim, lead, seq, f"w{seq}")
        sim.run(sim.now + 0.5)
    assert any(_replica(sim, i).first_unchosen > s for i in (lead, b)), "slot s never chosen"
    return sim


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_wiped_leaders_late_accept_completes_no_quorum(seed: int) -> None:
    sim = wiped_leader_late_accept(seed)
    assert sum(_replica(sim, i).fenced_refused for i in IDS) >= 1, "the late Accept was not refused"


@pytest.mark.parametrize("seed", [0, 1])
def test_without_the_fence_the_slot_is_chosen_twice(seed: int) -> None:
    with pytest.raises(Violation, match="agreement"):
        wiped_leader_late_accept(seed, mutant="rebuild-no-fence")


def _node(node_id: int, **kwargs: object) -> Replica:
    import random

    return Replica(node_id, Majority(IDS), random.Random(node_id), **kwargs)  # type: ignore[arg-type]


def _sent(r: Replica) -> list[Message]:
    ready = r.ready()
    r.advance()
    return [s.msg for s in ready.send_now + ready.send_after_sync]


def test_the_answer_leaves_only_after_the_fence_is_durable() -> None:
    p = _node(2, promised=Ballot(3, 1))
    p.step(RebuildQuery(1, nonce=77))
    ready = p.ready()
    assert [f.nonce for f in ready.persist.fences] == [77]
    assert not any(isinstance(s.msg, RebuildInfo) for s in ready.send_now)
    (info,) = [s.msg for s in ready.send_after_sync if isinstance(s.msg, RebuildInfo)]
    assert info.nonce == 77 and info.promised == Ballot(3, 1)


def test_a_fence_refuses_every_ballot_of_its_owner_until_lifted_to_a_bound() -> None:
    p = _node(2)
    p.step(RebuildQuery(1, nonce=5))
    _sent(p)
    p.step(Accept(1, Ballot(9, 1), 0, (b"late",)))  # even far above anything we saw
    assert 0 not in p.acceptor.accepted
    assert any(isinstance(m, Fenced) and m.nonces == (5,) for m in _sent(p))
    p.step(FenceLift(1, 4, Ballot(9, 1)))  # another incarnation's nonce: ignored
    assert p.fences[1].up == {5}
    p.step(FenceLift(1, 5, Ballot(9, 1)))
    assert p.ready().persist.fences[-1].bound == Ballot(9, 1)
    p.advance()
    p.step(Accept(1, Ballot(9, 1), 0, (b"late",)))  # the old incarnation's ballot
    assert 0 not in p.acceptor.accepted
    p.step(Accept(3, Ballot(9, 3), 0, (b"other",)))  # another owner: not fenced
    p.step(Accept(1, Ballot(10, 1), 1, (b"new",)))  # the rebuilt node's ballot
    assert p.acceptor.accepted[1].value == b"new"


def test_an_answer_to_another_incarnations_query_is_not_counted() -> None:
    x = _node(1, rebuilding=True)
    nonce = x.rebuild_nonce
    x.step(RebuildInfo(2, Ballot(1, 2), 5, nonce=nonce + 1))
    assert 2 not in x.rebuild_info
    x.step(RebuildInfo(2, Ballot(1, 2), 5, nonce=nonce))
    assert 2 in x.rebuild_info


def test_a_lost_lift_is_sent_again_when_a_peer_says_it_still_fences() -> None:
    x = _node(1, promised=Ballot(4, 2))
    x.step(Fenced(2, (11, 12)))
    lifts = [m for m in _sent(x) if isinstance(m, FenceLift)]
    assert [(m.nonce, m.bound) for m in lifts] == [(11, Ballot(4, 2)), (12, Ballot(4, 2))]
    rebuilding = _node(1, rebuilding=True)
    rebuilding.step(Fenced(2, (11,)))
    assert not [m for m in _sent(rebuilding) if isinstance(m, FenceLift)]


def test_fences_survive_a_restart_and_a_checkpoint(tmp_path: object) -> None:
    from pathlib import Path

    from pyxos.core.ready import Fence, Persist
    from pyxos.storage.durable import DurableAcceptor

    path = Path(str(tmp_path)) / "wal"
    d, _ = DurableAcceptor.open(path)
    d.write(Persist(fences=[Fence(1, 5), Fence(1, 6), Fence(3, 7)]))
    d.write(Persist(fences=[Fence(1, 5, Ballot(2, 1))]))
    d.sync()
    d.close()
    d, state = DurableAcceptor.open(path)
    assert state.fences == {1: FenceState(Ballot(2, 1), {6}), 3: FenceState(up={7})}
    first = d.checkpoint(Ballot(2, 1), [], 0)
    d.sync()
    d.close()
    from pyxos.storage.durable import Recovered, _decode, _replay

    d, _ = DurableAcceptor.open(path)
    replayed = Recovered()
    for record in _replay(d.wal):
        if record.index >= first:
            _decode(record.index, record.rtype, record.payload, replayed)
    d.close()
    assert replayed.fences == state.fences


def test_a_rebuilt_node_adopts_the_fences_its_peers_hold() -> None:
    """A peer wiped after it answered must not forget the fence (it could otherwise
    rebuild with a promise equal to the old ballot and accept its late Accept)."""
    from pyxos.core.messages import Fence

    q = _node(3, promised=Ballot(2, 1))
    q.step(RebuildQuery(1, nonce=5))
    _sent(q)
    q.step(FenceLift(1, 5, Ballot(2, 1)))
    q.step(RebuildQuery(2, nonce=8))  # node 2 was wiped after it answered node 1
    (info,) = [m for m in _sent(q) if isinstance(m, RebuildInfo)]
    assert Fence(1, -1, Ballot(2, 1)) in info.fences
    p = _node(2, rebuilding=True)
    p.step(RebuildInfo(1, Ballot(2, 1), -1, nonce=p.rebuild_nonce))
    p.step(info.__class__(**{**msgspec.structs.asdict(info), "nonce": p.rebuild_nonce}))
    assert p.rebuild_caught_up
    p.finish_rebuild(0)
    assert p.acceptor.promised == Ballot(2, 1)
    assert p.ready().persist.fences, "the adopted fence is durable with the rebuild's end"
    p.advance()
    p.step(Accept(1, Ballot(2, 1), 0, (b"late",)))  # node 1's old leader's late Accept
    assert 0 not in p.acceptor.accepted


# The same gap in pyxos model's smallest scope (3 replicas, the real core objects):
# leader 1 accepts slot 0 itself, is wiped and rebuilds before its Accept reaches
# node 3; node 2 then leads with the rebuilt node 1.
WIPED_LEADER_SCENARIO = [
    "timeout 1",
    "PreVote 1 2",
    "PreVoteReply 2 1",
    "Prepare 1 2",
    "Promise 2 1",
    "propose 1",  # leader 1 accepts w1 at slot 0; its Accepts are in flight
    "wipe 1",  # its disk is wiped: it restarts rebuilding
    "RebuildQuery 1 2",
    "RebuildQuery 1 3",
    "RebuildInfo 2 1",
    "RebuildInfo 3 1",  # both answer last_slot -1: the rebuild ends at once
    "Accept 1 3",  # the late Accept of ballot 1.1 reaches node 3
    "timeout 2",
    "PreVote 2 1",
    "PreVoteReply 1 2",
    "Prepare 2 1",
    "Promise 1 2",  # nobody reports slot 0 to node 2's phase 1
    "propose 2",
    "Accept 2 1",  # w2 chosen at slot 0 by 1 and 2 in 2.2
]


def _wiped_leader_model(mutant: str | None, rebuild_checks: bool = True) -> object:
    from pyxos.model.engine import Budget
    from pyxos.model.replica import ReplicaModel

    budget = Budget(timeouts=2, proposals=2, wipes=1)
    return ReplicaModel(3, 2, budget, mutant=mutant, network="exact", rebuild_checks=rebuild_checks)


def test_model_scope_the_late_accept_is_refused() -> None:
    from pyxos.model.engine import scripted

    actions, w, violation = scripted(_wiped_leader_model(None), WIPED_LEADER_SCENARIO)  # type: ignore[arg-type]
    assert violation is None and len(actions) == len(WIPED_LEADER_SCENARIO)
    assert 0 not in w.procs[3].node.acceptor.accepted
    assert w.procs[3].node.fenced_refused == 1


def test_model_scope_without_the_fence_two_values_are_chosen() -> None:
    from pyxos.model.engine import scripted

    model = _wiped_leader_model("rebuild-no-fence", rebuild_checks=False)
    _, _, violation = scripted(model, WIPED_LEADER_SCENARIO)  # type: ignore[arg-type]
    assert violation is not None and violation.check == "agreement"
    assert "b'w1' and b'w2' were both chosen" in violation.detail
    # The model's rebuild check sees it at the late Accept itself, 7 actions earlier.
    checked = _wiped_leader_model("rebuild-no-fence")
    actions, _, violation = scripted(checked, WIPED_LEADER_SCENARIO)  # type: ignore[arg-type]
    assert len(actions) == WIPED_LEADER_SCENARIO.index("Accept 1 3") + 1
    assert violation is not None and violation.check == "rebuild-fence"


# A fence lost with its holder's disk before any other peer held it (5 replicas, the
# real core objects). Leader 1 (ballot 1.1, promised by 1, 2, 3) accepts w1 at slot 0
# itself and is wiped with its Accepts in flight. Node 2 answers its RebuildQuery (fence
# up), is wiped, and rebuilds from 1 (rebuilding), 3, 4 and 5, none of which has been
# asked by node 1 yet: it adopts no fence, and its promise is 1.1. Node 3 does the same
# (node 2 no longer holds the fence either). The late Accepts of 1.1 then reach 2 and
# 3: with the vote node 1 forgot, w1 is chosen at slot 0. Node 1's rebuild counts the
# answers 2 and 3 gave before their wipes (last slot -1), and 4 and 5's, so it ends
# below slot 0; as leader with 4 and 5, nobody reports slot 0 and w2 is chosen there.
LOST_FENCE_SCENARIO = [
    "timeout 1",
    "PreVote 1 2",
    "PreVote 1 3",
    "PreVoteReply 2 1",
    "PreVoteReply 3 1",
    "Prepare 1 2",
    "Prepare 1 3",
    "Promise 2 1",
    "Promise 3 1",
    "propose 1",  # leader 1 accepts w1 at slot 0; its Accepts are in flight
    "wipe 1",
    "RebuildQuery 1 2",
    "RebuildInfo 2 1",  # node 2 fences node 1, then answers
    "wipe 2",  # ... and loses the fence with its disk
    "RebuildQuery 2 1",
    "RebuildQuery 2 3",
    "RebuildQuery 2 4",
    "RebuildQuery 2 5",
    "RebuildInfo 1 2",
    "RebuildInfo 3 2",
    "RebuildInfo 4 2",
    "RebuildInfo 5 2",  # nobody reports a fence against node 1: node 2 votes at 1.1
    "RebuildQuery 1 3",
    "RebuildInfo 3 1",
    "wipe 3",
    "RebuildQuery 3 1",
    "RebuildQuery 3 2",
    "RebuildQuery 3 4",
    "RebuildQuery 3 5",
    "RebuildInfo 1 3",
    "RebuildInfo 2 3",
    "RebuildInfo 4 3",
    "RebuildInfo 5 3",
    "Accept 1 2",  # the late Accepts of 1.1
    "Accept 1 3",
    "Accepted 2 1",
    "Accepted 3 1",  # with node 1's forgotten vote: w1 chosen at slot 0
    "RebuildQuery 1 4",
    "RebuildQuery 1 5",
    "RebuildInfo 4 1",
    "RebuildInfo 5 1",  # node 1's rebuild ends below slot 0
    "FenceLift 1 4",
    "FenceLift 1 5",
    "timeout 1",
    "PreVote 1 4",
    "PreVote 1 5",
    "PreVoteReply 4 1",
    "PreVoteReply 5 1",
    "Prepare 1 4",
    "Prepare 1 5",
    "Promise 4 1",
    "Promise 5 1",
    "propose 1",
    "Accept 1 4",
    "Accept 1 5",
    "Accepted 4 1",
    "Accepted 5 1",
]


def _scripted_newest(
    model: object, script: list[str], optional: frozenset[str] = frozenset()
) -> tuple[object, object]:
    """Like ``engine.scripted``, but a ``MESSAGE SRC DST`` line delivers the newest such
    message in flight (the duplicating network keeps every message ever sent, and an
    old Prepare of the same pair would come first), and a line in ``optional`` is
    skipped when nothing of it is in flight. Returns the last state and the violation."""
    from pyxos.model.engine import _try

    w = model.initial()  # type: ignore[attr-defined]
    for line in script:
        words = line.split()
        enabled = list(model.actions(w))  # type: ignore[attr-defined]
        if len(words) == 2:
            action = (words[0], int(words[1]))
            found = [action] if action in enabled else []
        else:
            kind, src, dst = words[0], int(words[1]), int(words[2])
            found = [
                e
                for e in enabled
                if e[0] == "deliver"
                and type(e[2]).__name__ == kind
                and e[2].src == src
                and e[1] == dst
            ]
        if not found and line in optional:
            continue
        assert found, f"not enabled: {line!r}"
        r = _try(model, w, found[-1])  # type: ignore[arg-type]
        if isinstance(r, Violation):
            return w, r
        w = r
    return w, None


def test_model_scope_a_fence_lost_with_its_holders_disk_is_not_a_gap() -> None:
    """Nodes 2 and 3 lost the fence they put up against node 1 with their disks; each
    fences node 1's ballots up to the promise it rebuilt with, as node 1 answered it
    that it was rebuilding (before the fix: agreement violated at slot 0)."""
    from pyxos.model.engine import Budget
    from pyxos.model.replica import ReplicaModel

    model = ReplicaModel(5, 2, Budget(timeouts=2, proposals=2, wipes=3))
    late = LOST_FENCE_SCENARIO.index("Accept 1 3") + 1
    w, violation = _scripted_newest(model, LOST_FENCE_SCENARIO[:late])
    assert violation is None, violation
    for peer in (2, 3):
        node = w.procs[peer].node  # type: ignore[attr-defined]
        assert node.fenced_refused == 1 and 0 not in node.acceptor.accepted
    _, violation = _scripted_newest(
        model, LOST_FENCE_SCENARIO, optional=frozenset({"Accepted 2 1", "Accepted 3 1"})
    )
    assert violation is None, violation


# The same loss, but the wiped peers ask node 1 only once its rebuild has ended: it
# answers them as a voting node, with the bound its own old ballots are fenced to.
LOST_FENCE_LATE_ASK_SCENARIO = [
    *LOST_FENCE_SCENARIO[: LOST_FENCE_SCENARIO.index("wipe 1") + 1],
    "RebuildQuery 1 2",
    "RebuildInfo 2 1",  # node 2 fences node 1, then answers
    "wipe 2",
    "RebuildQuery 2 3",
    "RebuildQuery 2 4",
    "RebuildQuery 2 5",
    "RebuildInfo 3 2",
    "RebuildInfo 4 2",
    "RebuildInfo 5 2",  # answers taken before any of them fenced node 1
    "RebuildQuery 1 3",
    "RebuildInfo 3 1",
    "wipe 3",
    "RebuildQuery 3 2",
    "RebuildQuery 3 4",
    "RebuildQuery 3 5",
    "RebuildInfo 2 3",
    "RebuildInfo 4 3",
    "RebuildInfo 5 3",
    "RebuildQuery 1 4",
    "RebuildQuery 1 5",
    "RebuildInfo 4 1",
    "RebuildInfo 5 1",  # node 1's rebuild ends below slot 0
    "RebuildQuery 2 1",
    "RebuildInfo 1 2",
    "RebuildQuery 3 1",
    "RebuildInfo 1 3",  # nodes 2 and 3 end their rebuilds, promise 1.1
    "Accept 1 2",  # the late Accepts of 1.1
    "Accept 1 3",
    "Accepted 2 1",
    "Accepted 3 1",
    *LOST_FENCE_SCENARIO[LOST_FENCE_SCENARIO.index("FenceLift 1 4") :],
]


def test_model_scope_a_fence_lost_with_its_holders_disk_late_ask() -> None:
    """As above, but node 1 answers the wiped peers after its rebuild: its answer
    carries the bound of its own old ballots, which they adopt (before the fix:
    agreement violated at slot 0)."""
    from pyxos.model.engine import Budget
    from pyxos.model.replica import ReplicaModel

    model = ReplicaModel(5, 2, Budget(timeouts=2, proposals=2, wipes=3))
    script = LOST_FENCE_LATE_ASK_SCENARIO
    late = script.index("Accept 1 3") + 1
    w, violation = _scripted_newest(model, script[:late])
    assert violation is None, violation
    for peer in (2, 3):
        node = w.procs[peer].node  # type: ignore[attr-defined]
        assert not node.rebuilding
        assert node.fenced_refused == 1 and 0 not in node.acceptor.accepted
    _, violation = _scripted_newest(
        model, script, optional=frozenset({"Accepted 2 1", "Accepted 3 1"})
    )
    assert violation is None, violation


def test_a_peer_that_crashes_between_the_fence_and_the_answer() -> None:
    """The fence was durable, the answer never left: after the restart the recovered
    fence still refuses the old ballot, and the asker's repeated query (same nonce)
    is answered without a second fence record."""
    from pyxos.storage.memory import MemoryStorage

    disk = MemoryStorage()
    p = _node(2, promised=Ballot(3, 1))
    p.step(RebuildQuery(1, nonce=41))
    ready = p.ready()
    disk.write(ready.persist)
    disk.sync()
    # Crash before the driver sends the answer: a new incarnation from the disk.
    p = _node(2, promised=disk.promised, fences=disk.fences)
    assert p.fences[1].up == {41}
    p.step(Accept(1, Ballot(3, 1), 0, (b"late",)))
    assert 0 not in p.acceptor.accepted
    _sent(p)
    p.step(RebuildQuery(1, nonce=41))
    ready = p.ready()
    assert not ready.persist.fences
    (info,) = [s.msg for s in ready.send_after_sync if isinstance(s.msg, RebuildInfo)]
    assert info.nonce == 41 and info.last_slot == -1
