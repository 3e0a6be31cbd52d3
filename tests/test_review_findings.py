"""Regression tests from a review of the Multi-Paxos core: behaviours checked and found
sound, pinned so that a change that breaks them is caught."""

import random

import msgspec

from pyxos.core.ballot import Ballot
from pyxos.core.messages import Accepted, ClientReply, ClientRequest, Prepare, PreVoteReply, Promise
from pyxos.core.quorum import Majority
from pyxos.core.replica import Replica, ReplicaConfig, Role
from pyxos.statemachine.kv import Command, KVStore
from pyxos.statemachine.service import ServiceNode

Q5 = Majority([1, 2, 3, 4, 5])
CFG = ReplicaConfig(election_timeout=(0.1, 0.2), heartbeat_interval=0.02, window=1)
enc = msgspec.msgpack.Encoder()


def leader5() -> Replica:
    r = Replica(1, Q5, random.Random(1), config=CFG)
    r.tick(1.0)
    r.advance()
    for p in (2, 3):
        r.step(PreVoteReply(p, r.ballot, True))
    r.advance()
    assert r.is_leader is False and r.role is Role.CANDIDATE
    for p in (2, 3):
        r.step(Promise(p, r.ballot))
    assert r.is_leader
    r.advance()
    return r


def test_a_duplicated_accepted_counts_once() -> None:
    r = leader5()
    assert r.propose(b"x")
    r.advance()
    slot = r.next_slot - 1
    r.step(Accepted(1, r.ballot, slot, 1))  # our own, after the sync
    for _ in range(3):  # the network duplicates one follower's reply
        r.step(Accepted(2, r.ballot, slot, 1))
    assert slot not in r.chosen and r.first_unchosen <= slot
    r.step(Accepted(3, r.ballot, slot, 1))
    assert r.chosen[slot] == b"x"


def test_a_read_index_excludes_proposals_still_queued_behind_the_window() -> None:
    r = leader5()
    assert r.propose(b"in-flight")
    assert r.propose(b"queued")  # window=1: waits, not yet in a slot
    assert r.queued == [b"queued"]
    assert r.read("token")
    ((_, index, _),) = r.pending_reads
    assert index == r.next_slot, "the read index covers every proposed slot, not queued ones"


def test_a_restarted_proposer_never_reuses_a_ballot_it_promised_itself() -> None:
    promised = Ballot(7, 1)
    r = Replica(1, Majority([1, 2, 3]), random.Random(3), config=CFG, promised=promised)
    r.tick(1.0)
    r.advance()
    r.step(PreVoteReply(2, r.ballot, True))
    ready = r.ready()
    assert r.ballot > promised and r.ballot.node == 1
    assert ready.persist.promised == r.ballot
    assert any(isinstance(s.msg, Prepare) for s in ready.send_after_sync)
    assert not any(isinstance(s.msg, Prepare) for s in ready.send_now)


def test_a_request_forwarded_to_a_node_that_no_longer_leads_is_not_forwarded_again() -> None:
    q = Majority([1, 2, 3])
    replica = Replica(2, q, random.Random(2), config=CFG)
    node = ServiceNode(replica, KVStore())
    replica.leader = 3  # it believes node 3 leads
    cmd = enc.encode(Command(900, 1, "put", "k", "v"))
    node.step(ClientRequest(1, 900, 1, cmd))  # forwarded by node 1 (a member)
    sends = node.ready().send_now
    node.advance()
    assert [(s.to, type(s.msg)) for s in sends] == [((1,), ClientReply)]
    reply = sends[0].msg
    assert isinstance(reply, ClientReply) and not reply.ok and reply.leader == 3
