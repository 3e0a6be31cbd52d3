"""Durable acceptor state: the core's ``Persist`` records on the write-ahead log.

Theory of operation
-------------------
The core hands its driver ``Persist`` records (a new promised ballot, newly accepted
entries, a new chosen watermark). :class:`DurableAcceptor` maps each onto WAL records
of three types, msgpack-encoded with msgspec (never pickle: the bytes on disk must
not be able to run code when read back):

- ``PROMISED`` (1): one ``Ballot``;
- ``ACCEPTED`` (2): a list of ``Entry(slot, ballot, value)``;
- ``CHOSEN`` (3): one int, the first slot not known chosen (a hint only: safe to lose);
- ``REBUILT`` (4): one int, written when a node that lost its acceptor state finished
  rebuilding it from its peers (for cores whose ``Persist`` carries ``rebuilt``): the
  acceptor holds nothing trustworthy below that slot;
- ``NEEDS_REBUILD`` (5): no payload; the first record of a log started over by
  ``open_for_rebuild``. Until a later ``REBUILT`` record, the node must not vote.
- ``BOOTSTRAPPING`` (6): no payload; the first record of a log created by
  ``open_for_bootstrap`` (the bootstrap flag, ``--init``, on an empty directory). Until
  a later ``REBUILT`` record the node does not vote: it first asks its peers whether
  the cluster is new (its empty state is then the truth) or exists (then its disk may
  have been a wiped member's, and it rebuilds). See the notes in ``core/replica.py``.
- ``FENCE`` (7): one ``Fence(owner, nonce, bound)``: a fence against ``owner``'s
  ballots put up (``bound`` nil) before this node answered ``owner``'s rebuild query,
  or lifted down to ``bound``. Replayed in order into one ``FenceState`` per owner.
  Logs written before fences existed simply hold none (every older log stays
  readable); a log holding one is refused by older code (unknown record type).
- ``LEARNED`` (8): a list of ``Entry(slot, ZERO, value)``: chosen values this node
  learned from a peer (a fetch) and did not accept itself, so its acceptor entries do
  not hold them (``write_learned``, called by the server as it applies them). Never
  part of the acceptor state (no phase-1 report ever carries one): only a forced
  recovery reads them (docs/recovery.md), so every value the node knew chosen is on
  its disk. A log holding one is refused by older code (unknown record type).

``write`` only buffers (``WAL.append``: nothing touches the disk); ``sync`` writes and
fsyncs everything buffered so far with one ``fdatasync`` (group commit). ``write`` may
be called from the event loop while ``sync`` runs in a worker thread: the WAL allows
exactly that, and a ``sync`` covers every ``write`` that returned before it started.

Recovery (``open``) replays the log in order. The promised ballot is the highest one
recorded, an accepted slot keeps its last recorded entry (a later acceptance is always
under a ballot at least as high), and the chosen watermark is the highest recorded. A
torn tail is truncated by the WAL and reported in ``RecoveryReport``: those records
were never synced, so nothing that depended on them ever left the node.

Compaction: after a durable snapshot at slot ``S``, the driver ``checkpoint``s the
whole acceptor state (promise, the entries it still keeps, the chosen watermark, and
the fences, which this object tracks from what it recovered and writes) and,
once that is synced, deletes the WAL segments entirely before the checkpoint
(``truncate_before``). Whatever those segments held is either repeated in the
checkpoint or covered by the snapshot.

Corruption anywhere else means acknowledged promises or acceptances may be lost; a node
that voted again from such a state could break agreement. ``open`` then raises
:class:`AcceptorStateLost` (distinct from every other error, so the node refuses to
start as a voter instead of silently forgetting a promise). The node runtime then
calls ``open_for_rebuild``: the damaged segments are moved to ``quarantine-N/`` and a
fresh log starts with ``NEEDS_REBUILD``, so the node rebuilds from its peers.

Starting a node (``open_node_storage``) puts it together, for the node runtime and the
simulator alike (the simulator runs this very code over a simulated file system): the
node marker decides whether an empty or damaged directory is a new node or lost state,
the log is recovered or started over for a rebuild, and the newest valid snapshot is
loaded.

Every function takes ``fs``, the file system (``pyxos.storage.fs.OS`` by default), and
``wal_class``, the log implementation (the simulator's mutants replace it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from pyxos.core.ballot import ZERO, Ballot
from pyxos.core.messages import Entry
from pyxos.core.ready import Fence, FenceState, Persist
from pyxos.storage.fs import OS, FileSystem
from pyxos.storage.snapshot import Snapshot, SnapshotScan, scan_snapshots
from pyxos.storage.wal import (
    DEFAULT_SEGMENT_BYTES,
    MARKER_FILENAME,
    MAX_PAYLOAD_BYTES,
    WAL,
    MarkerError,
    Record,
    RecoveryReport,
    WALCorruption,
    read_marker,
    write_marker,
)

__all__ = [
    "ACCEPTED",
    "BOOTSTRAPPING",
    "CHOSEN",
    "FENCE",
    "LEARNED",
    "NEEDS_REBUILD",
    "PROMISED",
    "REBUILT",
    "AcceptorStateLost",
    "DurableAcceptor",
    "DurableStateError",
    "NodeStorage",
    "Recovered",
    "WrongDataDirectory",
    "encode_persist",
    "open_node_storage",
]


PROMISED = 1
"""WAL record type of a promised ballot."""
ACCEPTED = 2
"""WAL record type of a list of accepted entries."""
CHOSEN = 3
"""WAL record type of a chosen watermark."""
REBUILT = 4
"""WAL record type of a finished rebuild: nothing below this slot is trustworthy."""
NEEDS_REBUILD = 5
"""WAL record type that starts a log over after its acceptor state was lost."""
BOOTSTRAPPING = 6
"""WAL record type that starts the log of a node started with the bootstrap flag."""
FENCE = 7
"""WAL record type of a fence put up or lifted against another node's ballots."""
LEARNED = 8
"""WAL record type of chosen values learned from a peer (not accepted here)."""

