"""Multi-Paxos replica transitions, each test named after the rule it checks."""

import random

from pyxos.core.ballot import Ballot
from pyxos.core.messages import (
    Accept,
    Accepted,
    Commit,
    Decided,
    Entry,
    Fetch,
    Nack,
    Prepare,
    PreVote,
    PreVoteReply,
    Promise,
    ReadAck,
)
from pyxos.core.quorum import Majority
from pyxos.core.replica import NOOP, Replica, ReplicaConfig, Role

Q3 = Majority([1, 2, 3])
CFG = ReplicaConfig(election_timeout=(0.1, 0.2), heartbeat_interval=0.02, window=4)


def replica(node_id: int = 1, **kw: object) -> Replica:
    return Replica(node_id, Q3, random.Random(node_id), config=CFG, **kw)  # type: ignore[arg-type]


def sent(r: Replica) -> list[tuple[tuple[int, ...], object]]:
    ready = r.ready()
    out = [(s.to, s.msg) for s in ready.send_now + ready.send_after_sync]
    return out


def elect(r: Replica, promises: list[Promise] | None = None) -> Ballot:
    """Drive ``r`` through pre-vote and phase 1 with the given peer promises."""
    r.tick(1.0)
    r.advance()
    b = r.ballot
    r.step(PreVoteReply(2, b, True))
    r.advance()
    b = r.ballot
    assert r.role is Role.CANDIDATE
    for p in promises if promises is not None else [Promise(2, b)]:
        r.step(Promise(p.src, b, p.accepted, p.log_start))
    return b


def test_a_follower_that_hears_no_leader_asks_for_a_prevote_before_any_promise() -> None:
    r = replica()
    r.tick(1.0)
    ready = r.ready()
    assert r.role is Role.PRECANDIDATE
    assert not ready.persist, "a pre-vote changes no durable state"
    assert [type(s.msg) for s in ready.send_now] == [PreVote]


def test_a_prevote_is_refused_while_a_live_leader_is_heard() -> None:
    r = replica(2)
    r.step(Commit(3, Ballot(1, 3), 0))
    r.advance()
    r.tick(0.01)
    r.step(PreVote(1, Ballot(2, 1)))
    reply = r.ready().send_now[-1].msg
    assert isinstance(reply, PreVoteReply) and not reply.granted and reply.leader == 3


def test_with_a_prevote_quorum_the_candidate_promises_itself_before_preparing() -> None:
    r = replica()
    r.tick(1.0)
    r.advance()
    r.step(PreVoteReply(2, r.ballot, True))
    ready = r.ready()
    assert r.role is Role.CANDIDATE
    assert ready.persist.promised == r.ballot
    assert [(s.to, type(s.msg)) for s in ready.send_after_sync] == [((2, 3), Prepare)]


def test_new_leader_reproposes_the_highest_ballot_value_and_fills_gaps_with_noops() -> None:
    # Our own acceptor accepted "x" at slot 0 in ballot 1.3; node 2 reports "old" there
    # in the lower ballot 1.2, and "z" at slot 2. Nobody reports slot 1.
    r = replica(accepted=[Entry(0, Ballot(1, 3), b"x")], promised=Ballot(1, 3))
    r.tick(1.0)
    r.advance()
    r.step(PreVoteReply(2, r.ballot, True))
    r.advance()
    b = r.ballot
    r.step(Promise(2, b, (Entry(0, Ballot(1, 2), b"old"), Entry(2, Ballot(1, 2), b"z"))))
    assert r.role is Role.LEADER
    accepts = [m for _, m in sent(r) if isinstance(m, Accept)]
    assert accepts == [Accept(1, b, 0, (b"x", NOOP, b"z"), 0)]


def test_leader_counts_its_own_vote_only_after_its_sync() -> None:
    r = replica()
    b = elect(r)
    r.advance()
    assert r.propose(b"cmd")
    ready = r.ready()
    assert [e.value for e in ready.persist.accepted] == [b"cmd"]
    own = [s for s in ready.send_after_sync if s.to == (1,)]
    assert own and own[0].msg == Accepted(1, b, 0, 1)
    assert not ready.committed


