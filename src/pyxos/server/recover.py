"""``pyxos recover --force-new-cluster``: make one stopped survivor a one-node cluster.

Theory of operation
-------------------
When a majority of a cluster is lost for good, nothing in Paxos lets the survivors go
on: a value a quorum accepted may survive nowhere. This is the operator's explicit way
out, after etcd's ``--force-new-cluster`` (docs/recovery.md). It runs offline, against a
stopped node's data directory, and never by itself:

1. It refuses a node that may be running: the data directory's lock (the one the WAL
   takes, ``storage.fs.lock_dir``) is held by another process, or something answers on
   the node's peer or client port. It refuses a directory that is missing, holds no
   node marker (wiped, or not a pyxos directory), belongs to another node or cluster,
   has no log, a corrupt log, or a state the node had itself lost (rebuilding, or
   bootstrapping and never finished): each with one line saying which and why.
2. It reads the node's state: its acceptor log (promise, accepted entries, chosen
   watermark), its newest valid snapshot and the membership that snapshot carries,
   and computes the plan (``core.recovery.plan_recovery``): a configuration of this
   node alone with an epoch above every one known, the old ids to disown, and what
   may have been lost.
3. Chosen values the node learned from peers (``LEARNED`` records) are written into
   its log as accepted entries under its promise, then the durable, checksummed
   record (``storage.recovery``) is written atomically, all while it still holds the
   directory's lock; it says loudly (stderr) what was done and what may be lost.
   (Crashing between the two leaves a log whose extra entries hold chosen values: a
   rerun completes it.) The snapshots stay as they were: ``pyxos serve``
   applies the record at every start (``server.disk.build_node``), runs as a one-node
   cluster and re-proposes, in order, every value the node accepted above its
   snapshot (its own phase 1).

A second run on a directory that was recovered and has not run since finds the same
log and changes nothing (idempotent). Once the recovered node has run, a second forced
recovery would disown the members the recovered cluster has gained since: it is
refused unless asked for with ``again=True`` (``--again``).
"""

from __future__ import annotations

import contextlib
import datetime
import socket
from dataclasses import dataclass, field
from pathlib import Path

from pyxos.core.membership import Configuration
from pyxos.core.messages import Entry
from pyxos.core.ready import Persist
from pyxos.core.recovery import RecoveryPlan, plan_recovery
from pyxos.server.config import Config
from pyxos.statemachine.service import unwrap_snapshot
from pyxos.storage.durable import (
    AcceptorStateLost,
    DurableAcceptor,
    DurableStateError,
    Recovered,
)
from pyxos.storage.fs import OS, DirectoryLocked
from pyxos.storage.recovery import (
    RecoveryRecord,
    RecoveryRecordError,
    read_recoveries,
    write_recoveries,
)
from pyxos.storage.snapshot import scan_snapshots
from pyxos.storage.wal import WAL, MarkerError, StorageError, WALError, read_marker

__all__ = ["RecoveryOutcome", "RecoveryRefused", "force_new_cluster", "founding_of"]


class RecoveryRefused(Exception):
    """The forced recovery was refused; the message says why (nothing was changed)."""


@dataclass(slots=True)
class RecoveryOutcome:
    """What ``force_new_cluster`` did."""

    plan: RecoveryPlan
    record: RecoveryRecord
    path: Path
    """The record file."""
    written: bool
    """False for a dry run, or a second run that found nothing to do."""
    already: bool = False
    """The directory was recovered before and has not run since: nothing changed."""
    notes: list[str] = field(default_factory=list)
    """Other things the operator should know (damaged snapshots skipped, ...)."""


def founding_of(config: Config) -> Configuration:
    """The founding configuration a node with ``config`` starts from (its peers)."""
    q1, q2 = config.quorum_sizes
    return Configuration(0, tuple(config.peers), (), q1, q2, config.window)


def _listening(host: str, port: int) -> bool:
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1" if host != "::" else "::1"
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _check_not_running(config: Config) -> None:
    path = config.data_dir
    try:
        OS.lock_dir(path).close()
    except DirectoryLocked:
        raise RecoveryRefused(
            f"node {config.node_id} is running: its data directory {path} is locked by "
            "another process. Stop it first: pyxos recover works on a stopped node"
        ) from None
    host = config.peers[config.node_id][0]
    for what, port in (("peer", config.peer_port), ("client", config.client_port)):
        if port and _listening(host if what == "peer" else config.host, port):
            raise RecoveryRefused(
                f"something answers on node {config.node_id}'s {what} port "
                f"{host}:{port}: is the node running? Stop it first"
            )


def _check_directory(config: Config) -> None:
    path, node_id = config.data_dir, config.node_id
    if not path.is_dir():
        raise RecoveryRefused(
            f"data directory {path} does not exist (or is not a directory): "
            f"nothing to recover node {node_id} from"
        )
    try:
        marker = read_marker(path)
    except MarkerError as e:
        raise RecoveryRefused(f"the node marker is damaged: {e}") from None
    if marker is None:
        raise RecoveryRefused(
            f"{path} holds no node marker (pyxos.id): it is not a pyxos data directory, "
            "or it was wiped; nothing to recover from"
        )
    if marker.cluster_id != config.cluster_id or marker.node_id != node_id:
        raise RecoveryRefused(
            f"{path} belongs to node {marker.node_id} of cluster {marker.cluster_id!r}, "
            f"not node {node_id} of {config.cluster_id!r} (the wrong --config?)"
        )
    if not WAL.exists(path):
        raise RecoveryRefused(
            f"{path} holds no write-ahead log: node {node_id}'s state is gone; "
            "nothing to recover from"
        )


