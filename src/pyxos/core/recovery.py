"""Forced recovery of a cluster that lost a majority for good: the state transformation.

Theory of operation
-------------------
Paxos cannot recover on its own from the loss of a quorum: a value a quorum accepted
may survive nowhere else, and no survivor can tell. ``pyxos recover
--force-new-cluster`` (docs/recovery.md) is the operator's explicit way out, after
etcd's ``--force-new-cluster``: one survivor's state becomes a new one-node cluster.
This module is the pure part of it: from what the survivor's disk holds it computes a
:class:`RecoveryPlan` (the new configuration, which ids to disown, and an honest
account of what may have been lost); the storage layer makes the plan durable and the
server applies it at every start (``Replica.force_configuration``).

What the survivor holds, and what becomes of it:

- slots below its newest snapshot (``snapshot_slot``): chosen, their effect is in the
  snapshot. Kept as they are.
- slots from there to its chosen watermark (``known_chosen_end``, the first slot it
  had not learned when it stopped): chosen. The value is on disk either as the entry
  its acceptor accepted (the chosen value when it learned the slot from the commit of
  the ballot it accepted it in) or, when it learned the slot from a peer instead, as a
  ``LEARNED`` record (``storage.durable``; the ``learned`` argument), which wins. A slot
  of this range with neither is a known loss (``known_not_held``: a log written before
  ``LEARNED`` records existed, or records lost with a torn tail).
- slots above the watermark that it accepted (``accepted_not_known_chosen``): each may
  or may not have been chosen in the old cluster. The new cluster re-proposes, for
  every such slot in order, the one value the survivor accepted there (the highest
  ballot it accepted: an acceptor keeps only that), and no-ops in the slots between
  that it never accepted (``gaps``). This is exactly what a new leader's phase 1 does
  with its promisers' reports, the survivor being its only promiser: it is the
  choice that keeps every value that *may* have been chosen and was seen here. A value
  chosen in the old cluster by a quorum the survivor was not in, in a slot where the
  survivor accepted something else or nothing, is lost; nobody can count those.

The new configuration has the survivor as its only voter and an epoch above every
configuration it knows of, those in configuration entries it accepted included, so
an old configuration entry that is re-proposed is not effective (an epoch that does
not follow is refused, ``core/membership.py``). Every other id of the old cluster is
*disowned*: the recovered node takes nothing from such a node, and answers what it
sends as a member (runs, leads, rebuilds, fetches) with ``Removed``, which makes the old
node record why and never run or lead again. Ids are never reused: a node that joins
the recovered cluster gets a new id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import msgspec

from pyxos.core.ballot import ZERO, Ballot
from pyxos.core.membership import (
    ConfigChangeError,
    Configuration,
    decode_config_entry,
    is_config_entry,
)
from pyxos.core.messages import Entry

__all__ = ["RecoveryPlan", "plan_recovery", "recovery_reason"]


class RecoveryPlan(msgspec.Struct, frozen=True, kw_only=True):
    """What a forced recovery does to one survivor's state (see the module notes)."""

    node_id: int
    """The survivor: the only voter of the new configuration."""
    configuration: Configuration
    """The new configuration: ``{node_id}``, an epoch above every one known."""
    previous: Configuration
    """The newest configuration the survivor knew of (its snapshot's or its log's)."""
    disowned: tuple[int, ...]
    """Every other id of the old cluster: refused for good by the recovered node."""
    snapshot_slot: int
    """Slots below are in the survivor's snapshot: kept exactly."""
    known_chosen_end: int
    """Slots below were known chosen by the survivor (at least ``snapshot_slot``)."""
    known_held: int
    """Slots in ``[snapshot_slot, known_chosen_end)`` whose value the log holds
    (re-proposed: the chosen value unless the survivor fetched that slot)."""
    known_not_held: int
    """Slots in ``[snapshot_slot, known_chosen_end)`` the survivor knew chosen but whose
    value it does not hold on disk: they become no-ops, their values are lost."""
    accepted_not_known_chosen: int
    """Slots at or above ``known_chosen_end`` the survivor accepted: re-proposed (each
    may or may not have been chosen in the old cluster)."""
    gaps: int
    """Slots above ``known_chosen_end`` and below ``last_accepted`` the survivor never
    accepted: no-ops (whatever the old cluster chose there is lost)."""
    last_accepted: int
    """The highest slot the survivor accepted (-1: none at or above ``snapshot_slot``)."""
    voided_config_entries: int
    """Old configuration entries among the re-proposed values: not effective."""
    promised: Ballot
    """The survivor's promise: the new cluster's first ballot is above it."""

    @property
    def reproposed(self) -> int:
        """Slots re-proposed with a value the survivor accepted."""
        return self.known_held + self.accepted_not_known_chosen

    @property
    def first_uncertain(self) -> int:
        """The first slot whose value the new cluster decides again: anything the old
        cluster chose from here on, and did not reach this survivor, is lost."""
        return self.snapshot_slot if self.known_not_held else self.known_chosen_end

    def warnings(self) -> list[str]:
        """What may have been lost, in sentences (what the CLI prints, loudly)."""
        out = [
            f"node {self.node_id} becomes a one-node cluster (configuration epoch "
            f"{self.configuration.epoch}); nodes {list(self.disowned)} are disowned for "
            "good: they cannot rejoin, even with their old data directories",
            (
                f"slots below {self.snapshot_slot} are kept from the snapshot"
                if self.snapshot_slot
                else "there is no snapshot"
            )
            + (
                f"; slots {self.snapshot_slot}..{self.known_chosen_end - 1} were known "
                f"chosen here: {self.known_held} of them are re-proposed with the value "
                "in this node's log"
                if self.known_chosen_end > self.snapshot_slot
                else ""
            ),
        ]
        if self.node_id not in self.previous.voters:
            out.append(
                f"node {self.node_id} was not a voter of the newest configuration it knew "
                f"(epoch {self.previous.epoch}, voters {list(self.previous.voters)}): its "
                "state may be far behind; a voter's would be better if one survives"
            )
        if self.known_not_held:
            out.append(
                f"LOST: {self.known_not_held} slot(s) below {self.known_chosen_end} were "
                "known chosen but their values are not on this node's disk (a log "
                "written before LEARNED records existed, or records lost with a torn "
                "tail): they become no-ops"
            )
        if self.accepted_not_known_chosen:
            out.append(
                f"{self.accepted_not_known_chosen} slot(s) from {self.known_chosen_end} "
                f"to {self.last_accepted} were accepted here but not known chosen: "
                "their values are re-proposed in order; each may or may not have been "
                "chosen (and acknowledged) in the old cluster"
            )
        if self.gaps:
            out.append(
                f"{self.gaps} slot(s) between {self.known_chosen_end} and "
                f"{self.last_accepted} were never accepted here: they become no-ops"
            )
        out.append(
            f"POSSIBLY LOST: any value the old cluster chose at slot "
            f"{self.first_uncertain} or later that this node did not accept (writes "
            "acknowledged by the lost majority alone); nobody can count those"
        )
        if self.voided_config_entries:
            out.append(
                f"{self.voided_config_entries} old configuration change(s) among the "
                "re-proposed values are not effective (their epochs are superseded)"
            )
        return out