def test_a_slot_is_chosen_on_a_phase2_quorum_of_the_same_ballot() -> None:
    r = replica()
    b = elect(r)
    r.advance()
    r.propose(b"a")
    r.advance()
    r.step(Accepted(2, Ballot(b.round - 1, 2), 0))
    assert not r.ready().committed
    r.step(Accepted(1, b, 0))
    assert not r.ready().committed
    r.step(Accepted(2, b, 0))
    assert [e.value for e in r.ready().committed] == [b"a"]
    assert r.first_unchosen == 1


def test_pipelining_keeps_at_most_window_slots_in_flight() -> None:
    r = replica()
    b = elect(r)
    r.advance()
    for i in range(6):
        r.propose(bytes([i]))
    assert len(r.in_flight) == 4 and len(r.queued) == 2
    r.advance()
    r.step(Accepted(1, b, 0, 4))
    r.step(Accepted(2, b, 0, 4))
    ready = r.ready()
    assert [e.slot for e in ready.committed] == [0, 1, 2, 3]
    assert [m.slot for m in (s.msg for s in ready.send_now) if isinstance(m, Accept)] == [4]


def test_follower_learns_from_commit_only_values_accepted_in_that_ballot() -> None:
    r = replica(2)
    old, new = Ballot(1, 1), Ballot(2, 3)
    r.step(Accept(1, old, 0, (b"stale",), 0))
    r.step(Accept(3, new, 1, (b"fresh",), 0))
    r.advance()
    r.step(Commit(3, new, 2))
    ready = r.ready()
    assert not ready.committed, "slot 0 was accepted in another ballot: fetch it"
    fetches = [s.msg for s in ready.send_now if isinstance(s.msg, Fetch)]
    assert fetches == [] or fetches[0].slot == 0
    r.advance()
    r.tick(r.now + 1.0)
    fetches = [s.msg for s in r.ready().send_now if isinstance(s.msg, Fetch)]
    assert fetches and fetches[0] == Fetch(2, 0, 2)
    r.advance()
    r.step(Decided(3, 0, (b"chosen0", b"fresh")))
    assert [(e.slot, e.value) for e in r.ready().committed] == [(0, b"chosen0"), (1, b"fresh")]


def test_a_higher_ballot_in_a_nack_makes_the_leader_step_down() -> None:
    r = replica()
    b = elect(r)
    r.advance()
    r.propose(b"x")
    r.step(Nack(2, b, Ballot(b.round + 5, 3), 3))
    assert r.role is Role.FOLLOWER and r.leader == 3
    assert not r.in_flight


def test_an_accept_below_the_promise_is_refused_with_the_promise() -> None:
    r = replica(2)
    r.tick(CFG.lease_seconds)  # past the hold a start places on promises
    r.step(Prepare(3, Ballot(5, 3), 0))
    r.advance()
    r.step(Accept(1, Ballot(4, 1), 0, (b"late",), 0))
    ready = r.ready()
    assert not ready.persist.accepted
    assert ready.send_after_sync[0].msg == Nack(2, Ballot(4, 1), Ballot(5, 3), 0)


def test_a_new_leader_fetches_slots_a_promiser_compacted_instead_of_reproposing() -> None:
    r = replica()
    r.tick(1.0)
    r.advance()
    r.step(PreVoteReply(2, r.ballot, True))
    r.advance()
    b = r.ballot
    r.step(Promise(2, b, (Entry(5, Ballot(1, 2), b"v5"),), log_start=5))
    assert r.role is Role.LEADER
    msgs = [m for _, m in sent(r)]
    assert Fetch(1, 0, 5) in msgs
    # Slot 5 lies beyond first_unchosen + alpha (window 4): its configuration is not
    # known until the compacted slots are learned (docs/membership.md), so the
    # re-proposal waits for the fetch.
    assert not [m for m in msgs if isinstance(m, Accept)]
    r.step(Decided(2, 0, (b"a", b"b", b"c", b"d", b"e"), 5))
    accepts = [m for _, m in sent(r) if isinstance(m, Accept)]
    assert accepts == [Accept(1, b, 5, (b"v5",), 5)]


def test_catch_up_serves_only_chosen_values() -> None:
    r = replica()
    b = elect(r)
    r.advance()
    r.propose(b"a")
    r.propose(b"b")
    r.advance()
    r.step(Accepted(1, b, 0, 2))
    r.step(Accepted(2, b, 0, 1))
    r.advance()
    r.step(Fetch(3, 0, 10))
    decided = [s.msg for s in r.ready().send_now if isinstance(s.msg, Decided)]
    assert decided == [Decided(1, 0, (b"a",), 1)]


