"""A node's status, and the report of a lost majority.

Theory of operation
-------------------
A lost majority: when the replica reports ``majority_lost`` (the nodes without state
contain a quorum), the driver logs it once per occurrence, and ``status`` (hence
``/v1/status``, the ``pyxos_majority_lost`` metric and ``pyxos status``) says so with
the recovery pointer ``MAJORITY_LOST_RECOVERY``.

A node that was removed, or disowned by a forced recovery, says so once in the log and
in ``status`` (``"state": "removed"`` and the reason it was given). A node whose data
directory went through ``pyxos recover --force-new-cluster`` shows the newest recovery
as ``recovered`` (when, from which node, what may have been lost: docs/recovery.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from pyxos.driver import ReadyDriver
from pyxos.net.limits import PortGuard
from pyxos.net.link import PeerLinks
from pyxos.server.config import Config
from pyxos.server.effects import DriverStats
from pyxos.statemachine.kv import KVStore
from pyxos.statemachine.service import ServiceNode
from pyxos.storage.recovery import RecoveryRecord

__all__ = ["MAJORITY_LOST", "MAJORITY_LOST_RECOVERY", "MajorityLostReport", "node_status"]

logger = logging.getLogger("pyxos.server")

MAJORITY_LOST = "a majority lost its state: this cluster cannot recover on its own"
"""What status, metrics and the log say when the nodes without state contain a quorum."""

MAJORITY_LOST_RECOVERY = (
    "no node votes again by itself: whatever only the lost nodes held may be gone. "
    "Bring back a node whose data directory survived (it may just be down), or restore "
    "the lost data directories from a backup; see docs/operations.md, 'Losing a "
    "majority'. The last resort: a forced new cluster from one stopped survivor, pyxos "
    "recover --force-new-cluster (docs/recovery.md)"
)
"""The recovery path an operator is pointed to when a majority lost its state."""


def node_status(
    config: Config,
    node: ServiceNode | None,
    driver: ReadyDriver,
    stats: DriverStats,
    *,
    links: PeerLinks | None,
    client_connections: int,
    counters: dict[str, dict[str, int]],
    guards: dict[str, PortGuard | None],
    recoveries: Sequence[RecoveryRecord] = (),
) -> dict[str, Any]:
    """A JSON-ready summary of a node (role, leader, slots, counters): what ``pyxos
    status``, ``/v1/status`` and the metrics read. ``recoveries``: the forced
    recoveries of its data directory (the newest is shown as ``recovered``)."""
    if node is None:
        return {"node_id": config.node_id, "state": "starting"}
    replica = node.replica
    extra: dict[str, Any] = {}
    if recoveries:
        extra["recovered"] = recoveries[-1].summary() | {
            "refused_old_members": replica.refused_removed
        }
    if replica.removed is not None:
        state = "removed"
        extra["removed"] = replica.removed
    elif replica.majority_lost:
        state = "majority_lost"
        extra |= {"message": MAJORITY_LOST, "recovery": MAJORITY_LOST_RECOVERY}
    elif replica.bootstrapping:
        state = "bootstrapping"
    elif replica.rebuilding:
        state = "rebuilding"
    else:
        state = "voting"
    if replica.rebuilding:
        extra["waiting_for_peers"] = sorted(replica.peers_unanswered())
        extra["peers_without_state"] = sorted(replica.peers_without_state())
    return {
        "node_id": config.node_id,
        "cluster_id": config.cluster_id,
        "state": state,
        **extra,
        "role": replica.role.value,
        "rebuilding": replica.rebuilding,
        "bootstrapping": replica.bootstrapping,
        "majority_lost": replica.majority_lost,
        "elections": replica.elections,
        "leader_changes": replica.leader_changes,
        "queues": {
            "replies_waiting_for_fsync": driver.waiting_sends(),
            "slots_in_flight": len(replica.in_flight),
            "proposals_queued": len(replica.queued),
            "reads_pending": node.reads_pending,
            "peer_frames": links.queued_frames() if links is not None else 0,
        },
        "leader": replica.leader,
        "configuration": {
            "epoch": replica.quorum.epoch,
            "voters": list(replica.quorum.voters),
            "learners": list(replica.quorum.learners),
        },
        "ballot": str(replica.ballot),
        "promised": str(replica.acceptor.promised),
        "first_unchosen": replica.first_unchosen,
        "applied": node.state.applied_slot,
        "app": config.app,
        "quorum": {"q1": replica.quorum.q1, "q2": replica.quorum.q2},  # in force
        "transfer": replica.transfer_result,
        "preferred_leader": replica.preferred_leader,
        "keys": len(node.app) if isinstance(node.app, KVStore) else 0,
        "written": driver.written,
        "synced": driver.synced,
        "driver": asdict(stats),
        "client_connections": client_connections,
        **{name: dict(c) for name, c in counters.items()},
        "ports": {
            port: {
                "connections": len(guard.connections),
                "buffered_bytes": guard.buffered,
                "peak_buffered_bytes": guard.peak_buffered,
            }
            for port, guard in guards.items()
            if guard is not None
        },
    }


class MajorityLostReport:
    """Says once per occurrence, in the log, that a majority lost its state, and once
    that this node was removed (or disowned by a forced recovery) and why."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self.reported = False
        self.removed_reported = False

    def observe(self, node: object) -> None:
        """Log a change of the node's ``majority_lost`` (scripted test nodes, without a
        replica, never have one)."""
        replica = getattr(node, "replica", None)
        removed = getattr(replica, "removed", None)
        if removed is not None and not self.removed_reported:
            self.removed_reported = True
            logger.error(
                "node %d is no longer a member, it will not run or lead again: %s",
                self.node_id,
                removed,
            )
        lost = bool(getattr(replica, "majority_lost", False))
        if lost == self.reported:
            return
        self.reported = lost
        if lost:
            assert replica is not None
            rebuilding = sorted({replica.node_id} | replica.peers_without_state())
            logger.error(
                "node %d: %s (nodes rebuilding: %s, no quorum kept its state). %s",
                self.node_id,
                MAJORITY_LOST,
                ", ".join(map(str, rebuilding)),
                MAJORITY_LOST_RECOVERY,
            )
        else:
            logger.warning(
                "node %d: a peer answers with its state again: the rebuild goes on",
                self.node_id,
            )
