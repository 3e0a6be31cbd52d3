"""A rebuild's closing snapshot is taken once while it is being written.

A wiped node that has caught up ends its rebuild with a durable snapshot of its state
(``ServiceNode.ready``). That snapshot was taken again every five heartbeats until one
was reported durable; with 1 GB of state a take lasts seconds on the event loop and the
write longer, so a rebuild at 1 million keys of 1 KB spent 43% of its samples encoding
the same state over and over (bench/profiles/FINDINGS.md, h13restart). Now it is taken
again only after the driver reports the write failed.
"""

from __future__ import annotations

import random

from pyxos.core.membership import Configuration
from pyxos.core.messages import Snapshot
from pyxos.core.replica import Replica, ReplicaConfig
from pyxos.statemachine.kv import KVStore
from pyxos.statemachine.replicated import ReplicatedApp, encode_batch
from pyxos.statemachine.service import ServiceNode

CFG = ReplicaConfig(election_timeout=(0.1, 0.2), heartbeat_interval=0.02, window=8)


def rebuilding_node() -> ServiceNode:
    founding = Configuration(0, (1, 2, 3), alpha=8)
    replica = Replica(1, founding, random.Random(1), config=CFG, rebuilding=True)
    node = ServiceNode(replica, KVStore(), snapshot_every=10**9)
    replica.rebuild_caught_up = True  # every peer answered, every slot learned
    return node


def passes(node: ServiceNode, count: int) -> int:
    """Run ``count`` passes a second of node time apart; the snapshots handed over."""
    taken = 0
    for _ in range(count):
        node.tick(node.replica.now + 1.0)
        r = node.ready()
        node.advance()
        taken += r.snapshot is not None
    return taken


def test_the_closing_snapshot_is_not_retaken_while_it_is_written() -> None:
    node = rebuilding_node()
    assert passes(node, 20) == 1


def test_a_failed_closing_snapshot_is_taken_again() -> None:
    node = rebuilding_node()
    assert passes(node, 3) == 1
    node.snapshot_failed(node.state.applied_slot)
    assert passes(node, 3) == 1
    # A newer snapshot that replaced it in the driver and failed counts too.
    node.snapshot_failed(node.state.applied_slot + 5)
    assert passes(node, 3) == 1


def test_a_durable_snapshot_that_covers_everything_ends_the_rebuild() -> None:
    """The snapshot installed from a peer (durable once written) already covers every
    slot learned on an idle cluster: the rebuild ends on it, with no closing snapshot
    of the same state (1 GB: seconds of encoding, a second 1 GB write)."""
    source = ReplicatedApp(KVStore())
    source.apply(0, encode_batch([]))
    node = rebuilding_node()
    node.restore_snapshot(source.applied_slot, source.snapshot())  # durable, on disk
    assert node.replica.first_unchosen == source.applied_slot
    assert passes(node, 5) == 0
    assert not node.replica.rebuilding


def test_a_rebuild_waits_for_the_installed_snapshot_being_written() -> None:
    """The snapshot installed from a peer is being written (seconds at 1 GB) when the
    rebuild catches up: it waits for that write and ends on it, instead of taking a
    closing snapshot of the same state meanwhile."""
    source = ReplicatedApp(KVStore())
    source.apply(0, encode_batch([]))
    slot, data = source.applied_slot, source.snapshot()
    node = rebuilding_node()
    node.replica.rebuild_caught_up = False
    node.step(Snapshot(2, slot, 0, b"", len(data)))
    node.step(Snapshot(2, slot, 0, data, len(data)))
    assert node.snapshots_installed == 1
    assert passes(node, 1) == 1, "the installed snapshot goes to the disk"
    node.replica.rebuild_caught_up = True  # while it is written
    assert passes(node, 10) == 0, "no second snapshot of the same state"
    node.snapshot_durable(slot)
    assert not node.replica.rebuilding
