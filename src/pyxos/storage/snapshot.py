"""Snapshot files: written atomically, checksummed, newest valid one wins.

Theory of operation
-------------------
A snapshot is the state machine's state (``data``) plus the caller's description of
it (``meta``: for example the applied slot's ballot, the client-session table's
version, the configuration) at an applied ``slot``. Both are opaque bytes here.

``write_snapshot`` writes ``snap-{slot:020d}.snap.tmp``, fsyncs it, renames it to
``snap-{slot:020d}.snap`` and fsyncs the directory. Only after it returns may the
caller drop the log entries the snapshot covers (``WAL.truncate_before``). A crash
before the rename leaves a ``.tmp`` file that readers ignore; after the rename the
file is complete. Because a disk can still damage a finished file, every snapshot
carries a CRC-32C over its header and contents, and ``load_latest_snapshot`` falls
back to the newest snapshot that checks out, reporting the ones it skipped. Keeping
two snapshots (``prune_snapshots(keep=2)``) is what makes that fallback possible,
as long as the log still reaches back to the older one; the caller decides that.

Snapshots are written whole from memory. They are read as a read-only view of the
file mapped into memory (``FileSystem.read_view``): the checksum runs over the page
cache, and the caller decodes the data in place, without a copy of it (at 1 GB of
state each copy cost about a second on a loaded machine).

On-disk format, version 1 (all integers little-endian)
------------------------------------------------------
File ``snap-{slot:020d}.snap``::

    header (36 bytes):
        magic      8 bytes   b"PYXSNAP\\x00"
        version    u16       1
        reserved   u16       0
        slot       u64       the applied slot the snapshot captures (equals the name)
        meta_len   u32       length of meta
        data_len   u64       length of data
        crc        u32       CRC-32C of the 32 header bytes above, then meta, then data
    meta       meta_len bytes
    data       data_len bytes

The file must be exactly 36 + meta_len + data_len bytes long.
"""

from __future__ import annotations

import logging
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import crc32c

from pyxos.storage.fs import OS, FileSystem
from pyxos.storage.wal import StorageError

__all__ = [
    "SNAPSHOT_FORMAT_VERSION",
    "SNAPSHOT_HEADER_SIZE",
    "SNAPSHOT_MAGIC",
    "SkippedSnapshot",
    "Snapshot",
    "SnapshotCorrupt",
    "SnapshotScan",
    "load_latest_snapshot",
    "prune_snapshots",
    "read_snapshot",
    "scan_snapshots",
    "snapshot_path",
    "write_snapshot",
]

logger = logging.getLogger(__name__)

SNAPSHOT_MAGIC = b"PYXSNAP\x00"
SNAPSHOT_FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sHHQIQ")  # magic, version, reserved, slot, meta_len, data_len
_CRC = struct.Struct("<I")
SNAPSHOT_HEADER_SIZE = _HEADER.size + _CRC.size

_SNAPSHOT_NAME = re.compile(r"^snap-(\d{20})\.snap$")
_SNAPSHOT_TMP_NAME = re.compile(r"^snap-\d{20}\.snap\.tmp$")


class SnapshotCorrupt(StorageError):
    """A snapshot file is damaged, incomplete, or not a snapshot."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A snapshot read back from disk."""

    slot: int
    meta: bytes
    data: bytes | memoryview
    """Read only; on the real file system a view of the file mapped into memory (no
    copy: ``FileSystem.read_view``), which stays valid after the file is deleted."""
    path: Path


@dataclass(frozen=True, slots=True)
class SkippedSnapshot:
    """A snapshot file that was passed over, and why."""

    path: Path
    reason: str


@dataclass(frozen=True, slots=True)
class SnapshotScan:
    """Result of ``scan_snapshots``.

    ``latest`` is the newest valid snapshot or None; ``skipped`` lists the newer
    snapshot files that failed validation; ``temp_files`` are unfinished writes.
    """

    latest: Snapshot | None
    skipped: tuple[SkippedSnapshot, ...]
    temp_files: tuple[Path, ...]


def snapshot_path(dirpath: str | os.PathLike[str], slot: int) -> Path:
    """The file name a snapshot at ``slot`` is stored under."""
    return Path(dirpath) / f"snap-{slot:020d}.snap"


def write_snapshot(
    dirpath: str | os.PathLike[str], slot: int, meta: bytes, data: bytes, *, fs: FileSystem = OS
) -> Path:
    """Durably and atomically write the snapshot at ``slot``; return its path.

    When this returns, the snapshot survives a crash. A snapshot already stored at
    the same slot is replaced atomically.
    """
    if not 0 <= slot < 2**64:
        raise ValueError(f"slot out of range: {slot}")
    if len(meta) >= 2**32:
        raise ValueError("meta must be shorter than 4 GiB")
    path = Path(dirpath)
    if not fs.is_dir(path):
        fs.mkdir(path)
    head = _HEADER.pack(SNAPSHOT_MAGIC, SNAPSHOT_FORMAT_VERSION, 0, slot, len(meta), len(data))
    crc = crc32c.crc32c(data, crc32c.crc32c(meta, crc32c.crc32c(head)))
    final = snapshot_path(path, slot)
    fs.write_atomic(final, [head, _CRC.pack(crc), meta, data])
    return final


