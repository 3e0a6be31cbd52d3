"""A simulated file system that fails the way disks and kernels do, deterministically.

Theory of operation
-------------------
:class:`SimFileSystem` implements :class:`~pyxos.storage.fs.FileSystem` in memory, so
the simulator runs the real write-ahead log, snapshot and durable-acceptor code. It
keeps what the operating system keeps apart:

- per file (an inode), ``data``, the page cache that reads see, and ``disk``, what is
  on the platter; every write goes to ``data`` and is queued as *dirty* (numbered by
  one global sequence counter) until an fsync of that file flushes it to ``disk``;
- the namespace twice: the names the processes see and the names on disk. Creates,
  renames, unlinks and mkdirs are queued in one metadata journal, in issue order,
  until a directory fsync commits the journal (as ext4's does, whole).

Faults, each decided by the caller's seeded RNG, so a seed replays exactly:

- ``power_loss(rng)``: everything not yet durable may be lost. The metadata journal
  keeps a random prefix (journals commit in order); each file's unsynced writes are
  all lost, or kept up to a random point with the write at that point torn at a
  512-byte sector boundary, or (rarely) kept sector by sector at random, so a later
  sector may reach the disk while an earlier one does not (writeback is unordered).
  Sectors are atomic. Then every process view is reset to the disk and locks go.
- a failing fsync (``fsync_fault(path)`` returns True): the call raises ``EIO`` (or
  ``fsync_errno``: ``ENOSPC`` for a file system that allocates at writeback) and,
  as Linux does, the file's dirty pages are dropped *and marked clean*: the page
  cache still shows the data, the disk never gets it, and the next fsync succeeds.
  Whoever carries on after such an error believes in data that a power loss takes.
- a full disk (``capacity``): a write that does not fit writes what fits, then
  raises ``ENOSPC``.
- ``flip_bit``: a bit rots on the platter (and in the cache).
- ``wipe``: a directory tree is gone (a replaced disk, an operator's ``rm -rf``).

The simulator keeps one fsync in flight over virtual time. Inside ``deferred()`` an
fsync only *starts*: the data stays dirty and the call returns, so the caller goes
on as the real code would once the fsync returned; ``settle()`` completes every
started fsync (the simulator calls it when the fsync's latency has elapsed). A power
loss before then picks how many of the started fsyncs completed, in order (never the
last one: had it returned, the caller would have settled it); the writes issued after
the first one that did not complete were never issued at all, and the rest are
unsynced. ``stop()`` models a process that dies without the machine: started fsyncs
complete, the page cache stays, locks are released.

Cost: a write appends to a ``bytearray`` and a tuple to a list; an fsync moves the
queued writes into ``disk`` by slice assignment. Nothing is done per byte, and work
per sector happens only at a power loss.
"""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pyxos.storage.fs import AppendFile, DirectoryLocked, DirLock, FileSystem

__all__ = ["SECTOR", "SimFileSystem"]

SECTOR = 512
"""Writes reach the disk in whole sectors of this size (sectors are atomic)."""

# A queued write: (seq, offset, bytes); a queued truncation: (seq, size, None).
_Op = tuple[int, int, bytes | None]
# A journal entry: (seq, kind, path, other path or None, inode or None).
_NsOp = tuple[int, str, str, str | None, "_Inode | None"]


class _Inode:
    __slots__ = ("data", "dirty", "disk")

    def __init__(self) -> None:
        self.data = bytearray()  # the page cache: what reads see
        self.disk = bytearray()  # what survives a power loss
        self.dirty: list[_Op] = []  # queued, not yet on disk, in issue order


def _apply(buf: bytearray, op: _Op) -> None:
    _, offset, data = op
    if data is None:
        if offset < len(buf):
            del buf[offset:]
        else:
            buf.extend(bytes(offset - len(buf)))
        return
    if offset > len(buf):
        buf.extend(bytes(offset - len(buf)))  # a hole reads as zeros
    buf[offset : offset + len(data)] = data


