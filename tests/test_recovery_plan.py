"""Forced recovery's state transformation (core/recovery.py, docs/recovery.md), on the
pure objects: the plan computed from a survivor's disk, and a replica that applies it
and re-decides the log alone, without a simulator."""

import random

import pytest

from pyxos.core.ballot import Ballot
from pyxos.core.membership import ConfigChangeError, Configuration, encode_config_entry
from pyxos.core.messages import (
    Accept,
    Commit,
    Decided,
    Entry,
    Fetch,
    Prepare,
    PreVote,
    Removed,
)
from pyxos.core.recovery import plan_recovery, recovery_reason
from pyxos.core.replica import NOOP, Replica, ReplicaConfig, Role

CFG = ReplicaConfig(election_timeout=(0.1, 0.2), heartbeat_interval=0.02, window=8)
FOUNDING = Configuration(0, (1, 2, 3), alpha=8)
B1 = Ballot(1, 1)
B2 = Ballot(2, 2)


def entries() -> list[Entry]:
    # Survivor 3: snapshot at 10; slots 10..13 known chosen (watermark 14), 12 never
    # accepted here (fetched); accepted 14, 15 and 17 above the watermark, 16 a gap.
    return [
        Entry(5, B1, b"below-snapshot"),
        Entry(10, B1, b"v10"),
        Entry(11, B1, b"v11"),
        Entry(13, B2, b"v13"),
        Entry(14, B2, b"v14"),
        Entry(15, B1, b"v15"),
        Entry(17, B2, b"v17"),
    ]


def test_the_plan_counts_what_is_kept_reproposed_and_lost() -> None:
    plan = plan_recovery(
        3,
        accepted=entries(),
        promised=B2,
        snapshot_slot=10,
        chosen_watermark=14,
        configurations=[FOUNDING],
    )
    assert plan.configuration == Configuration(1, (3,), alpha=8)
    assert plan.previous == FOUNDING
    assert plan.disowned == (1, 2)
    assert (plan.snapshot_slot, plan.known_chosen_end) == (10, 14)
    assert plan.known_held == 3  # 10, 11, 13
    assert plan.known_not_held == 1  # 12: learned from a peer, not on disk
    assert plan.accepted_not_known_chosen == 3  # 14, 15, 17
    assert plan.gaps == 1  # 16
    assert plan.last_accepted == 17
    assert plan.reproposed == 6
    assert plan.first_uncertain == 10  # a known slot's value is lost
    text = "\n".join(plan.warnings())
    assert "LOST: 1 slot(s) below 14" in text
    assert "3 slot(s) from 14 to 17 were accepted here but not known chosen" in text
    assert "POSSIBLY LOST" in text


def test_the_new_epoch_supersedes_every_configuration_seen_even_in_unchosen_entries() -> None:
    later = Configuration(4, (1, 2, 3, 5), alpha=8)
    accepted = [Entry(20, B1, encode_config_entry(later)), Entry(21, B1, b"x")]
    plan = plan_recovery(
        3,
        accepted=accepted,
        snapshot_slot=20,
        chosen_watermark=20,
        configurations=[FOUNDING, Configuration(3, (1, 2, 3), alpha=8)],
        known_ids=[7],
    )
    assert plan.configuration.epoch == 5  # above the accepted-only epoch 4
    assert plan.previous.epoch == 3
    assert plan.disowned == (1, 2, 5, 7)  # node 5 named only by the unchosen entry
    assert plan.voided_config_entries == 1
    assert plan.known_not_held == 0 and plan.first_uncertain == 20
    assert not any("not a voter" in w for w in plan.warnings())
    learner = plan_recovery(
        6, accepted={}, snapshot_slot=0, chosen_watermark=0, configurations=[FOUNDING]
    )
    assert any("node 6 was not a voter" in w for w in learner.warnings())


def test_nothing_above_the_snapshot() -> None:
    plan = plan_recovery(
        2, accepted={}, snapshot_slot=0, chosen_watermark=0, configurations=[FOUNDING]
    )
    assert (plan.reproposed, plan.gaps, plan.last_accepted, plan.known_not_held) == (0, 0, -1, 0)
    with pytest.raises(ValueError, match="not >= 1"):
        plan_recovery(
            0, accepted={}, snapshot_slot=0, chosen_watermark=0, configurations=[FOUNDING]
        )
    with pytest.raises(ValueError, match="at least one configuration"):
        plan_recovery(1, accepted={}, snapshot_slot=0, chosen_watermark=0, configurations=[])


def _run_alone(r: Replica, until: float) -> list[Entry]:
    """Drive a replica that is its own only peer: every message to itself is stepped
    (after the 'fsync'); returns what it committed."""
    committed: list[Entry] = []
    t = 1.0
    while t < until:
        t += 0.01
        r.tick(t)
        for _ in range(20):
            ready = r.ready()
            r.advance()
            committed += ready.committed
            mine = [s.msg for s in ready.send_now + ready.send_after_sync if r.node_id in s.to]
            if not mine:
                break
            for msg in mine:
                r.step(msg)
    return committed