def recovery_reason(node_id: int, epoch: int, first_slot: int) -> str:
    """What the recovered node tells a disowned node (``Removed.reason``)."""
    return (
        f"the cluster was recovered from node {node_id} alone with pyxos recover "
        f"--force-new-cluster (configuration epoch {epoch}, from slot {first_slot}): "
        "the nodes of the cluster before it are disowned for good; wipe this node's "
        "data directory and add it back under a new id"
    )


def plan_recovery(
    node_id: int,
    *,
    accepted: Mapping[int, Entry] | Iterable[Entry],
    learned: Mapping[int, bytes] | None = None,
    promised: Ballot = ZERO,
    snapshot_slot: int,
    chosen_watermark: int,
    configurations: Sequence[Configuration],
    known_ids: Iterable[int] = (),
) -> RecoveryPlan:
    """The forced recovery of node ``node_id`` from what its disk holds.

    ``accepted``: its acceptor's entries (slot -> entry, or entries); those below
    ``snapshot_slot`` are covered by the snapshot and ignored. ``learned``: chosen
    values it learned from peers (slot -> value; known chosen, they win over the
    acceptor's entry there; the caller re-proposes them). ``chosen_watermark``:
    the first slot it had not learned chosen. ``configurations``: every configuration it
    knows of (the founding one, its snapshot's, an earlier recovery's), at least one;
    ``known_ids``: other ids it knows of (its address book, retired ids), disowned too.
    Raises ``ValueError`` if ``node_id`` is not a valid id or no configuration is given.
    """
    if node_id < 1:
        raise ValueError(f"node id {node_id} is not >= 1")
    if not configurations:
        raise ValueError("at least one configuration must be known")
    entries = accepted.values() if isinstance(accepted, Mapping) else accepted
    by_slot = {e.slot: e for e in entries if e.slot >= snapshot_slot}
    known = {s for s in (learned or {}) if s >= snapshot_slot}
    # Values are applied in slot order: a slot learned means every one below was known.
    known_end = max(snapshot_slot, chosen_watermark, max(known, default=-1) + 1)
    previous = max(configurations, key=lambda c: c.epoch)
    epochs = [c.epoch for c in configurations]
    ids: set[int] = set(known_ids)
    for c in configurations:
        ids.update(c.nodes)
    voided = 0
    values = {s: e.value for s, e in by_slot.items()} | {s: (learned or {})[s] for s in known}
    for value in values.values():
        if is_config_entry(value):
            voided += 1
            try:
                config = decode_config_entry(value)
            except ConfigChangeError:
                continue  # malformed: refused wherever it is chosen, epoch or not
            epochs.append(config.epoch)
            ids.update(config.nodes)
    new = Configuration(max(epochs) + 1, (node_id,), (), 0, 0, previous.alpha)
    last = max(by_slot, default=-1)
    known_held = len({s for s in by_slot if s < known_end} | known)
    above = sum(1 for s in by_slot if s >= known_end)
    return RecoveryPlan(
        node_id=node_id,
        configuration=new,
        previous=previous,
        disowned=tuple(sorted(ids - {node_id})),
        snapshot_slot=snapshot_slot,
        known_chosen_end=known_end,
        known_held=known_held,
        known_not_held=(known_end - snapshot_slot) - known_held,
        accepted_not_known_chosen=above,
        gaps=max(0, last + 1 - known_end) - above,
        last_accepted=last,
        voided_config_entries=voided,
        promised=promised,
    )