def test_leader_resends_unacknowledged_accepts_on_heartbeat() -> None:
    r = replica()
    b = elect(r)
    r.advance()
    r.propose(b"a")
    r.advance()
    r.step(Accepted(1, b, 0))
    r.tick(r.now + 1.0)
    ready = r.ready()
    resent = [(s.to, s.msg) for s in ready.send_now if isinstance(s.msg, Accept)]
    assert resent == [((2, 3), Accept(1, b, 0, (b"a",), 0))]


def test_a_read_waits_for_a_quorum_to_confirm_the_leadership() -> None:
    r = replica()
    b = elect(r)
    r.advance()
    assert r.read("t1")
    ready = r.ready()
    probes = [s.msg for s in ready.send_now if isinstance(s.msg, Commit) and s.msg.read]
    assert probes and probes[0].read == r.read_probe
    assert not ready.reads, "our own ack alone is not a quorum"
    r.advance()
    r.step(ReadAck(2, Ballot(b.round - 1, 2), r.read_probe))
    assert not r.ready().reads, "an ack for another ballot does not count"
    r.step(ReadAck(2, b, r.read_probe))
    assert r.ready().reads == [("t1", True)]


def test_a_read_waits_until_its_read_index_is_chosen() -> None:
    r = replica()
    b = elect(r)
    r.advance()
    r.propose(b"w")
    r.read("after-w")
    r.ready()
    r.advance()
    r.step(ReadAck(2, b, r.read_probe))
    assert not r.ready().reads, "the write proposed before the read is not chosen yet"
    r.advance()
    r.step(Accepted(1, b, 0))
    r.step(Accepted(2, b, 0))
    ready = r.ready()
    assert [e.slot for e in ready.committed] == [0]
    assert ready.reads == [("after-w", True)]


def test_reads_pending_when_the_leader_steps_down_are_refused() -> None:
    r = replica()
    b = elect(r)
    r.advance()
    r.read("t")
    r.ready()
    r.advance()
    r.step(Nack(2, b, Ballot(b.round + 1, 3), 3))
    assert r.ready().reads == [("t", False)]
    assert not r.read("t2"), "a follower does not take reads"


def test_a_follower_confirms_a_probe_only_for_a_ballot_it_has_not_outbid() -> None:
    r = replica(2)
    r.step(Commit(3, Ballot(1, 3), 0, read=7))
    assert ReadAck(2, Ballot(1, 3), 7) in [s.msg for s in r.ready().send_now]
    r.advance()
    r.tick(r.now + 1.0)  # past the lease granted to node 3
    r.step(Prepare(1, Ballot(5, 1), 0))
    r.advance()
    r.step(Commit(3, Ballot(1, 3), 0, read=8))
    msgs = [s.msg for s in r.ready().send_now]
    assert not any(isinstance(m, ReadAck) for m in msgs)


# -- bootstrapping (the bootstrap flag on an empty disk) and a lost majority ------------


def _answers(r: Replica) -> list[object]:
    return [m for _, m in sent(r)]


def test_a_bootstrapping_node_votes_only_once_every_peer_answered_fresh() -> None:
    from pyxos.core.messages import RebuildInfo, RebuildQuery

    r = replica(1, bootstrapping=True)
    assert r.rebuilding and r.bootstrapping
    r.tick(0.0)
    assert any(isinstance(m, RebuildQuery) for m in _answers(r))
    r.advance()
    r.step(RebuildInfo(2, Ballot(0, 0), -1, rebuilding=True, fresh=True, nonce=r.rebuild_nonce))
    assert r.rebuilding, "one fresh answer of two is not enough"
    r.step(Prepare(3, Ballot(1, 3)))
    assert not [m for m in _answers(r) if isinstance(m, Promise)], "no vote while bootstrapping"
    r.advance()
    r.step(RebuildInfo(3, Ballot(0, 0), -1, rebuilding=False, fresh=True, nonce=r.rebuild_nonce))
    assert not r.rebuilding and not r.bootstrapping
    ready = r.ready()
    assert ready.persist.rebuilt == 0, "the end of the bootstrap is durable"