_encoder = msgspec.msgpack.Encoder()
_ballot_decoder = msgspec.msgpack.Decoder(Ballot)
_entries_decoder = msgspec.msgpack.Decoder(list[Entry])
_int_decoder = msgspec.msgpack.Decoder(int)
_fence_decoder = msgspec.msgpack.Decoder(Fence)


class DurableStateError(Exception):
    """The durable acceptor state cannot be read back as written."""


class AcceptorStateLost(DurableStateError):
    """The log is corrupt (not a torn tail): promises or acceptances may be lost.

    The node must not vote with what is left. ``cause`` is the WAL's
    ``WALCorruption`` (path, offset and reason).
    """

    def __init__(self, cause: WALCorruption) -> None:
        super().__init__(
            f"acceptor state is corrupt, refusing to vote with it: {cause} "
            "(the node rebuilds it from its peers: see DurableAcceptor.open_for_rebuild)"
        )
        self.cause = cause


@dataclass(slots=True)
class Recovered:
    """What ``DurableAcceptor.open`` read back from the log."""

    promised: Ballot = ZERO
    accepted: dict[int, Entry] = field(default_factory=dict)
    chosen: int = 0
    rebuilt: int = -1
    """The slot of the last finished rebuild (-1: none ever)."""
    needs_rebuild: bool = False
    """The log was started over (``open_for_rebuild``) and no rebuild has finished since:
    the node must rebuild its acceptor state from its peers before it votes."""
    bootstrapping: bool = False
    """The log was created by ``open_for_bootstrap`` and no bootstrap or rebuild has
    finished since: the node asks its peers whether the cluster is new before it votes."""
    fences: dict[int, FenceState] = field(default_factory=dict)
    """owner -> the fences this node holds against that node's ballots."""
    learned: dict[int, bytes] = field(default_factory=dict)
    """slot -> a chosen value learned from a peer and not accepted here (``LEARNED``)."""
    report: RecoveryReport | None = None


def _accepted_records(entries: Sequence[Entry], rtype: int = ACCEPTED) -> list[tuple[int, bytes]]:
    """ACCEPTED (or ``rtype``) records for ``entries``, split so that no payload
    exceeds the WAL's limit."""
    payload = _encoder.encode(entries)
    if len(payload) <= MAX_PAYLOAD_BYTES:
        return [(rtype, payload)]
    if len(entries) == 1:
        raise ValueError(
            f"an accepted entry of {len(payload)} bytes exceeds the WAL record limit of "
            f"{MAX_PAYLOAD_BYTES} bytes"
        )
    half = len(entries) // 2
    return _accepted_records(entries[:half], rtype) + _accepted_records(entries[half:], rtype)