def force_new_cluster(
    config: Config,
    *,
    now: datetime.datetime | None = None,
    dry_run: bool = False,
    again: bool = False,
) -> RecoveryOutcome:
    """Make the stopped node of ``config`` a one-node cluster (see the module notes).

    Raises ``RecoveryRefused`` (nothing changed) when it must not or cannot. ``now``:
    the time recorded (default: the current UTC time); ``dry_run``: compute and report
    the plan, write nothing.
    """
    _check_directory(config)
    _check_not_running(config)
    path, node_id = config.data_dir, config.node_id
    try:
        previous = read_recoveries(path)
    except RecoveryRecordError as e:
        raise RecoveryRefused(f"the recovery record is damaged: {e}") from None
    try:
        durable, state = DurableAcceptor.open(path, segment_bytes=config.wal_segment_bytes)
    except AcceptorStateLost as e:
        raise RecoveryRefused(
            f"node {node_id}'s write-ahead log is corrupt ({e.cause}): its state cannot "
            "be trusted; recover from another survivor"
        ) from None
    except WALError as e:
        if "already open" in str(e):
            raise RecoveryRefused(
                f"node {node_id} is running: its data directory {path} is locked by "
                "another process. Stop it first"
            ) from None
        raise RecoveryRefused(f"cannot open node {node_id}'s write-ahead log: {e}") from None
    except DurableStateError as e:
        raise RecoveryRefused(f"node {node_id}'s write-ahead log does not decode: {e}") from None
    except OSError as e:
        raise RecoveryRefused(f"cannot read {path}: {e}") from None
    try:  # the directory stays locked until the record is written
        if state.needs_rebuild:
            raise RecoveryRefused(
                f"node {node_id} had lost its state and had not finished rebuilding it "
                "from its peers: it holds nothing trustworthy; recover from another survivor"
            )
        if state.bootstrapping:
            raise RecoveryRefused(
                f"node {node_id} never finished bootstrapping: it holds no state of the "
                "cluster; recover from another survivor"
            )
        notes: list[str] = []
        scan = scan_snapshots(path / "snapshots")
        for skipped in scan.skipped:
            notes.append(f"a damaged snapshot was skipped: {skipped.path}: {skipped.reason}")
        configurations = [founding_of(config)]
        known_ids: set[int] = set(config.peers)
        snapshot_slot = 0
        if scan.latest is not None:
            snapshot_slot = scan.latest.slot
            try:
                membership, _ = unwrap_snapshot(scan.latest.data)
            except ValueError as e:
                raise RecoveryRefused(
                    f"the snapshot {scan.latest.path} does not decode: {e}"
                ) from None
            if membership is not None:
                configurations += [c for _, c in membership.configs]
                known_ids.update(membership.retired)
        for rec in previous:
            configurations.append(rec.configuration)
            known_ids.update(rec.disowned)
        last_index = durable.last_index
        if previous and previous[-1].wal_last_index == last_index:
            rec = previous[-1]
            plan = _plan(node_id, state, snapshot_slot, configurations, known_ids)
            return RecoveryOutcome(plan, rec, path / "pyxos.recovery", False, True, notes)
        if previous and not again:
            rec = previous[-1]
            raise RecoveryRefused(
                f"node {node_id} was recovered at {rec.at} (configuration epoch "
                f"{rec.epoch}) and has run since: a second forced recovery would disown "
                "every member that cluster has gained. If it too lost its majority for "
                "good, run again with --again"
            )
        plan = _plan(node_id, state, snapshot_slot, configurations, known_ids)
        # Values it learned from peers become entries of its acceptor (under its
        # promise: above every entry it holds), so its phase 1 re-proposes them.
        learned = [
            Entry(s, state.promised, v)
            for s, v in sorted(state.learned.items())
            if s >= snapshot_slot and (s not in state.accepted or state.accepted[s].value != v)
        ]
        if learned and not dry_run:
            try:
                durable.write(Persist(accepted=learned))
                durable.sync()
            except (OSError, StorageError) as e:
                raise RecoveryRefused(f"cannot write to {path}'s log: {e}") from None
            last_index = durable.last_index
        at = (now or datetime.datetime.now(datetime.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
        record = RecoveryRecord.from_plan(
            plan, at=at, cluster_id=config.cluster_id, wal_last_index=last_index
        )
        target = path / "pyxos.recovery"
        if not dry_run:
            try:
                target = write_recoveries(path, [*previous, record])
            except OSError as e:
                raise RecoveryRefused(f"cannot write the recovery record in {path}: {e}") from None
        return RecoveryOutcome(plan, record, target, not dry_run, False, notes)
    finally:
        durable.close()


def _plan(
    node_id: int,
    state: Recovered,
    snapshot_slot: int,
    configurations: list[Configuration],
    known_ids: set[int],
) -> RecoveryPlan:
    return plan_recovery(
        node_id,
        accepted=state.accepted,
        learned=state.learned,
        promised=state.promised,
        snapshot_slot=snapshot_slot,
        chosen_watermark=state.chosen,
        configurations=configurations,
        known_ids=known_ids,
    )
