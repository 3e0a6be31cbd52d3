"""Basic Paxos roles: proposer and learner rules, named after the textbook sentences."""

import random

from pyxos.core.ballot import Ballot
from pyxos.core.messages import Accept, Accepted, Decided, Entry, Nack, Prepare, Promise
from pyxos.core.quorum import Majority
from pyxos.core.synod import Learner, Phase, Proposer, SynodNode

Q3 = Majority([1, 2, 3])


def test_proposer_picks_a_ballot_above_every_ballot_it_has_seen() -> None:
    p = Proposer(1, Q3)
    p.on_nack(Nack(2, Ballot(0, 0), Ballot(7, 3)))
    prepare = p.begin(b"v")
    assert prepare.ballot == Ballot(8, 1)
    assert p.begin(b"v", floor=Ballot(20, 2)).ballot == Ballot(21, 1)


def test_proposer_sends_accept_only_with_promises_from_a_quorum() -> None:
    p = Proposer(1, Q3)
    b = p.begin(b"mine").ballot
    assert p.on_promise(Promise(1, b)) is None
    accept = p.on_promise(Promise(2, b))
    assert accept == Accept(1, b, 0, (b"mine",))
    assert p.phase is Phase.ACCEPTING


def test_proposer_adopts_the_value_of_the_highest_ballot_accepted_proposal() -> None:
    p = Proposer(1, Q3)
    b = p.begin(b"mine", floor=Ballot(5, 3)).ballot
    p.on_promise(Promise(2, b, (Entry(0, Ballot(2, 2), b"older"),)))
    accept = p.on_promise(Promise(3, b, (Entry(0, Ballot(4, 3), b"newer"),)))
    assert accept is not None and accept.values == (b"newer",)


def test_proposer_ignores_promises_for_another_ballot() -> None:
    p = Proposer(1, Q3)
    b = p.begin(b"v").ballot
    assert p.on_promise(Promise(2, Ballot(b.round + 1, 2))) is None
    assert p.on_promise(Promise(3, Ballot(0, 3))) is None
    assert p.promises == {}


def test_a_nack_ends_the_round_and_raises_the_next_ballot() -> None:
    p = Proposer(1, Q3)
    b = p.begin(b"v").ballot
    assert p.on_nack(Nack(2, b, Ballot(9, 2)))
    assert p.phase is Phase.IDLE
    assert p.begin(b"v").ballot == Ballot(10, 1)


def test_learner_learns_only_with_a_quorum_of_one_ballot_and_its_value() -> None:
    learner = Learner(Q3)
    b1, b2 = Ballot(1, 1), Ballot(2, 2)
    assert not learner.on_accepted(1, b1)
    assert not learner.on_accepted(2, b2), "votes of different ballots do not add up"
    assert not learner.on_accepted(3, b1), "a quorum, but the value of b1 is unknown"
    assert learner.on_value(b1, b"x")
    assert learner.chosen == b"x"
    assert not learner.on_value(b2, b"y") and learner.chosen == b"x"


def test_node_persists_its_own_promise_before_its_prepare_leaves() -> None:
    node = SynodNode(1, Q3, random.Random(1), value=b"v")
    node.tick(0.0)
    r = node.ready()
    assert r.persist.promised == Ballot(1, 1)
    assert not r.send_now
    assert [type(s.msg) for s in r.send_after_sync] == [Prepare]
    assert r.send_after_sync[0].to == (2, 3)


def test_acceptor_replies_wait_for_the_sync_and_learners_hear_every_acceptance() -> None:
    node = SynodNode(2, Q3, random.Random(1))
    node.step(Prepare(1, Ballot(1, 1)))
    node.step(Accept(1, Ballot(1, 1), 0, (b"v",)))
    r = node.ready()
    assert r.persist.promised == Ballot(1, 1)
    assert [e.value for e in r.persist.accepted] == [b"v"]
    msgs = [(s.to, s.msg) for s in r.send_after_sync]
    assert msgs[0] == ((1,), Promise(2, Ballot(1, 1), ()))
    assert msgs[1] == ((1, 2, 3), Accepted(2, Ballot(1, 1), 0))


def test_node_that_learned_tells_a_late_proposer() -> None:
    node = SynodNode(2, Q3, random.Random(1))
    node.step(Decided(3, 0, (b"x",)))
    node.advance()
    node.step(Prepare(1, Ballot(4, 1)))
    r = node.ready()
    assert Decided(2, 0, (b"x",)) in [s.msg for s in r.send_now]