def encode_persist(persist: Persist) -> list[tuple[int, bytes]]:
    """The WAL records ``(type, payload)`` for one ``Persist`` (empty if it is empty)."""
    records: list[tuple[int, bytes]] = []
    if persist.promised is not None:
        records.append((PROMISED, _encoder.encode(persist.promised)))
    if persist.accepted:
        records += _accepted_records(persist.accepted)
    if persist.chosen >= 0:
        records.append((CHOSEN, _encoder.encode(persist.chosen)))
    rebuilt: int = getattr(persist, "rebuilt", -1)
    if rebuilt >= 0:
        records.append((REBUILT, _encoder.encode(rebuilt)))
    records += [(FENCE, _encoder.encode(f)) for f in getattr(persist, "fences", ())]
    return records


def _decode(index: int, rtype: int, payload: bytes, state: Recovered) -> None:
    try:
        if rtype == PROMISED:
            state.promised = max(state.promised, _ballot_decoder.decode(payload))
        elif rtype == ACCEPTED:
            for entry in _entries_decoder.decode(payload):
                state.accepted[entry.slot] = entry
        elif rtype == CHOSEN:
            state.chosen = max(state.chosen, _int_decoder.decode(payload))
        elif rtype == REBUILT:
            state.rebuilt = max(state.rebuilt, _int_decoder.decode(payload))
            state.needs_rebuild = False
            state.bootstrapping = False
        elif rtype == NEEDS_REBUILD:
            state.needs_rebuild = True
            state.bootstrapping = False
        elif rtype == BOOTSTRAPPING:
            state.bootstrapping = True
        elif rtype == FENCE:
            fence = _fence_decoder.decode(payload)
            state.fences.setdefault(fence.owner, FenceState()).apply(fence)
        elif rtype == LEARNED:
            for entry in _entries_decoder.decode(payload):
                state.learned[entry.slot] = entry.value
        else:
            raise DurableStateError(f"WAL record {index} has unknown type {rtype}")
    except msgspec.DecodeError as e:
        raise DurableStateError(f"WAL record {index} (type {rtype}) does not decode: {e}") from e