def test_a_bootstrapping_node_that_meets_a_peer_with_state_rebuilds() -> None:
    from pyxos.core.messages import RebuildInfo

    r = replica(1, bootstrapping=True)
    r.tick(0.0)
    r.advance()
    r.step(RebuildInfo(2, Ballot(3, 2), 7, nonce=r.rebuild_nonce))  # a member holding state
    assert r.rebuilding and not r.bootstrapping, "the cluster exists: rebuild"
    r.step(RebuildInfo(3, Ballot(0, 0), -1, rebuilding=True, fresh=True, nonce=r.rebuild_nonce))
    assert r.rebuilding, "a peer bootstrapping too bounds nothing"
    assert r.majority_lost, "node 1 and node 3 hold no state: a quorum"


def test_a_member_answers_fresh_only_if_it_never_held_state() -> None:
    from pyxos.core.messages import RebuildInfo, RebuildQuery

    r = replica(2)
    r.step(RebuildQuery(1))
    (info,) = _answers(r)
    assert isinstance(info, RebuildInfo) and info.fresh and not info.rebuilding
    held = replica(2, promised=Ballot(1, 3))  # a durable promise: it held state
    held.step(RebuildQuery(1))
    (info,) = _answers(held)
    assert isinstance(info, RebuildInfo) and not info.fresh and not info.rebuilding


def test_a_member_that_finished_its_bootstrap_lets_the_others_finish_theirs() -> None:
    from pyxos.core.messages import RebuildInfo, RebuildQuery

    nodes = {i: replica(i, bootstrapping=True) for i in (1, 2, 3)}
    # Node 1 hears both others bootstrapping and finishes first...
    nodes[1].step(
        RebuildInfo(2, Ballot(0, 0), -1, rebuilding=True, fresh=True, nonce=nodes[1].rebuild_nonce)
    )
    nodes[1].step(
        RebuildInfo(3, Ballot(0, 0), -1, rebuilding=True, fresh=True, nonce=nodes[1].rebuild_nonce)
    )
    assert not nodes[1].rebuilding
    nodes[1].advance()
    # ...and node 2 then hears a member that has never held state: still a new cluster.
    nodes[1].step(RebuildQuery(2, nodes[2].rebuild_nonce))
    (info,) = _answers(nodes[1])
    nodes[2].step(info)  # type: ignore[arg-type]
    nodes[2].step(
        RebuildInfo(3, Ballot(0, 0), -1, rebuilding=True, fresh=True, nonce=nodes[2].rebuild_nonce)
    )
    assert not nodes[2].rebuilding


def test_a_majority_without_state_is_detected_and_cleared_when_a_peer_recovers() -> None:
    from pyxos.core.messages import RebuildInfo

    r = replica(1, rebuilding=True)
    r.tick(0.0)
    r.advance()
    assert not r.majority_lost, "nobody answered yet"
    r.step(RebuildInfo(2, Ballot(0, 0), -1, rebuilding=True, nonce=r.rebuild_nonce))
    assert r.majority_lost, "node 1 and node 2 lost their state: no rebuild can finish"
    assert r.peers_without_state() == {2} and r.peers_unanswered() == {3}
    r.step(RebuildInfo(2, Ballot(2, 3), 4, nonce=r.rebuild_nonce))
    assert not r.majority_lost


def test_a_read_under_a_lease_waits_for_the_new_leaders_reproposals() -> None:
    """Under a lease a read's index is max(first_unchosen, read_floor): a write an earlier
    leader may have acknowledged (here: accepted at slot 0 in ballot (1, 3), reported by
    a promiser) is re-proposed below read_floor, and the read waits until it is chosen.
    With first_unchosen alone the read would be served at once without it."""
    r = replica()
    b = elect(r, [Promise(2, Ballot(0, 0), (Entry(0, Ballot(1, 3), b"w"),))])
    assert r.role is Role.LEADER and r.first_unchosen == 0 and r.read_floor == 1
    r.ready()
    r.advance()
    r.read("takes the lease")  # no lease yet: this read's probe gets one
    r.ready()
    r.advance()
    r.step(ReadAck(2, b, r.read_probe))
    assert r.lease_until > r.now, "the probe's quorum gave the lease"
    assert not r.ready().reads, "slot 0 (the re-proposal) is not chosen yet"
    r.advance()
    r.read("under the lease")
    assert not r.ready().reads, "the re-proposed write is not chosen yet"
    r.advance()
    r.step(Accepted(1, b, 0))
    r.step(Accepted(2, b, 0))
    ready = r.ready()
    assert [e.slot for e in ready.committed] == [0]
    assert ready.reads == [("takes the lease", True), ("under the lease", True)]
