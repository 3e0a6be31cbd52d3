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
whole acceptor state (promise, the entries it still keeps, the chosen watermark) and,
once that is synced, deletes the WAL segments entirely before the checkpoint
(``truncate_before``). Whatever those segments held is either repeated in the
checkpoint or covered by the snapshot.

Corruption anywhere else means acknowledged promises or acceptances may be lost; a node
that voted again from such a state could break agreement. ``open`` then raises
:class:`AcceptorStateLost` (distinct from every other error, so the node refuses to
start as a voter instead of silently forgetting a promise). The node runtime then
calls ``open_for_rebuild``: the damaged segments are moved to ``quarantine-N/`` and a
fresh log starts with ``NEEDS_REBUILD``, so the node rebuilds from its peers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from pyxos.core.ballot import ZERO, Ballot
from pyxos.core.messages import Entry
from pyxos.core.ready import Persist
from pyxos.storage.wal import (
    DEFAULT_SEGMENT_BYTES,
    MAX_PAYLOAD_BYTES,
    WAL,
    Record,
    RecoveryReport,
    WALCorruption,
    fsync_directory,
)

__all__ = [
    "ACCEPTED",
    "CHOSEN",
    "NEEDS_REBUILD",
    "PROMISED",
    "REBUILT",
    "AcceptorStateLost",
    "DurableAcceptor",
    "DurableStateError",
    "Recovered",
    "encode_persist",
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

_encoder = msgspec.msgpack.Encoder()
_ballot_decoder = msgspec.msgpack.Decoder(Ballot)
_entries_decoder = msgspec.msgpack.Decoder(list[Entry])
_int_decoder = msgspec.msgpack.Decoder(int)


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
    report: RecoveryReport | None = None


def _accepted_records(entries: Sequence[Entry]) -> list[tuple[int, bytes]]:
    """ACCEPTED records for ``entries``, split so that no payload exceeds the WAL's limit."""
    payload = _encoder.encode(entries)
    if len(payload) <= MAX_PAYLOAD_BYTES:
        return [(ACCEPTED, payload)]
    if len(entries) == 1:
        raise ValueError(
            f"an accepted entry of {len(payload)} bytes exceeds the WAL record limit of "
            f"{MAX_PAYLOAD_BYTES} bytes"
        )
    half = len(entries) // 2
    return _accepted_records(entries[:half]) + _accepted_records(entries[half:])


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
        elif rtype == NEEDS_REBUILD:
            state.needs_rebuild = True
        else:
            raise DurableStateError(f"WAL record {index} has unknown type {rtype}")
    except msgspec.DecodeError as e:
        raise DurableStateError(f"WAL record {index} (type {rtype}) does not decode: {e}") from e


class DurableAcceptor:
    """One node's acceptor state on a WAL; create it with ``DurableAcceptor.open``."""

    def __init__(self, wal: WAL) -> None:
        """Internal: use ``open``."""
        self.wal = wal
        self.writes = 0
        """``Persist`` records written (non-empty ones)."""
        self.syncs = 0
        """Completed ``sync`` calls that had something to write."""

    @classmethod
    def open(
        cls, dirpath: str | os.PathLike[str], *, segment_bytes: int = DEFAULT_SEGMENT_BYTES
    ) -> tuple[DurableAcceptor, Recovered]:
        """Open (creating if needed) the log in ``dirpath`` and read the state back.

        Raises ``AcceptorStateLost`` on corruption (see the module notes),
        ``DurableStateError`` if a record does not decode, and ``WALError`` if the log
        cannot be opened (for example, another process holds it).
        """
        try:
            wal, report = WAL.open(Path(dirpath), segment_bytes=segment_bytes)
        except WALCorruption as e:
            raise AcceptorStateLost(e) from e
        try:
            state = Recovered(report=report)
            for record in _replay(wal):
                _decode(record.index, record.rtype, record.payload, state)
        except BaseException:
            wal.close()
            raise
        return cls(wal), state

    @classmethod
    def open_for_rebuild(
        cls, dirpath: str | os.PathLike[str], *, segment_bytes: int = DEFAULT_SEGMENT_BYTES
    ) -> tuple[DurableAcceptor, Recovered]:
        """Start the log over because its acceptor state was lost (corrupt or missing).

        The old segments are moved, not deleted, into ``quarantine-N/`` for a post
        mortem; a fresh log gets a durable ``NEEDS_REBUILD`` record, so the node keeps
        refusing to vote across restarts until a ``REBUILT`` record follows.
        """
        path = Path(dirpath)
        path.mkdir(parents=True, exist_ok=True)
        old = sorted(p for p in path.iterdir() if p.name.startswith("wal-"))
        if old:
            n = 1
            while (path / f"quarantine-{n}").exists():
                n += 1
            quarantine = path / f"quarantine-{n}"
            quarantine.mkdir()
            for segment in old:
                segment.rename(quarantine / segment.name)
            fsync_directory(quarantine)
            fsync_directory(path)
        wal, report = WAL.open(path, segment_bytes=segment_bytes)
        try:
            wal.append_and_sync([(NEEDS_REBUILD, b"")])
        except BaseException:
            wal.close()
            raise
        return cls(wal), Recovered(needs_rebuild=True, report=report)

    def write(self, persist: Persist) -> None:
        """Buffer ``persist`` (not durable until a later ``sync`` returns)."""
        records = encode_persist(persist)
        if records:
            self.wal.append(records)
            self.writes += 1

    def sync(self) -> int:
        """Write and fsync everything buffered (one fsync); return the durable index.

        Thread-safe against ``write``. A failure raises ``WALError`` and is fatal.
        """
        before = self.wal.durable_index
        durable = self.wal.sync()
        if durable != before:
            self.syncs += 1
        return durable

    def checkpoint(self, promised: Ballot, accepted: Iterable[Entry], chosen: int) -> int:
        """Buffer the whole current acceptor state; return the index of its first record.

        Once a ``sync`` has covered it, every record before that index is superseded
        (recovery reads the highest promise and the last entry per slot) and may go
        with ``truncate_before``, provided a durable snapshot covers every slot whose
        entry ``accepted`` leaves out.
        """
        entries = sorted(accepted, key=lambda e: e.slot)
        records = [(PROMISED, _encoder.encode(promised))]
        if entries:
            records += _accepted_records(entries)
        records.append((CHOSEN, _encoder.encode(chosen)))
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