class DurableAcceptor:
    """One node's acceptor state on a WAL; create it with ``DurableAcceptor.open``."""

    def __init__(
        self,
        wal: WAL,
        fences: dict[int, FenceState] | None = None,
        learned: dict[int, bytes] | None = None,
    ) -> None:
        """Internal: use ``open``."""
        self.wal = wal
        self.fences: dict[int, FenceState] = {
            owner: FenceState(f.lifted, set(f.up)) for owner, f in (fences or {}).items()
        }
        """The fences as of the last ``write`` (a ``checkpoint`` repeats them)."""
        self.learned: dict[int, bytes] = dict(learned or {})
        """The ``LEARNED`` values written (a ``checkpoint`` repeats those it is told to
        keep)."""
        self.writes = 0
        """``Persist`` records written (non-empty ones)."""
        self.syncs = 0
        """Completed ``sync`` calls that had something to write."""

    @classmethod
    def open(
        cls,
        dirpath: str | os.PathLike[str],
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fs: FileSystem = OS,
        wal_class: type[WAL] = WAL,
    ) -> tuple[DurableAcceptor, Recovered]:
        """Open (creating if needed) the log in ``dirpath`` and read the state back.

        Raises ``AcceptorStateLost`` on corruption (see the module notes),
        ``DurableStateError`` if a record does not decode, and ``WALError`` if the log
        cannot be opened (for example, another process holds it).
        """
        try:
            wal, report = wal_class.open(Path(dirpath), segment_bytes=segment_bytes, fs=fs)
        except WALCorruption as e:
            raise AcceptorStateLost(e) from e
        try:
            state = Recovered(report=report)
            for record in _replay(wal):
                _decode(record.index, record.rtype, record.payload, state)
        except BaseException:
            wal.close()
            raise
        return cls(wal, state.fences, state.learned), state

    @classmethod
    def open_for_rebuild(
        cls,
        dirpath: str | os.PathLike[str],
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fs: FileSystem = OS,
        wal_class: type[WAL] = WAL,
    ) -> tuple[DurableAcceptor, Recovered]:
        """Start the log over because its acceptor state was lost (corrupt or missing).

        The old segments are moved, not deleted, into ``quarantine-N/`` for a post
        mortem; a fresh log gets a durable ``NEEDS_REBUILD`` record, so the node keeps
        refusing to vote across restarts until a ``REBUILT`` record follows.
        """
        path = Path(dirpath)
        if not fs.is_dir(path):
            fs.mkdir(path)
        old = sorted(n for n in fs.listdir(path) if n.startswith("wal-"))
        if old:
            n = 1
            while fs.exists(path / f"quarantine-{n}"):
                n += 1
            quarantine = path / f"quarantine-{n}"
            fs.mkdir(quarantine)
            for name in old:
                fs.replace(path / name, quarantine / name)
            fs.fsync_dir(quarantine)
            fs.fsync_dir(path)
        # The fresh log is created with its NEEDS_REBUILD record in one atomic write:
        # were the record appended after the empty log became durable, a crash in
        # between would leave a valid empty log, and the node would vote as if new.
        existed = WAL.exists(path, fs=fs)  # only if the moves above left one behind
        wal, report = wal_class.open(
            path, segment_bytes=segment_bytes, fs=fs, initial=[(NEEDS_REBUILD, b"")]
        )
        if existed:
            try:
                wal.append_and_sync([(NEEDS_REBUILD, b"")])
            except BaseException:
                wal.close()
                raise
        return cls(wal), Recovered(needs_rebuild=True, report=report)

    @classmethod
    def open_for_bootstrap(
        cls,
        dirpath: str | os.PathLike[str],
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fs: FileSystem = OS,
        wal_class: type[WAL] = WAL,
    ) -> tuple[DurableAcceptor, Recovered]:
        """Create the log of a node started with the bootstrap flag on an empty
        directory: a durable ``BOOTSTRAPPING`` record, so that the node keeps asking its
        peers before it votes across restarts (with or without the flag) until a
        ``REBUILT`` record follows. Raises ``DurableStateError`` if a log exists."""
        path = Path(dirpath)
        if wal_class.exists(path, fs=fs):
            raise DurableStateError(f"{path} already holds a write-ahead log")
        if not fs.is_dir(path):
            fs.mkdir(path)
        wal, report = wal_class.open(path, segment_bytes=segment_bytes, fs=fs)
        try:
            wal.append_and_sync([(BOOTSTRAPPING, b"")])
        except BaseException:
            wal.close()
            raise
        return cls(wal), Recovered(bootstrapping=True, report=report)

    def write(self, persist: Persist) -> None:
        """Buffer ``persist`` (not durable until a later ``sync`` returns)."""
        records = encode_persist(persist)
        if records:
            self.wal.append(records)
            self.writes += 1
        for fence in getattr(persist, "fences", ()):
            self.fences.setdefault(fence.owner, FenceState()).apply(fence)

    def write_learned(self, entries: Sequence[Entry]) -> None:
        """Buffer ``LEARNED`` records: chosen values learned from a peer and not
        accepted here (see the module notes; not durable until a later ``sync``)."""
        if entries:
            self.wal.append(_accepted_records(entries, LEARNED))
            for entry in entries:
                self.learned[entry.slot] = entry.value

    def sync(self) -> int:
        """Write and fsync everything buffered (one fsync); return the durable index.

        Thread-safe against ``write``. A failure raises ``WALError`` and is fatal.
        """
        before = self.wal.durable_index
        durable = self.wal.sync()
        if durable != before:
            self.syncs += 1
        return durable

    def checkpoint(
        self,
        promised: Ballot,
        accepted: Iterable[Entry],
        chosen: int,
        *,
        learned_from: int | None = None,
    ) -> int:
        """Buffer the whole current acceptor state; return the index of its first record.

        Once a ``sync`` has covered it, every record before that index is superseded
        (recovery reads the highest promise and the last entry per slot) and may go
        with ``truncate_before``, provided a durable snapshot covers every slot whose
        entry ``accepted`` leaves out. The ``LEARNED`` values from slot ``learned_from``
        on are repeated (the others are forgotten: the snapshot covers them; None:
        all are repeated).
        """
        entries = sorted(accepted, key=lambda e: e.slot)
        records = [(PROMISED, _encoder.encode(promised))]
        if entries:
            records += _accepted_records(entries)
        if learned_from is not None:
            self.learned = {s: v for s, v in self.learned.items() if s >= learned_from}
        if self.learned:
            kept = [Entry(s, ZERO, v) for s, v in sorted(self.learned.items())]
            records += _accepted_records(kept, LEARNED)
        records.append((CHOSEN, _encoder.encode(chosen)))
        for owner, fence in sorted(self.fences.items()):
            records += [(FENCE, _encoder.encode(f)) for f in fence.records(owner)]
        last = self.wal.append(records)
        self.writes += 1
        return last - len(records) + 1

    def truncate_before(self, index: int) -> int:
        """Delete whole WAL segments whose records all precede ``index``; return how many.

        Call only after a ``checkpoint`` starting at ``index`` is durable.
        """
        return self.wal.truncate_before(index)

    @property
    def segments(self) -> int:
        """How many WAL segment files there are."""
        return len(self.wal.segment_paths)

    @property
    def last_index(self) -> int:
        """Index of the newest record written, synced or not."""
        return self.wal.last_index

    def close(self) -> None:
        """Close the log (buffered, unsynced records are lost, as in a crash)."""
        self.wal.close()


