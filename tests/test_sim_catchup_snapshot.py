"""The simulator exercises the snapshot a node takes from its applied state to serve a
lagging peer (issue 8, item 1), and catches a broken one.

Found in review: with catch-up snapshots for gaps of 40 slots, no simulated run ever
lagged that far at a Fetch (the largest gap seen over many seeds was 33 slots), so that
path never ran, and a snapshot announced under a slot it does not cover survived 500
seeds. The simulator now serves them for gaps of 8 slots
(``sim.kv.CATCHUP_SNAPSHOT_SLOTS``); both tests fail with 40.
"""

from __future__ import annotations

import pytest

from pyxos.core.messages import Snapshot
from pyxos.sim.kv import run_kv
from pyxos.sim.nemesis import parse_faults
from pyxos.statemachine.service import ServiceNode

FAULTS = parse_faults("all,disk")


def test_lagging_nodes_are_served_snapshots_of_the_applied_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served = 0
    announce = ServiceNode._announce_snapshot

    def counting(self: ServiceNode, dst: int) -> None:
        nonlocal served
        before = self.snapshots_served
        announce(self, dst)
        served += self.snapshots_served - before

    monkeypatch.setattr(ServiceNode, "_announce_snapshot", counting)
    for seed in range(20):
        assert run_kv(seed, nodes=3, faults=FAULTS, trace=False).violation is None
    assert served > 0


def test_a_snapshot_announced_under_a_slot_it_does_not_cover_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def off_by_one(self: ServiceNode, dst: int) -> None:
        # ServiceNode._announce_snapshot, with the snapshot taken now labelled one
        # slot too far: the receiver skips a slot it never applies.
        newest = self._newest_snapshot()
        applied = self.state.applied_slot
        gap = self.catchup_snapshot_slots
        if gap > 0 and applied > 0 and (newest is None or applied - newest[0] >= gap):
            newest = self.serving = (applied + 1, self.state.snapshot())
            self.snapshots_served += 1
        if newest is not None:
            slot, data = newest
            self.replica.post((dst,), Snapshot(self.node_id, slot, 0, b"", len(data)))

    monkeypatch.setattr(ServiceNode, "_announce_snapshot", off_by_one)
    caught = [s for s in range(20) if run_kv(s, nodes=3, faults=FAULTS, trace=False).violation]
    assert caught, "a mislabelled catch-up snapshot survived 20 seeds"


def test_a_transfer_whose_source_lost_the_snapshot_starts_over() -> None:
    """Seed 58 of ``pyxos sim app --app lock --nodes 3 --faults all,disk`` (found by the
    300-seed sweep of issue 10): node 3 announced a catch-up snapshot of slot 17 (taken
    from its applied state, not durable) to the leader and was then wiped; rebuilt, it
    answered every request for slot 17 with its own snapshot of slot 8, which the leader
    ignored as older than the transfer under way. The leader, missing slots 0..16, never
    applied again: every client stuck (a liveness violation). A transfer's source that
    announces another snapshot no longer holds ours: the receiver starts over with the
    one that exists (and a transfer that stalls gives way to any announcement)."""
    from pyxos.sim.app import run_app

    r = run_app(58, "lock", nodes=3, faults=FAULTS, trace=False, hash_seeds=0)
    assert r.violation is None, f"{r.violation}\n  replay: {r.replay}"
