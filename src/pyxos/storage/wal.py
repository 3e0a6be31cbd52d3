"""A segmented, checksummed, append-only write-ahead log with group commit.

Theory of operation
-------------------
The log is a directory of segment files. Records get consecutive indexes, starting
at 1 in a fresh log and never reused; a record's index is implicit (the segment's
first index plus its position), so segments must chain without gaps. The log knows
nothing about Paxos: a record is a type byte and opaque payload bytes, and the layer
above decides what they mean.

Durability is explicit. ``append`` only encodes records into an in-memory buffer and
assigns their indexes; ``sync`` writes everything buffered with ONE write call per
segment touched and makes it durable with ONE ``fdatasync`` per segment touched (one in
the common case, when no roll happens): that is the group commit. Nothing may be
acknowledged to anyone before the ``sync`` covering it has returned. ``append`` may be
called from one thread while ``sync`` runs in another (so a driver can keep one fsync in
flight while the next batch accumulates); ``sync``, ``truncate_before`` and ``close``
are serialized against each other.

A failed write or fsync is fatal (the "fsyncgate" lesson: after a failed fsync the
kernel may have dropped the dirty pages and will report success next time). The WAL
enters the failed state and every later call raises ``WALError``. The caller must
stop the node; reopening the log in the same process is not safe either, because the
page cache may still show bytes that never reached the disk.

One failure is not fatal: a full disk (``ENOSPC``, or ``EDQUOT`` over a quota) during
``sync``, at the write, the fsync or a segment roll. Nothing written since the last
successful fsync is treated as durable (its pages may be dropped, or the write stopped
mid-record): the active segment is cut back to its last durable length with
``truncate`` (an ``ftruncate`` that removes those pages from the cache, then an
fsync), a half-created next segment is removed, and the records that were not made
durable go back, in order and with their indexes, in front of the buffer. ``sync``
raises ``WALDiskFull`` and the WAL stays usable: the next ``sync`` writes them again
from scratch, so a retry after space returns makes them durable exactly as if the
first attempt never happened (no partial record is left between two records). If the
cut itself fails with ``ENOSPC`` the WAL stays usable and the next ``sync`` tries it
first; any other error there is fatal as above.

Recovery (``WAL.open``) reads every segment and checks every checksum:

- A damaged record in the LAST segment that no intact record follows (the file ends
  inside its header, its length runs past the end of the file, its checksum fails and
  only garbage or zeros follow, or the tail is zero-filled) is a *torn tail*: the
  crash happened during the final write, so nothing in it was ever acknowledged. The
  file is truncated to the end of the last intact record, fsynced, and the loss is
  reported in ``RecoveryReport.truncated_bytes``.
- Any other damage is *corruption* and ``WAL.open`` raises ``WALCorruption`` with the
  segment path and offset: a damaged record followed by an intact one (found by
  scanning forward byte by byte, so a flipped length field cannot hide the records
  after it), damage in a non-last segment, a bad segment header, or a gap between
  segments. Acknowledged records may have been lost, so the node must not vote until
  it has rebuilt its state from its peers. No good prefix is returned on purpose: a
  prefix cannot be trusted to contain every promise the node made.

One honest limit: a crash during a multi-page write can persist pages out of order, so
a torn final batch can look like "damage followed by an intact record". That is
reported as corruption: a spurious rebuild costs availability, while mistaking real
corruption for a torn tail would silently forget a promise. The converse ambiguity is
inherent: damage to the final record itself (after it was acknowledged) is
indistinguishable from a torn write and is truncated as a torn tail.

On-disk format, version 1 (all integers little-endian)
------------------------------------------------------
Segment file ``wal-{first_index:020d}.log``::

    header (20 bytes):
        magic        6 bytes   b"PYXWAL"
        version      u16       1
        first_index  u64       index of the segment's first record (equals the name)
        header_crc   u32       CRC-32C of the 16 bytes above
    records, back to back, to the end of the file:
        length       u32       length of the body = 1 + len(payload), 1..MAX_PAYLOAD_BYTES+1
        crc          u32       CRC-32C (Castagnoli) of the body
        body:
            type     u8        record type, chosen by the caller (0..255)
            payload  length-1 bytes, opaque (the caller msgpack-encodes)

A new segment is written as ``wal-….log.tmp``, fsynced, renamed into place and the
directory fsynced, so a segment file either does not exist or has a complete header;
recovery deletes leftover ``.tmp`` files. A segment is filled to ``segment_bytes`` (a
single record larger than that gets a segment of its own) before the next is created,
and its data is fsynced before its successor exists. ``truncate_before`` deletes whole
segments, oldest first, fsyncing the directory after each, so a crash leaves a
contiguous suffix of segments.

Node marker
-----------
``write_marker`` / ``read_marker`` manage ``pyxos.id``, a small JSON file naming the
cluster and node a data directory belongs to; see ``write_marker`` for how the node
runtime should use it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import crc32c

from pyxos.storage.fs import (
    OS,
    AppendFile,
    DirectoryLocked,
    DirLock,
    FileSystem,
    fdatasync,
    fsync_directory,
)

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "DISK_FULL_ERRNOS",
    "FORMAT_VERSION",
    "MARKER_FILENAME",
    "MAX_PAYLOAD_BYTES",
    "RECORD_HEADER_SIZE",
    "SEGMENT_HEADER_SIZE",
    "SEGMENT_MAGIC",
    "WAL",
    "MarkerError",
    "NodeMarker",
    "Record",
    "RecoveryReport",
    "StorageError",
    "WALCorruption",
    "WALDiskFull",
    "WALError",
    "atomic_write_file",
    "encode_record",
    "fdatasync",
    "fsync_directory",
    "is_disk_full",
    "read_marker",
    "record_offsets",
    "write_marker",
]

SEGMENT_MAGIC = b"PYXWAL"
FORMAT_VERSION = 1
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
# A record length must have a zero high byte (< 2**24): the forward scan that tells a
# torn tail from corruption relies on it, and it turns a flipped high bit into an
# "impossible length" rather than a plausible one.
MAX_PAYLOAD_BYTES = 8 * 1024 * 1024
_MAX_BODY = MAX_PAYLOAD_BYTES + 1

_SEGMENT_HEADER = struct.Struct("<6sHQ")  # magic, version, first_index; then u32 crc
SEGMENT_HEADER_SIZE = _SEGMENT_HEADER.size + 4
_RECORD_HEADER = struct.Struct("<II")  # body length, crc32c(body)
RECORD_HEADER_SIZE = _RECORD_HEADER.size
_U32 = struct.Struct("<I")

_SEGMENT_NAME = re.compile(r"^wal-(\d{20})\.log$")
_SEGMENT_TMP_NAME = re.compile(r"^wal-\d{20}\.log\.tmp$")


class StorageError(Exception):
    """Base class of every error raised by pyxos.storage."""


class WALError(StorageError):
    """The WAL cannot do what was asked: it failed, was closed, or is locked."""


class WALDiskFull(WALError):
    """``sync`` ran out of disk space (``ENOSPC``/``EDQUOT``); the WAL is still usable.

    Nothing buffered was lost and nothing written since the last successful sync is
    counted as durable: the records stay buffered and the next ``sync`` writes them
    again (see the module notes).
    """


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
"""The ``OSError`` numbers that mean "no space" (recoverable, see ``WALDiskFull``)."""


def is_disk_full(error: BaseException) -> bool:
    """True if ``error`` (or what caused it) is a full disk or an exceeded quota."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in DISK_FULL_ERRNOS:
            return True
        seen = seen.__cause__
    return False