def _replay(wal: WAL) -> Iterator[Record]:
    try:
        yield from wal.replay()
    except WALCorruption as e:
        raise AcceptorStateLost(e) from e


class WrongDataDirectory(MarkerError):
    """The data directory's marker names another cluster or node: the wrong disk."""


@dataclass(slots=True)
class NodeStorage:
    """What a node starts from: its open log, the state read back, its newest snapshot."""

    durable: DurableAcceptor
    state: Recovered
    snapshot: Snapshot | None
    lost: str | None = None
    """Why the acceptor state was found lost (the node rebuilds), None if it was not."""
    snapshots: SnapshotScan | None = None
    """The snapshot scan: damaged snapshots skipped, unfinished ones found."""
    initialized: bool = False
    """The marker was written now (an empty directory was initialized)."""


def open_node_storage(
    data_dir: str | os.PathLike[str],
    cluster_id: str,
    node_id: int,
    *,
    initialize: bool,
    snapshot_dir: str | os.PathLike[str] | None = None,
    segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    fs: FileSystem = OS,
    wal_class: type[WAL] = WAL,
) -> NodeStorage:
    """Open a node's data directory at startup, deciding between recovery and rebuild.

    The node marker (``pyxos.id``) guards against voting from the wrong or a wiped
    disk: a marker of another node or cluster raises ``WrongDataDirectory`` and a
    damaged one ``MarkerError``; no marker means a wiped disk unless ``initialize``
    (``--init``) and the directory is empty: then the log starts with
    ``open_for_bootstrap``, and the node asks its peers whether the cluster is new
    before it votes (a wiped member restarted with its first command line looks the
    same on disk). No marker without ``initialize``, a marker with no log, or a corrupt log
    (``AcceptorStateLost``) means promises may be lost: the log is started over with
    ``open_for_rebuild`` and the node must rebuild before it votes. The marker is
    written once the log is open. ``snapshot_dir`` defaults to ``data_dir/snapshots``.
    Nothing is logged here: the result says what was found, the caller reports it.
    """
    path = Path(data_dir)
    snapshots = Path(snapshot_dir) if snapshot_dir is not None else path / "snapshots"
    marker = read_marker(path, fs=fs)
    if marker is not None and (marker.cluster_id != cluster_id or marker.node_id != node_id):
        raise WrongDataDirectory(
            f"{path} belongs to node {marker.node_id} of cluster "
            f"{marker.cluster_id!r}, not node {node_id} of {cluster_id!r}"
        )
    lost: str | None = None
    bootstrap = False
    if marker is None and initialize:
        leftovers = WAL.exists(path, fs=fs) or (
            fs.is_dir(snapshots) and bool(fs.listdir(snapshots))
        )
        if leftovers:
            lost = (
                f"{path} holds no node marker ({MARKER_FILENAME}) but does hold data: "
                "--init applies only to an empty data directory"
            )
        else:
            # The disk cannot tell a new node from a wiped member restarted with the
            # command line it was first started with: the replica asks its peers
            # before it votes (core/replica.py, "Bootstrapping").
            bootstrap = True
    elif marker is None:
        # Without --init an empty (or wiped) data directory is treated as lost state:
        # the node was a member before, so it must not vote until it has rebuilt.
        lost = (
            f"{path} holds no node marker ({MARKER_FILENAME}): the data "
            "directory is new or was wiped (to bootstrap a new cluster, start every "
            "node once with --init)"
        )
    elif not WAL.exists(path, fs=fs):
        lost = "the write-ahead log is missing"
    else:
        try:
            durable, state = DurableAcceptor.open(
                path, segment_bytes=segment_bytes, fs=fs, wal_class=wal_class
            )
        except AcceptorStateLost as e:
            lost = str(e)
    if bootstrap:
        durable, state = DurableAcceptor.open_for_bootstrap(
            path, segment_bytes=segment_bytes, fs=fs, wal_class=wal_class
        )
    elif lost is not None:
        durable, state = DurableAcceptor.open_for_rebuild(
            path, segment_bytes=segment_bytes, fs=fs, wal_class=wal_class
        )
    try:
        scan = scan_snapshots(snapshots, fs=fs)
        if marker is None:
            write_marker(path, cluster_id, node_id, fs=fs)
    except BaseException:
        durable.close()
        raise
    return NodeStorage(durable, state, scan.latest, lost, scan, marker is None)