def test_a_recovered_replica_re_decides_its_accepted_values_in_order_alone() -> None:
    plan = plan_recovery(
        3,
        accepted=entries(),
        promised=B2,
        snapshot_slot=10,
        chosen_watermark=14,
        configurations=[FOUNDING],
    )
    r = Replica(3, FOUNDING, random.Random(3), config=CFG, promised=B2, accepted=entries())
    r.skip_to(10)  # the snapshot of slot 10 restored
    r.compact(10)
    r.force_configuration(plan.configuration, plan.disowned, "recovered")
    assert r.peers == () and r.configuration == plan.configuration
    committed = _run_alone(r, 3.0)
    assert r.role is Role.LEADER and r.ballot > B2
    got = {e.slot: e.value for e in committed}
    assert got == {
        10: b"v10", 11: b"v11", 12: NOOP, 13: b"v13", 14: b"v14", 15: b"v15", 16: NOOP,
        17: b"v17",
    }  # fmt: skip
    # New writes go on from there.
    assert r.propose(b"new")
    assert {e.slot: e.value for e in _run_alone(r, 4.0)} == {18: b"new"}


def test_a_disowned_node_is_refused_and_told_why_and_nothing_it_sends_is_taken() -> None:
    new = Configuration(1, (3,), alpha=8)
    reason = recovery_reason(3, 1, 10)
    r = Replica(3, FOUNDING, random.Random(3), config=CFG)
    r.force_configuration(new, (1, 2), reason)
    # Not in the timeline's retired set: a joiner learning the log from slot 0 must
    # judge every configuration entry alike, and it never hears of the disowned ids.
    assert not r.membership.retired & {1, 2}
    r.ready()
    r.advance()
    for msg in (
        PreVote(1, Ballot(9, 1), 0),
        Prepare(1, Ballot(9, 1), 0),
        Accept(2, Ballot(9, 2), 0, (b"old",)),
        Commit(2, Ballot(9, 2), 5),
        Fetch(1, 0, 5),
    ):
        r.step(msg)
        ready = r.ready()
        r.advance()
        assert [(s.to, s.msg) for s in ready.send_now] == [
            ((msg.src,), Removed(3, msg.src, 1, reason))
        ], msg
        assert not ready.persist.accepted and ready.persist.promised is None
    # A value an old node offers is never learned.
    r.step(Decided(1, 0, (b"old-history",), 1))
    ready = r.ready()
    r.advance()
    assert not ready.committed and r.first_unchosen == 0 and not ready.send_now
    assert r.refused_removed == 5


def test_a_snapshot_taken_after_the_recovery_keeps_its_newer_timeline() -> None:
    new = Configuration(1, (3,), alpha=8)
    grown = Configuration(2, (3, 4), alpha=8)
    r = Replica(3, grown, random.Random(3), config=CFG)  # as if restored from that snapshot
    r.force_configuration(new, (1, 2), "recovered")
    assert r.configuration == grown and r.peers == (4,)
    assert r.disowned == {1, 2}


def test_the_recovered_leader_does_not_propose_a_disowned_id_back() -> None:
    plan = plan_recovery(
        3, accepted={}, snapshot_slot=0, chosen_watermark=0, configurations=[FOUNDING]
    )
    r = Replica(3, FOUNDING, random.Random(3), config=CFG)
    r.force_configuration(plan.configuration, plan.disowned, "recovered")
    _run_alone(r, 2.0)
    assert r.is_leader
    with pytest.raises(ConfigChangeError, match=r"nodes \[1\] belong to the cluster before"):
        r.add_learner(1)
    assert r.add_learner(4) == plan.configuration.epoch + 1  # a new id: fine


def test_re_proposals_far_beyond_the_window_are_all_decided_in_order() -> None:
    """600 slots with holes, 8 slots of window (and alpha): the recovered leader
    re-decides them all, each with the value it accepted there or a no-op."""
    entries = [Entry(s, B2 if s % 3 else B1, b"v%d" % s) for s in range(600) if s % 7]
    plan = plan_recovery(
        3,
        accepted=entries,
        promised=B2,
        snapshot_slot=0,
        chosen_watermark=100,
        configurations=[FOUNDING],
    )
    assert (plan.known_held, plan.known_not_held, plan.accepted_not_known_chosen) == (85, 15, 429)
    r = Replica(3, FOUNDING, random.Random(3), config=CFG, promised=B2, accepted=entries)
    r.force_configuration(plan.configuration, plan.disowned, "recovered")
    got = {e.slot: e.value for e in _run_alone(r, 20.0)}
    assert got == {s: (b"v%d" % s if s % 7 else NOOP) for s in range(600)}