class WALCorruption(WALError):
    """Recovery found damage that is not a torn tail: acknowledged data may be lost.

    The node must not vote until it has rebuilt its state from its peers.
    """

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(f"{path}: corrupt at offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Record:
    """One log record: its index in the log, the caller's type byte and payload."""

    index: int
    rtype: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What ``WAL.open`` found and repaired.

    ``truncated_bytes`` > 0 means a torn tail was cut off the last segment (at
    ``truncated_at`` in ``truncated_segment``, for ``truncated_reason``); those bytes
    were never acknowledged. Corruption is never reported here: it raises.
    """

    segments: int
    records: int
    first_index: int  # index of the first record on disk (last_index + 1 when none)
    last_index: int  # index of the last record on disk (first_index - 1 when none)
    truncated_bytes: int = 0
    truncated_segment: Path | None = None
    truncated_at: int | None = None
    truncated_reason: str | None = None
    removed_temp_files: tuple[Path, ...] = ()

    @property
    def torn_tail(self) -> bool:
        """True when a torn tail was truncated."""
        return self.truncated_bytes > 0


@dataclass(slots=True)
class _Segment:
    path: Path
    first_index: int
    count: int  # durable records in the file
    size: int  # durable bytes in the file, header included


def atomic_write_file(
    path: str | os.PathLike[str], chunks: Sequence[bytes], *, fs: FileSystem = OS
) -> None:
    """Replace ``path`` with ``chunks`` atomically and durably.

    Writes ``path + ".tmp"``, fsyncs it, renames it over ``path`` and fsyncs the
    directory: after a crash the file holds either its old content or the new one.
    A leftover ``.tmp`` file means a write did not finish; readers ignore it.
    """
    fs.write_atomic(Path(path), chunks)


def encode_record(rtype: int, payload: bytes) -> bytes:
    """Encode one record (header and body) exactly as it is stored on disk."""
    if not 0 <= rtype <= 255:
        raise ValueError(f"record type must be 0..255, got {rtype}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    type_byte = bytes((rtype,))
    crc = crc32c.crc32c(payload, crc32c.crc32c(type_byte))
    return b"".join((_RECORD_HEADER.pack(len(payload) + 1, crc), type_byte, payload))


def _encode_segment_header(first_index: int) -> bytes:
    head = _SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, first_index)
    return head + _U32.pack(crc32c.crc32c(head))


def _segment_path(dirpath: Path, first_index: int) -> Path:
    return dirpath / f"wal-{first_index:020d}.log"


def _check_record(view: memoryview, pos: int, end: int) -> int | str:
    """Return the end offset of the intact record at ``pos``, or why it is not intact."""
    if end - pos < RECORD_HEADER_SIZE:
        return "record header runs past the end of the file"
    length: int
    crc: int
    length, crc = _RECORD_HEADER.unpack_from(view, pos)
    if length == 0 or length > _MAX_BODY:
        return f"impossible record length {length}"
    body_end = pos + RECORD_HEADER_SIZE + length
    if body_end > end:
        return f"record length {length} runs past the end of the file"
    if crc32c.crc32c(view[pos + RECORD_HEADER_SIZE : body_end]) != crc:
        return "record checksum mismatch"
    return body_end


def _find_intact_record(data: bytes, start: int, end: int) -> int | None:
    """Return the offset of some intact record starting in [start, end), if any.

    A valid length is below 2**24, so its high byte (the 4th, little-endian) is zero:
    candidates are found with a C-speed search for zero bytes.
    """
    view = memoryview(data)
    zero = data.find(0, start + 3, end)
    while zero != -1:
        if isinstance(_check_record(view, zero - 3, end), int):
            return zero - 3
        zero = data.find(0, zero + 1, end)
    return None


def record_offsets(data: bytes) -> list[int]:
    """Where the intact records of a segment's bytes start, up to the first damage."""
    view = memoryview(data)
    offsets: list[int] = []
    pos = SEGMENT_HEADER_SIZE
    while pos < len(data):
        result = _check_record(view, pos, len(data))
        if isinstance(result, str):
            break
        offsets.append(pos)
        pos = result
    return offsets


def _check_segment_header(path: Path, data: bytes, first_index: int) -> None:
    if len(data) < SEGMENT_HEADER_SIZE:
        raise WALCorruption(path, 0, f"segment header incomplete ({len(data)} bytes)")
    magic, version, header_first = _SEGMENT_HEADER.unpack_from(data, 0)
    (crc,) = _U32.unpack_from(data, _SEGMENT_HEADER.size)
    if magic != SEGMENT_MAGIC or crc != crc32c.crc32c(data[: _SEGMENT_HEADER.size]):
        raise WALCorruption(path, 0, "bad segment header")
    if version != FORMAT_VERSION:
        raise WALError(f"{path}: unsupported WAL format version {version}")
    if header_first != first_index:
        raise WALCorruption(path, 0, f"header says first index {header_first}")


class WAL:
    """A segmented write-ahead log; create it with ``WAL.open``.

    Indexes: ``first_index`` is the oldest record still stored, ``durable_index`` the
    newest record made durable by ``sync``, ``last_index`` the newest record appended
    (buffered or durable). An empty fresh log has first_index 1 and the others 0.
    """

    def __init__(
        self,
        dirpath: Path,
        lock: DirLock,
        segments: list[_Segment],
        active: AppendFile,
        segment_bytes: int,
        fs: FileSystem,
    ) -> None:
        """Internal: use ``WAL.open``."""
        self._dir = dirpath
        self._fs = fs
        self._dir_lock = lock
        self._segments = segments  # oldest first; the last one is being appended to
        self._active = active
        self._segment_bytes = segment_bytes
        self._pending: list[bytes] = []  # encoded, not yet written
        last = segments[-1]
        self._next_index = last.first_index + last.count  # index the next append gets
        self._lock = threading.Lock()  # guards _pending, _next_index, segment counters
        self._sync_lock = threading.Lock()  # one sync / truncate / close at a time
        self._failed: BaseException | None = None
        self._closed = False
        # After a full disk: the active segment may hold bytes past its durable size
        # (and a next segment may be half made) until _repair has cut them off.
        self._needs_repair = False
        self.disk_full_errors = 0
        """How many ``sync`` calls ended with ``WALDiskFull``."""

    # -- opening and recovery --------------------------------------------------------

    @staticmethod
    def exists(dirpath: str | os.PathLike[str], *, fs: FileSystem = OS) -> bool:
        """True if ``dirpath`` holds at least one WAL segment (``open`` creates one)."""
        path = Path(dirpath)
        return fs.is_dir(path) and any(_SEGMENT_NAME.match(n) for n in fs.listdir(path))

    @classmethod
    def open(
        cls,
        dirpath: str | os.PathLike[str],
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fs: FileSystem = OS,
        initial: Sequence[tuple[int, bytes]] = (),
    ) -> tuple[WAL, RecoveryReport]:
        """Open (creating if needed) the log in ``dirpath`` and recover it.

        Checks every record, truncates a torn tail (reported in the RecoveryReport)
        and raises ``WALCorruption`` on any other damage. Read the records with
        ``replay``. The directory is locked against a second opener (POSIX flock).
        ``fs`` is the file system (the simulator passes a simulated one). If the log
        is created now, its first segment holds the ``initial`` records from the
        start: the new log never exists, not even after a crash, without them.
        """
        if segment_bytes <= SEGMENT_HEADER_SIZE:
            raise ValueError(f"segment_bytes must exceed {SEGMENT_HEADER_SIZE}")
        path = Path(dirpath)
        if not fs.is_dir(path):
            fs.mkdir(path)
        try:
            lock = fs.lock_dir(path)
        except DirectoryLocked:
            raise WALError(f"{path}: WAL is already open (by this or another process)") from None
        try:
            segments, report = cls._recover(path, fs, initial)
            active = fs.open_append(segments[-1].path)
        except BaseException:
            lock.close()
            raise
        return cls(path, lock, segments, active, segment_bytes, fs), report

    @staticmethod
    def _recover(
        dirpath: Path, fs: FileSystem, initial: Sequence[tuple[int, bytes]] = ()
    ) -> tuple[list[_Segment], RecoveryReport]:
        names = fs.listdir(dirpath)
        removed = tuple(sorted(dirpath / n for n in names if _SEGMENT_TMP_NAME.match(n)))
        for tmp in removed:
            fs.unlink(tmp)
        found = sorted(
            (int(m.group(1)), dirpath / n)
            for n in names
            if (m := _SEGMENT_NAME.match(n)) is not None
        )
        if not found:
            first = _segment_path(dirpath, 1)
            encoded = [encode_record(rtype, payload) for rtype, payload in initial]
            fs.write_atomic(first, [_encode_segment_header(1), *encoded])
            found = [(1, first)]
        elif removed:
            fs.fsync_dir(dirpath)

        segments: list[_Segment] = []
        records = 0
        torn: tuple[Path, int, str, int] | None = None
        for position, (first_index, seg_path) in enumerate(found):
            if segments and first_index != segments[-1].first_index + segments[-1].count:
                expected = segments[-1].first_index + segments[-1].count
                raise WALCorruption(
                    seg_path, 0, f"segment starts at index {first_index}, expected {expected}"
                )
            data = fs.read_bytes(seg_path)
            _check_segment_header(seg_path, data, first_index)
            view = memoryview(data)
            pos, count, damage = SEGMENT_HEADER_SIZE, 0, ""
            while pos < len(data):
                result = _check_record(view, pos, len(data))
                if isinstance(result, str):
                    damage = result
                    break
                pos, count = result, count + 1
            if damage:
                if position != len(found) - 1:
                    raise WALCorruption(seg_path, pos, f"{damage} (in a sealed segment)")
                follower = _find_intact_record(data, pos + 1, len(data))
                if follower is not None:
                    raise WALCorruption(
                        seg_path, pos, f"{damage}, followed by an intact record at {follower}"
                    )
                torn = (seg_path, pos, damage, len(data) - pos)
                fs.truncate(seg_path, pos)
            segments.append(_Segment(seg_path, first_index, count, pos))
            records += count

        last = segments[-1]
        report = RecoveryReport(
            segments=len(segments),
            records=records,
            first_index=segments[0].first_index,
            last_index=last.first_index + last.count - 1,
            truncated_bytes=torn[3] if torn else 0,
            truncated_segment=torn[0] if torn else None,
            truncated_at=torn[1] if torn else None,
            truncated_reason=torn[2] if torn else None,
            removed_temp_files=removed,
        )
        return segments, report

    # -- state -------------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        """The directory holding the segments."""
        return self._dir

    @property
    def first_index(self) -> int:
        """Index of the oldest record still stored."""
        with self._lock:
            return self._segments[0].first_index

    @property
    def durable_index(self) -> int:
        """Index of the newest durable record (first_index - 1 when there is none)."""
        with self._lock:
            last = self._segments[-1]
            return last.first_index + last.count - 1

    @property
    def last_index(self) -> int:
        """Index of the newest appended record, durable or still buffered."""
        with self._lock:
            return self._next_index - 1

    @property
    def failed(self) -> bool:
        """True once a write or fsync has failed; the WAL is then unusable."""
        return self._failed is not None

    @property
    def segment_paths(self) -> list[Path]:
        """The segment files, oldest first."""
        with self._lock:
            return [s.path for s in self._segments]

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise WALError(f"WAL failed earlier and is unusable: {self._failed!r}")
        if self._closed:
            raise WALError("WAL is closed")

    # -- writing -----------------------------------------------------------------------

    def append(self, records: Sequence[tuple[int, bytes]]) -> int:
        """Buffer ``(rtype, payload)`` records; return the index of the last one.

        Nothing is durable until ``sync`` returns. Either every record is buffered or,
        on invalid input (ValueError), none is.
        """
        encoded = [encode_record(rtype, payload) for rtype, payload in records]
        with self._lock:
            self._check_usable()
            self._pending.extend(encoded)
            self._next_index += len(encoded)
            return self._next_index - 1

    def sync(self) -> int:
        """Write and fsync everything buffered; return ``durable_index``.

        One write call and one fdatasync per segment touched. Raises ``WALError`` if
        writing or syncing fails; the WAL is then failed and refuses every later call.
        """
        with self._sync_lock:
            self._check_usable()
            if self._needs_repair:
                self._repair()
            with self._lock:
                pending, self._pending = self._pending, []
            if pending:
                progress = [0]
                try:
                    self._write_out(pending, progress)
                except OSError as exc:
                    if exc.errno not in DISK_FULL_ERRNOS:
                        self._failed = exc
                        raise WALError(f"WAL write or fsync failed: {exc}") from exc
                    with self._lock:  # not durable: buffered again, indexes unchanged
                        self._pending[:0] = pending[progress[0] :]
                    self.disk_full_errors += 1
                    self._needs_repair = True
                    self._repair()
                    raise WALDiskFull(f"WAL sync failed, disk full: {exc}") from exc
                except BaseException as exc:
                    self._failed = exc
                    raise
            return self.durable_index

    def _repair(self) -> None:
        """Cut off what a sync that ran out of space may have left (module notes)."""
        fs = self._fs
        segment = self._segments[-1]
        try:
            following = _segment_path(self._dir, segment.first_index + segment.count)
            tmp = following.with_name(following.name + ".tmp")
            removed = False
            for path in (tmp, following):
                if path != segment.path and fs.exists(path):
                    fs.unlink(path)
                    removed = True
            if removed:
                fs.fsync_dir(self._dir)
            fs.truncate(segment.path, segment.size)
        except OSError as exc:
            if exc.errno in DISK_FULL_ERRNOS:
                raise WALDiskFull(f"WAL repair after a full disk failed: {exc}") from exc
            self._failed = exc
            raise WALError(f"WAL repair after a full disk failed: {exc}") from exc
        self._needs_repair = False

    def append_and_sync(self, records: Sequence[tuple[int, bytes]]) -> int:
        """``append`` then ``sync``; return the index of the last record appended."""
        last = self.append(records)
        self.sync()
        return last

    def _write_out(self, pending: list[bytes], progress: list[int]) -> None:
        """Write and fsync ``pending``; ``progress[0]`` counts the records made durable."""
        segment = self._segments[-1]
        size = segment.size
        group: list[bytes] = []
        for record in pending:
            if size + len(record) > self._segment_bytes and (segment.count or group):
                if group:
                    self._write_group(segment, group)
                    progress[0] += len(group)
                    group = []
                segment = self._roll()
                size = segment.size
            group.append(record)
            size += len(record)
        if group:
            self._write_group(segment, group)
            progress[0] += len(group)

    def _write_group(self, segment: _Segment, group: list[bytes]) -> None:
        data = b"".join(group)
        active = self._active
        active.write(data)
        active.sync()
        with self._lock:
            segment.count += len(group)
            segment.size += len(data)

    def _roll(self) -> _Segment:
        """Seal the active segment (already fsynced) and start the next one."""
        last = self._segments[-1]
        first_index = last.first_index + last.count
        path = _segment_path(self._dir, first_index)
        fs = self._fs
        if fs.exists(path):
            raise WALError(f"{path} already exists")
        header = _encode_segment_header(first_index)
        fs.write_atomic(path, [header])
        active = fs.open_append(path)
        self._active.close()
        self._active = active
        segment = _Segment(path, first_index, 0, len(header))
        with self._lock:
            self._segments.append(segment)
        return segment

    def truncate_before(self, index: int) -> int:
        """Delete whole segments all of whose records are below ``index``.

        Call it only once a snapshot covering those records is durable. The active
        segment is never deleted, so records below ``index`` may remain. Returns the
        number of segments deleted.
        """
        with self._sync_lock:
            self._check_usable()
            deleted = 0
            while True:
                with self._lock:
                    if len(self._segments) < 2 or self._segments[1].first_index > index:
                        break
                    oldest = self._segments[0]
                try:
                    self._fs.unlink(oldest.path)
                    self._fs.fsync_dir(self._dir)
                except OSError as exc:
                    self._failed = exc
                    raise WALError(f"WAL truncation failed: {exc}") from exc
                with self._lock:
                    self._segments.pop(0)
                deleted += 1
            return deleted

    # -- reading -----------------------------------------------------------------------

    def replay(self, start: int | None = None) -> Iterator[Record]:
        """Yield the durable records in index order, from ``start`` if given.

        Re-reads the segments from disk and re-checks every checksum; damage found
        now raises ``WALCorruption``. Buffered records are not included. Do not call
        ``truncate_before`` while iterating.
        """
        self._check_usable()
        with self._lock:
            segments = [(s.path, s.first_index, s.count, s.size) for s in self._segments]
        for path, first_index, count, size in segments:
            if start is not None and first_index + count <= start:
                continue
            data = self._fs.read_bytes(path, size)
            if len(data) < size:
                raise WALCorruption(path, len(data), "segment is shorter than at open")
            view = memoryview(data)
            pos, index = SEGMENT_HEADER_SIZE, first_index
            while pos < size:
                result = _check_record(view, pos, size)
                if isinstance(result, str):
                    raise WALCorruption(path, pos, result)
                if start is None or index >= start:
                    body = pos + RECORD_HEADER_SIZE
                    yield Record(index, data[body], data[body + 1 : result])
                pos, index = result, index + 1

    # -- closing -----------------------------------------------------------------------

    def close(self) -> None:
        """Release the files and the directory lock. Buffered records are dropped."""
        with self._sync_lock:
            if self._closed:
                return
            self._closed = True
            with self._lock:
                self._pending = []
            self._active.close()
            self._dir_lock.close()

    def __enter__(self) -> Self:
        """Use the WAL as a context manager that closes it."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the WAL."""
        self.close()


# -- node marker -----------------------------------------------------------------------

MARKER_FILENAME = "pyxos.id"
_MARKER_FORMAT = "pyxos-node-marker"


class MarkerError(StorageError):
    """The marker file exists but cannot be trusted (unreadable or damaged)."""


@dataclass(frozen=True, slots=True)
class NodeMarker:
    """Which cluster and node a data directory belongs to."""

    cluster_id: str
    node_id: int


def _marker_crc(cluster_id: str, node_id: int) -> int:
    return crc32c.crc32c(f"{cluster_id}\x00{node_id}".encode())


def write_marker(
    dirpath: str | os.PathLike[str], cluster_id: str, node_id: int, *, fs: FileSystem = OS
) -> NodeMarker:
    """Atomically write ``pyxos.id`` (tmp file, fsync, rename, directory fsync).

    How the node runtime uses it: the marker is written once, by the explicit
    operator action that adds this node to a cluster (bootstrap or join), after
    ``WAL.open`` has created the log. At every start:

    - marker present, matching the configured cluster and node: recover normally;
    - marker present but for another cluster or node: refuse to start (wrong disk);
    - marker present but no WAL (``WAL.exists`` is false) or ``WALCorruption``: the
      data was lost since joining: start non-voting and rebuild from peers;
    - no marker: never start as a voter. The disk cannot tell a brand-new node from
      one whose whole directory was wiped; the cluster configuration can. Only a node
      being added to the configuration right now may be initialized (and write the
      marker); a node already in the configuration that finds no marker must rebuild.
    """
    if node_id < 0:
        raise ValueError("node_id must be >= 0")
    body = {
        "format": _MARKER_FORMAT,
        "version": FORMAT_VERSION,
        "cluster_id": cluster_id,
        "node_id": node_id,
        "crc32c": _marker_crc(cluster_id, node_id),
    }
    path = Path(dirpath)
    if not fs.is_dir(path):
        fs.mkdir(path)
    fs.write_atomic(path / MARKER_FILENAME, [json.dumps(body, indent=1).encode() + b"\n"])
    return NodeMarker(cluster_id, node_id)


def read_marker(dirpath: str | os.PathLike[str], *, fs: FileSystem = OS) -> NodeMarker | None:
    """Read ``pyxos.id``: None if absent, ``MarkerError`` if present but damaged."""
    path = Path(dirpath) / MARKER_FILENAME
    try:
        raw = fs.read_bytes(path)
    except FileNotFoundError:
        return None
    try:
        body = json.loads(raw)
        if not isinstance(body, dict) or body.get("format") != _MARKER_FORMAT:
            raise MarkerError(f"{path}: not a pyxos marker")
        if body.get("version") != FORMAT_VERSION:
            raise MarkerError(f"{path}: unsupported marker version {body.get('version')!r}")
        cluster_id, node_id = body["cluster_id"], body["node_id"]
        if not isinstance(cluster_id, str) or type(node_id) is not int:
            raise MarkerError(f"{path}: bad field types")
        if body.get("crc32c") != _marker_crc(cluster_id, node_id):
            raise MarkerError(f"{path}: checksum mismatch")
    except (ValueError, KeyError) as exc:  # JSONDecodeError and UnicodeError are ValueErrors
        raise MarkerError(f"{path}: unreadable: {exc}") from exc
    return NodeMarker(cluster_id, node_id)
