"""The node's disk: the data directory, the durable state it holds, and what a start
does with it (docs/architecture.md, *Storage* and *Protocol: Rebuilding,
Bootstrapping*).

Theory of operation
-------------------
Durable state: ``startup`` opens the WAL in the data directory and rebuilds the
replica's promise and accepted entries from it. The directory's node marker
(``pyxos.id``) guards against voting from the wrong or a wiped disk: a marker of
another node or cluster refuses to start; no marker means a wiped disk unless the
node is explicitly initialized (``initialize=True``, ``--init``) on an empty directory:
then the log starts with ``BOOTSTRAPPING`` and the replica starts ``bootstrapping``:
it votes only once every peer has answered that it never held state (a new cluster),
and otherwise rebuilds, because a wiped member restarted with its first command line
looks the same on disk (see ``core/replica.py``). No marker without
``--init``, a marker with a corrupt WAL (``AcceptorStateLost``) or a marker with no WAL
at all means promises may be lost: the old segments go to quarantine,
a fresh log records ``NEEDS_REBUILD``, and the replica starts ``rebuilding`` (it
learns from every peer and does not vote until its ``REBUILT`` record is durable;
this survives restarts). A corrupt log raises
``AcceptorStateLost`` and the node does not start (it must not vote with a state that
may have forgotten promises). The applied state is not in the WAL: a restarted node
starts from its newest valid snapshot, if any, and re-learns every later chosen slot
from its peers (the leader's commits and ``Fetch``). All of this decision is
``storage.durable.open_node_storage``, the very code the simulator runs over its
simulated file system.

Before any of it the directory is checked by doing (``check_data_dir``: create it,
write and remove a probe file), so a read-only mount or a full disk is one clear
``DataDirUnusable`` (exit code 2), not a traceback; a damaged marker or another node's
directory is a ``NodeStartupError``. ``build_node`` then builds the pure
``ServiceNode`` from what was recovered, as the simulator's node factory does.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path

from pyxos.core.membership import Configuration
from pyxos.core.replica import Replica, ReplicaConfig
from pyxos.server.config import Config
from pyxos.statemachine.base import Application
from pyxos.statemachine.loader import make_app
from pyxos.statemachine.service import ServiceNode, unwrap_snapshot, wrap_snapshot
from pyxos.storage.durable import DurableAcceptor, Recovered, open_node_storage
from pyxos.storage.recovery import RecoveryRecord, RecoveryRecordError, read_recoveries
from pyxos.storage.snapshot import Snapshot as StoredSnapshot
from pyxos.storage.wal import MarkerError

__all__ = [
    "FILES_BESIDES_CONNECTIONS",
    "DataDirUnusable",
    "NodeStartupError",
    "PortUnavailable",
    "build_node",
    "check_data_dir",
    "ensure_file_limit",
    "open_storage",
    "recoveries_of",
]

logger = logging.getLogger("pyxos.server")


class NodeStartupError(Exception):
    """The node cannot start with this configuration and data directory."""


class PortUnavailable(NodeStartupError):
    """A configured port cannot be bound (in use, or not allowed): a configuration
    problem, reported like one (exit code 2)."""


class DataDirUnusable(NodeStartupError):
    """The data directory cannot be used: a file is in the way, or it cannot be created
    or written (a read-only file system, no permission, a full disk). A configuration
    problem, reported like one (exit code 2)."""


def open_storage(
    config: Config, *, initialize: bool, snapshot_dir: Path
) -> tuple[DurableAcceptor, Recovered, StoredSnapshot | None, list[RecoveryRecord]]:
    """Check the data directory, then open the node's durable state in it (see the
    module docstring); the last item: its forced recoveries (``recoveries_of``).
    Blocking: the server runs it in its fsync thread."""
    try:
        check_data_dir(config.data_dir)
    except DataDirUnusable as e:
        raise DataDirUnusable(f"node {config.node_id}: {e}") from None
    recoveries = recoveries_of(config)
    try:
        opened = open_node_storage(
            config.data_dir,
            config.cluster_id,
            config.node_id,
            initialize=initialize,
            snapshot_dir=snapshot_dir,
            segment_bytes=config.wal_segment_bytes,
        )
    except MarkerError as e:  # a damaged marker, or another node's directory
        raise NodeStartupError(str(e)) from e
    except OSError as e:
        # Whatever else the file system refuses (an I/O error, a file of the log
        # that cannot be read): one line, not a traceback.
        raise NodeStartupError(f"cannot open the data directory {config.data_dir}: {e}") from e
    node_id = config.node_id
    if opened.lost is not None:
        logger.warning(
            "node %d: %s; its promises may be lost: it rebuilds from its peers and "
            "does not vote until then (the old log is kept in quarantine-N/)",
            node_id,
            opened.lost,
        )
    if opened.snapshots is not None:
        for skipped in opened.snapshots.skipped:
            logger.warning("skipping damaged snapshot %s: %s", skipped.path, skipped.reason)
        for temp in opened.snapshots.temp_files:
            logger.warning("ignoring unfinished snapshot %s", temp)
    if opened.initialized:
        logger.info("node %d: initialized %s", node_id, config.data_dir)
    elif initialize:
        logger.info(
            "node %d: %s was initialized before: --init has no effect", node_id, config.data_dir
        )
    return opened.durable, opened.state, opened.snapshot, recoveries


def recoveries_of(config: Config) -> list[RecoveryRecord]:
    """The forced recoveries recorded in the node's data directory (``pyxos recover
    --force-new-cluster``, ``storage.recovery``), oldest first; a damaged record is a
    ``NodeStartupError`` (the node must not start without knowing what it is)."""
    try:
        return read_recoveries(config.data_dir)
    except RecoveryRecordError as e:
        raise NodeStartupError(f"node {config.node_id}: {e}") from e


def build_node(
    config: Config,
    state: Recovered,
    snapshot: StoredSnapshot | None,
    *,
    rng: random.Random,
    now: float,
    on_batch: Callable[[int], None] | None = None,
    app: Application | None = None,
    recoveries: Sequence[RecoveryRecord] = (),
    founding: Configuration | None = None,
) -> ServiceNode:
    """The pure node, from what the storage recovered: the acceptor state, the rebuild
    and bootstrap flags, the newest snapshot; ``app`` is the application instance to
    replicate (None: the one ``config.app`` names); ``recoveries``: the forced
    recoveries of its data directory (the newest one's configuration is forced, and
    every old id any of them disowned is refused); ``founding``: the configuration of
    slot 0 of a node that joined (None: the config's peers, ``server.peerbook``)."""
    replica = Replica(
        config.node_id,
        founding if founding is not None else config.quorum_system(),
        rng,
        config=ReplicaConfig(
            election_timeout=config.election_timeout,
            heartbeat_interval=config.heartbeat_interval,
            window=config.window,
        ),
        promised=state.promised,
        accepted=state.accepted.values(),
        now=now,
        rebuilding=state.needs_rebuild,
        rebuilt_from=max(state.rebuilt, 0),
        bootstrapping=state.bootstrapping,
        fences=state.fences,
    )
    replica.preferred_leader = config.preferred_leader or 0
    node = ServiceNode(
        replica,
        app if app is not None else make_app(config.app),
        snapshot_every=config.snapshot_every,
        snapshot_bytes=config.snapshot_bytes,
        forward=config.forward_requests,
        on_batch=on_batch,
        batch_replies=True,  # one ClientReplies per connection (server.routing)
    )
    if snapshot is not None:
        node.restore_snapshot(snapshot.slot, snapshot.data)
        logger.info("node %d: restored the snapshot of slot %d", config.node_id, snapshot.slot)
    if recoveries:
        rec = recoveries[-1]
        disowned = {n for r in recoveries for n in r.disowned}
        replica.force_configuration(rec.configuration, disowned, rec.reason)
        if node.snapshot is not None:
            # The snapshot it serves a lagging or joining node must carry the forced
            # timeline, not the old cluster's (which a joiner would install).
            slot, data = node.snapshot
            membership, app_bytes = unwrap_snapshot(data)
            if (
                membership is None
                or max((c.epoch for _, c in membership.configs), default=-1) < rec.epoch
            ):
                node.snapshot = (slot, wrap_snapshot(replica.membership_state(slot), app_bytes))
        logger.warning(
            "node %d: RECOVERED: forced into a new one-node cluster at %s (pyxos recover "
            "--force-new-cluster; configuration epoch %d, old voters %s disowned: %s). "
            "Values the old cluster chose at slot %d or later that this node did not "
            "hold may be lost. It now runs under configuration epoch %d, voters %s",
            config.node_id,
            rec.at,
            rec.epoch,
            list(rec.previous_voters),
            list(rec.disowned),
            rec.first_uncertain,
            replica.configuration.epoch,
            list(replica.configuration.voters),
        )
    logger.info(
        "node %d: recovered promise %s, %d accepted entries, chosen watermark %d%s",
        config.node_id,
        state.promised,
        len(state.accepted),
        state.chosen,
        " (rebuilding: not voting)"
        if state.needs_rebuild
        else " (bootstrapping: not voting until every peer has answered whether the cluster is new)"
        if state.bootstrapping
        else "",
    )
    return node


def check_data_dir(path: Path) -> None:
    """Raise ``DataDirUnusable`` unless ``path`` is, or can be made, a writable directory.

    Checked by doing it: create the directory (and its parents), then create, write and
    remove a probe file in it. Permission bits say little (root writes through them)
    and nothing about a read-only mount or a full disk; a write does.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DataDirUnusable(f"data_dir {path} exists and is not a directory") from None
    except OSError as e:
        raise DataDirUnusable(f"data_dir {path} cannot be created: {e.strerror or e}") from None
    probe = path / f".pyxos-write-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"pyxos")
        finally:
            os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DataDirUnusable(f"data_dir {path} is not writable: {e.strerror or e}") from None


FILES_BESIDES_CONNECTIONS = 256
"""File descriptors a node needs beyond its connections: WAL segments, snapshots,
peer links, the event loop's own."""


def ensure_file_limit(config: Config) -> int:
    """Raise the soft limit on open files to what the connection caps need; return it.

    The three listening ports may hold ``max_connections`` each. Out of descriptors,
    the node could not open its next WAL segment (a fatal error) long before the caps
    refuse anyone, so a flood of connections must meet the caps first. The soft limit
    is raised as far as the hard limit allows; if that is not enough, one warning says
    what to change.
    """
    try:
        import resource
    except ImportError:  # not on this platform
        return -1
    needed = 3 * config.max_connections + FILES_BESIDES_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft < needed:
        logger.warning(
            "node %d: the limit on open files is %d, below the %d that max_connections = %d "
            "on three ports needs: raise it (ulimit -n) or lower max_connections",
            config.node_id,
            soft,
            needed,
            config.max_connections,
        )
    return soft