def _sectors(op: _Op) -> list[_Op]:
    """A write split at the disk's sector boundaries (absolute offsets)."""
    seq, offset, data = op
    assert data is not None
    pieces: list[_Op] = []
    start = 0
    while start < len(data):
        end = min(len(data), (offset + start) // SECTOR * SECTOR + SECTOR - offset)
        pieces.append((seq, offset + start, data[start:end]))
        start = end
    return pieces


def _parent(path: str) -> str:
    return path.rpartition("/")[0] or "/"


class _SimFile(AppendFile):
    __slots__ = ("_fs", "_inode", "_path")

    def __init__(self, fs: SimFileSystem, inode: _Inode, path: Path) -> None:
        self._fs = fs
        self._inode = inode
        self._path = path

    def write(self, data: bytes) -> None:
        fs = self._fs
        if fs.capacity is not None:
            fs._write(self._inode, data)
            return
        inode = self._inode
        fs._seq += 1
        data = bytes(data)  # no copy when it is bytes already
        inode.dirty.append((fs._seq, len(inode.data), data))
        inode.data += data

    def sync(self) -> None:
        fs = self._fs
        if fs.fsync_fault is not None:
            fs._check_fsync(self._path, self._inode)
        else:
            fs.fsyncs += 1
        if fs._deferred:
            fs._started.append((fs._seq, self._inode))
        else:
            fs._flush(self._inode, fs._seq)

    def close(self) -> None:
        pass


class _SimLock(DirLock):
    __slots__ = ("_epoch", "_fs", "_path")

    def __init__(self, fs: SimFileSystem, path: str) -> None:
        self._fs = fs
        self._path = path
        self._epoch = fs._epoch

    def close(self) -> None:
        if self._fs._epoch == self._epoch:  # a lock from before a crash is long gone
            self._fs._locks.discard(self._path)


class SimFileSystem(FileSystem):
    """One simulated machine's disk and page cache (see the module notes)."""

    def __init__(self, *, capacity: int | None = None) -> None:
        self.capacity = capacity
        """Bytes the files may hold in all; None for no limit."""
        self.fsync_fault: Callable[[Path], bool] | None = None
        self.fsync_errno = errno.EIO
        """The error a failing fsync raises (``ENOSPC`` models a full disk at writeback)."""
        """Asked at every fsync (file or directory); True makes it fail with EIO."""
        self.fsyncs = 0
        self.failed_fsyncs = 0
        self.power_losses = 0
        self._names: dict[str, _Inode] = {}
        self._dirs: set[str] = {"/"}
        self._disk_names: dict[str, _Inode] = {}
        self._disk_dirs: set[str] = {"/"}
        self._journal: list[_NsOp] = []
        self._seq = 0
        self._deferred = False
        self._started: list[tuple[int, _Inode | None]] = []  # fsyncs begun, not settled
        self._locks: set[str] = set()
        self._epoch = 0

    # -- the FileSystem interface -----------------------------------------------------

    def exists(self, path: Path) -> bool:
        """True if ``path`` names a file or directory."""
        key = str(path)
        return key in self._names or key in self._dirs

    def is_dir(self, path: Path) -> bool:
        """True if ``path`` is a directory."""
        return str(path) in self._dirs

    def mkdir(self, path: Path) -> None:
        """Create ``path`` and its missing parents, then fsync the parent."""
        key = str(path)
        missing: list[str] = []
        while key not in self._dirs:
            if key in self._names:
                raise FileExistsError(errno.EEXIST, "a file is in the way", key)
            missing.append(key)
            key = _parent(key)
        for d in reversed(missing):
            self._ns("mkdir", d, None, None)
        self.fsync_dir(path.parent)

    def listdir(self, path: Path) -> list[str]:
        """The names in directory ``path``."""
        key = str(path)
        if key not in self._dirs:
            raise FileNotFoundError(errno.ENOENT, "no such directory", key)
        prefix = key.rstrip("/") + "/"
        cut = len(prefix)
        return [
            k[cut:]
            for k in (*self._names, *self._dirs)
            if k.startswith(prefix) and "/" not in k[cut:] and k != key
        ]

    def read_bytes(self, path: Path, limit: int | None = None) -> bytes:
        """The file's bytes as the page cache has them."""
        inode = self._inode(str(path))
        return bytes(inode.data if limit is None else inode.data[:limit])

    def open_append(self, path: Path) -> AppendFile:
        """Open an existing file for appending."""
        return _SimFile(self, self._inode(str(path)), path)

    def create(self, path: Path) -> AppendFile:
        """Create (or empty) ``path`` and open it for appending."""
        key = str(path)
        if _parent(key) not in self._dirs:
            raise FileNotFoundError(errno.ENOENT, "no such directory", _parent(key))
        inode = self._names.get(key)
        if inode is None:
            inode = _Inode()
            self._ns("link", key, None, inode)
        elif inode.data:
            self._queue(inode, (self._next(), 0, None))
        return _SimFile(self, inode, path)

    def truncate(self, path: Path, size: int) -> None:
        """Cut the file to ``size`` bytes and fsync it."""
        inode = self._inode(str(path))
        self._queue(inode, (self._next(), size, None))
        self._fsync(inode, path)

    def replace(self, src: Path, dst: Path) -> None:
        """Rename ``src`` over ``dst`` (durable at the next directory fsync)."""
        self._inode(str(src))
        self._ns("rename", str(src), str(dst), None)

    def unlink(self, path: Path) -> None:
        """Remove a file (durable at the next directory fsync)."""
        self._inode(str(path))
        self._ns("unlink", str(path), None, None)

    def fsync_dir(self, path: Path) -> None:
        """Commit the metadata journal (every queued create, rename, unlink, mkdir)."""
        self._check_fsync(path)
        if self._deferred:
            self._started.append((self._seq, None))
        else:
            self._commit_journal(self._seq)

    def lock_dir(self, path: Path) -> DirLock:
        """Lock ``path``; ``DirectoryLocked`` if it is held (until a crash or stop)."""
        key = str(path)
        if key not in self._dirs:
            raise FileNotFoundError(errno.ENOENT, "no such directory", key)
        if key in self._locks:
            raise DirectoryLocked(f"{key} is locked")
        self._locks.add(key)
        return _SimLock(self, key)

    # -- the simulator's controls -------------------------------------------------------

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Within this block an fsync only starts; ``settle`` completes it."""
        self._deferred = True
        try:
            yield
        finally:
            self._deferred = False

    def settle(self) -> None:
        """Complete every fsync started in ``deferred`` mode, in order."""
        started, self._started = self._started, []
        for seq, inode in started:
            self._complete(seq, inode)

    @property
    def unsynced(self) -> bool:
        """True if anything written or renamed is not yet durable."""
        return bool(self._journal) or any(i.dirty for i in self._inodes())

    def stop(self) -> None:
        """The process died, the machine did not: fsyncs complete, the cache stays."""
        self.settle()
        self._locks.clear()
        self._epoch += 1

    def power_loss(self, rng: random.Random | None) -> None:
        """The machine lost power: keep what was durable and what luck (``rng``) kept,
        see the module notes; with ``rng`` None, exactly what was durable."""
        self.power_losses += 1
        started, self._started = self._started, []
        if rng is None:
            self._journal = []
            self._reset_to_disk()
            return
        # The power went before the last started fsync returned (or the caller would
        # have settled it); the earlier ones may have completed.
        completed = rng.randint(0, len(started) - 1) if started else 0
        for seq, inode in started[:completed]:
            self._complete(seq, inode)
        cut = started[completed][0] if completed < len(started) else self._seq
        pending = [op for op in self._journal if op[0] <= cut]
        for op in pending[: rng.randint(0, len(pending))]:
            self._ns_apply(self._disk_names, self._disk_dirs, op)
        self._journal = []
        for inode in self._inodes():
            ops = [op for op in inode.dirty if op[0] <= cut]
            if ops:
                self._tear(inode, ops, rng)
        self._reset_to_disk()

    def _reset_to_disk(self) -> None:
        for inode in self._inodes():
            inode.dirty = []
        self._names = dict(self._disk_names)
        self._dirs = set(self._disk_dirs)
        for inode in self._names.values():
            inode.data = bytearray(inode.disk)
        self._locks.clear()
        self._epoch += 1

    def flip_bit(self, path: Path, offset: int, bit: int) -> None:
        """Flip one bit of a file on disk and in the cache (media damage)."""
        inode = self._inode(str(path))
        mask = 1 << (bit % 8)
        if offset < len(inode.disk):
            inode.disk[offset] ^= mask
        if offset < len(inode.data):
            inode.data[offset] ^= mask

    def zero(self, path: Path, offset: int, length: int) -> None:
        """Zero ``length`` bytes of a file on disk and in the cache (a lost sector)."""
        inode = self._inode(str(path))
        for buf in (inode.disk, inode.data):
            end = min(len(buf), offset + length)
            if end > offset:
                buf[offset:end] = bytes(end - offset)

    def wipe(self, path: Path) -> None:
        """Remove the directory tree ``path``, durably (the machine should be down)."""
        key = str(path)
        prefix = key.rstrip("/") + "/"
        for names, dirs in ((self._names, self._dirs), (self._disk_names, self._disk_dirs)):
            for name in [n for n in names if n.startswith(prefix)]:
                del names[name]
            for d in [d for d in dirs if d == key or d.startswith(prefix)]:
                dirs.discard(d)
        self._journal = [op for op in self._journal if not op[2].startswith(prefix)]

    def size(self, path: Path) -> int:
        """The file's size as the processes see it."""
        return len(self._inode(str(path)).data)

    def used(self) -> int:
        """Bytes held by the files the processes see."""
        return sum(len(i.data) for i in {id(i): i for i in self._names.values()}.values())

    # -- internals -----------------------------------------------------------------------

    def _inode(self, key: str) -> _Inode:
        inode = self._names.get(key)
        if inode is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", key)
        return inode

    def _inodes(self) -> list[_Inode]:
        seen = {id(i): i for i in self._names.values()}
        seen.update((id(i), i) for i in self._disk_names.values())
        return list(seen.values())

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def _queue(self, inode: _Inode, op: _Op) -> None:
        inode.dirty.append(op)
        _apply(inode.data, op)

    def _write(self, inode: _Inode, data: bytes) -> None:
        if self.capacity is not None:
            room = self.capacity - self.used()
            if len(data) > room:
                if room > 0:
                    self._queue(inode, (self._next(), len(inode.data), bytes(data[:room])))
                raise OSError(errno.ENOSPC, "No space left on device (simulated)")
        self._seq += 1
        self._queue(inode, (self._seq, len(inode.data), bytes(data)))

    def _check_fsync(self, path: Path, inode: _Inode | None = None) -> None:
        self.fsyncs += 1
        fault = self.fsync_fault
        if fault is not None and fault(path):
            self.failed_fsyncs += 1
            if inode is not None:
                # Linux drops the dirty pages of a failed writeback and marks them
                # clean: the cache still shows them, the disk never gets them.
                inode.dirty = []
            reason = os.strerror(self.fsync_errno)
            raise OSError(self.fsync_errno, f"{reason} (simulated fsync failure)", str(path))

    def _fsync(self, inode: _Inode, path: Path) -> None:
        self._check_fsync(path, inode)
        if self._deferred:
            self._started.append((self._seq, inode))
        else:
            self._flush(inode, self._seq)

    def _complete(self, seq: int, inode: _Inode | None) -> None:
        if inode is None:
            self._commit_journal(seq)
        else:
            self._flush(inode, seq)

    def _flush(self, inode: _Inode, upto: int) -> None:
        dirty = inode.dirty
        disk = inode.disk
        n = 0
        for op in dirty:
            if op[0] > upto:
                break
            data = op[2]
            if data is not None and op[1] == len(disk):
                disk += data  # the common case: an append
            else:
                _apply(disk, op)
            n += 1
        del dirty[:n]

    def _commit_journal(self, upto: int) -> None:
        journal = self._journal
        n = 0
        for op in journal:
            if op[0] > upto:
                break
            self._ns_apply(self._disk_names, self._disk_dirs, op)
            n += 1
        del journal[:n]

    def _ns(self, kind: str, path: str, other: str | None, inode: _Inode | None) -> None:
        op: _NsOp = (self._next(), kind, path, other, inode)
        self._ns_apply(self._names, self._dirs, op)
        self._journal.append(op)

    @staticmethod
    def _ns_apply(names: dict[str, _Inode], dirs: set[str], op: _NsOp) -> None:
        _, kind, path, other, inode = op
        if kind == "link":
            assert inode is not None
            names[path] = inode
        elif kind == "mkdir":
            dirs.add(path)
        elif kind == "unlink":
            names.pop(path, None)
        elif kind == "rename":
            assert other is not None
            moved = names.pop(path, None)
            if moved is not None:
                names[other] = moved

    @staticmethod
    def _tear(inode: _Inode, ops: list[_Op], rng: random.Random) -> None:
        """Put on disk what a power loss left of ``ops`` (unsynced, in issue order)."""
        roll = rng.random()
        if roll < 0.4:
            return  # nothing reached the disk
        if roll < 0.9:
            # In order up to a point; the write at that point torn at a sector boundary.
            keep = rng.randint(0, len(ops))
            for op in ops[:keep]:
                _apply(inode.disk, op)
            if keep < len(ops) and ops[keep][2] is not None:
                pieces = _sectors(ops[keep])
                for piece in pieces[: rng.randint(0, len(pieces))]:
                    _apply(inode.disk, piece)
            return
        # Writeback in no particular order: each sector independently.
        for op in ops:
            if op[2] is None:
                _apply(inode.disk, op)
                continue
            for piece in _sectors(op):
                if rng.random() < 0.5:
                    _apply(inode.disk, piece)