def read_snapshot(path: str | os.PathLike[str], *, fs: FileSystem = OS) -> Snapshot:
    """Read and validate one snapshot file; raise ``SnapshotCorrupt`` if it is bad."""
    path = Path(path)
    match = _SNAPSHOT_NAME.match(path.name)
    if match is None:
        raise SnapshotCorrupt(f"{path}: not a snapshot file name")
    raw = fs.read_view(path)
    if len(raw) < SNAPSHOT_HEADER_SIZE:
        raise SnapshotCorrupt(f"{path}: header incomplete ({len(raw)} bytes)")
    magic, version, reserved, slot, meta_len, data_len = _HEADER.unpack_from(raw, 0)
    (crc,) = _CRC.unpack_from(raw, _HEADER.size)
    if magic != SNAPSHOT_MAGIC:
        raise SnapshotCorrupt(f"{path}: bad magic")
    if version != SNAPSHOT_FORMAT_VERSION or reserved != 0:
        raise SnapshotCorrupt(f"{path}: unsupported version {version}/{reserved}")
    if len(raw) != SNAPSHOT_HEADER_SIZE + meta_len + data_len:
        raise SnapshotCorrupt(
            f"{path}: {len(raw)} bytes, header says {SNAPSHOT_HEADER_SIZE + meta_len + data_len}"
        )
    view = memoryview(raw)
    if crc32c.crc32c(view[SNAPSHOT_HEADER_SIZE:], crc32c.crc32c(view[: _HEADER.size])) != crc:
        raise SnapshotCorrupt(f"{path}: checksum mismatch")
    if slot != int(match.group(1)):
        raise SnapshotCorrupt(f"{path}: header says slot {slot}")
    meta_end = SNAPSHOT_HEADER_SIZE + meta_len
    # No copy of the data: a view (of the mapped file, or of the bytes read).
    return Snapshot(slot, bytes(view[SNAPSHOT_HEADER_SIZE:meta_end]), view[meta_end:], path)


def _list(dirpath: Path, fs: FileSystem) -> tuple[list[Path], list[Path]]:
    """Snapshot files newest first, and leftover temp files."""
    if not fs.is_dir(dirpath):
        return [], []
    snapshots: list[tuple[int, Path]] = []
    temps: list[Path] = []
    for name in fs.listdir(dirpath):
        if (m := _SNAPSHOT_NAME.match(name)) is not None:
            snapshots.append((int(m.group(1)), dirpath / name))
        elif _SNAPSHOT_TMP_NAME.match(name):
            temps.append(dirpath / name)
    snapshots.sort(reverse=True)
    return [p for _, p in snapshots], sorted(temps)


def scan_snapshots(dirpath: str | os.PathLike[str], *, fs: FileSystem = OS) -> SnapshotScan:
    """Find the newest valid snapshot, listing the damaged newer ones and temp files."""
    snapshots, temps = _list(Path(dirpath), fs)
    skipped: list[SkippedSnapshot] = []
    for path in snapshots:
        try:
            return SnapshotScan(read_snapshot(path, fs=fs), tuple(skipped), tuple(temps))
        except SnapshotCorrupt as exc:
            skipped.append(SkippedSnapshot(path, str(exc)))
    return SnapshotScan(None, tuple(skipped), tuple(temps))


def load_latest_snapshot(
    dirpath: str | os.PathLike[str], *, fs: FileSystem = OS
) -> Snapshot | None:
    """Return the newest valid snapshot in ``dirpath``, or None if there is none.

    Damaged snapshots and unfinished temp files are ignored and logged as warnings;
    use ``scan_snapshots`` to get them as data.
    """
    scan = scan_snapshots(dirpath, fs=fs)
    for skipped in scan.skipped:
        logger.warning("skipping damaged snapshot %s: %s", skipped.path, skipped.reason)
    for temp in scan.temp_files:
        logger.warning("ignoring unfinished snapshot %s", temp)
    return scan.latest


def prune_snapshots(
    dirpath: str | os.PathLike[str], keep: int = 2, *, fs: FileSystem = OS
) -> list[Path]:
    """Delete old snapshots, keeping the newest ``keep`` valid ones; return what went.

    Deletes every snapshot file older than the oldest kept valid one (damaged or
    not), and leftover temp files. Damaged files newer than the newest valid one are
    left alone. If fewer than ``keep`` valid snapshots exist, only temp files go. Do
    not run it concurrently with ``write_snapshot`` on the same directory.
    """
    if keep < 1:
        raise ValueError("keep must be >= 1")
    path = Path(dirpath)
    snapshots, temps = _list(path, fs)
    doomed = list(temps)
    valid = 0
    for position, snap in enumerate(snapshots):
        try:
            read_snapshot(snap, fs=fs)
        except SnapshotCorrupt:
            continue
        valid += 1
        if valid == keep:
            doomed.extend(snapshots[position + 1 :])
            break
    for victim in doomed:
        fs.unlink(victim)
    if doomed:
        fs.fsync_dir(path)
    return doomed
