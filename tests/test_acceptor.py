"""The acceptor's rules, one test per sentence of "Paxos Made Simple"."""

from pyxos.core.acceptor import Acceptor
from pyxos.core.ballot import ZERO, Ballot


def test_acceptor_promises_a_prepare_above_anything_it_has_promised() -> None:
    a = Acceptor()
    assert a.on_prepare(Ballot(1, 1), 0) == []
    assert a.promised == Ballot(1, 1)
    assert a.take_pending().promised == Ballot(1, 1)


def test_acceptor_refuses_a_prepare_below_its_promise() -> None:
    a = Acceptor(promised=Ballot(5, 2))
    assert a.on_prepare(Ballot(4, 3), 0) is None
    assert a.promised == Ballot(5, 2)
    assert not a.take_pending()


def test_a_repeated_prepare_repeats_the_same_promise_without_a_new_write() -> None:
    a = Acceptor()
    a.on_prepare(Ballot(2, 1), 0)
    a.take_pending()
    assert a.on_prepare(Ballot(2, 1), 0) == []
    assert not a.take_pending()


def test_promise_reports_the_highest_ballot_value_accepted_from_the_requested_slot() -> None:
    a = Acceptor()
    a.on_accept(Ballot(1, 1), 0, [b"x"])
    a.on_accept(Ballot(2, 2), 0, [b"y"])
    a.on_accept(Ballot(2, 2), 3, [b"z"])
    entries = a.on_prepare(Ballot(3, 1), 1)
    assert entries is not None
    assert [(e.slot, e.ballot, e.value) for e in entries] == [(3, Ballot(2, 2), b"z")]
    all_entries = a.on_prepare(Ballot(3, 1), 0)
    assert all_entries is not None
    assert [(e.slot, e.value) for e in all_entries] == [(0, b"y"), (3, b"z")]


def test_acceptor_accepts_unless_it_promised_a_higher_ballot() -> None:
    a = Acceptor()
    a.on_prepare(Ballot(3, 1), 0)
    assert not a.on_accept(Ballot(2, 9), 0, [b"old"])
    assert 0 not in a.accepted
    assert a.on_accept(Ballot(3, 1), 0, [b"v"])
    assert a.accepted[0].value == b"v"
    assert a.on_accept(Ballot(4, 2), 0, [b"w"])
    assert a.promised == Ballot(4, 2), "accepting a ballot also promises it"


def test_every_change_is_handed_over_for_persisting_exactly_once() -> None:
    a = Acceptor()
    a.on_prepare(Ballot(1, 1), 0)
    a.on_accept(Ballot(1, 1), 0, [b"a", b"b"])
    p = a.take_pending()
    assert p.promised == Ballot(1, 1)
    assert [(e.slot, e.value) for e in p.accepted] == [(0, b"a"), (1, b"b")]
    assert not a.take_pending()


def test_zero_is_below_every_real_ballot() -> None:
    assert Ballot(0, 1) > ZERO
    assert Ballot(1, 1) > Ballot(0, 9)
    assert Ballot(1, 2) > Ballot(1, 1)
    assert ZERO.next_for(3) == Ballot(1, 3)


def test_forget_below_drops_only_older_slots() -> None:
    a = Acceptor()
    a.on_accept(Ballot(1, 1), 0, [b"a", b"b", b"c"])
    a.forget_below(2)
    assert sorted(a.accepted) == [2]
