"""The file-system operations pyxos's storage uses, behind one small interface.

Theory of operation
-------------------
The write-ahead log, the snapshot files and the node marker touch the disk only
through a :class:`FileSystem`: list, read, create, append, fsync a file, truncate,
rename, unlink, mkdir, fsync a directory, and lock a directory. :class:`OsFileSystem`
(``OS``, the default everywhere) is the real thing, one system call per operation as
before: the WAL's hot path costs one method call more per *group commit* (a write and
an ``fdatasync`` on an :class:`AppendFile`), nothing per record.

The simulator passes a :class:`~pyxos.storage.simfs.SimFileSystem` instead, which
models what a disk does to unsynced writes at a power loss (lost, torn, reordered), a
failing fsync (the dirty pages are dropped, as Linux does), a full disk, bit flips and
a wiped directory, so the simulator runs the very code the server runs.

Every failure is an ``OSError`` (``FileNotFoundError``, ``ENOSPC``, ``EIO``), as the
operating system reports it; the callers decide what is fatal.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

if sys.platform != "win32":
    import fcntl

__all__ = ["OS", "AppendFile", "DirLock", "DirectoryLocked", "FileSystem", "OsFileSystem"]

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


class DirectoryLocked(OSError):
    """The directory is locked by another opener (this or another process)."""


class AppendFile(ABC):
    """A file open for appending: ``write`` everything, ``sync`` its data."""

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Append every byte of ``data`` (or raise ``OSError``, a prefix maybe written)."""

    @abstractmethod
    def sync(self) -> None:
        """Make the file's data durable (``fdatasync``); ``OSError`` if that failed."""

    @abstractmethod
    def close(self) -> None:
        """Close the file (nothing is synced)."""


class DirLock(ABC):
    """An exclusive lock on a directory, held until ``close``."""

    @abstractmethod
    def close(self) -> None:
        """Release the lock."""


class FileSystem(ABC):
    """The operations the storage layer needs (see the module notes)."""

    @abstractmethod
    def exists(self, path: Path) -> bool:
        """True if ``path`` names a file or directory."""

    @abstractmethod
    def is_dir(self, path: Path) -> bool:
        """True if ``path`` is a directory."""

    @abstractmethod
    def mkdir(self, path: Path) -> None:
        """Create ``path`` and any missing parents, then fsync the parent directory."""

    @abstractmethod
    def listdir(self, path: Path) -> list[str]:
        """The names in directory ``path`` (``FileNotFoundError`` if it is missing)."""

    @abstractmethod
    def read_bytes(self, path: Path, limit: int | None = None) -> bytes:
        """The file's bytes (at most ``limit`` of them); ``FileNotFoundError`` if absent."""

    def read_view(self, path: Path) -> bytes | memoryview:
        """The whole file's bytes, read only, perhaps without a copy (a memory map): for
        large files read once, such as a snapshot. The default reads them
        (``read_bytes``). The caller never writes to it, and the file is never
        changed in place while it is held (files are replaced by rename)."""
        return self.read_bytes(path)

    @abstractmethod
    def open_append(self, path: Path) -> AppendFile:
        """Open an existing file for appending."""

    @abstractmethod
    def create(self, path: Path) -> AppendFile:
        """Create (or empty) ``path`` and open it for appending."""

    @abstractmethod
    def truncate(self, path: Path, size: int) -> None:
        """Cut the file to ``size`` bytes and fsync it."""

    @abstractmethod
    def replace(self, src: Path, dst: Path) -> None:
        """Rename ``src`` to ``dst``, replacing ``dst`` (not durable before ``fsync_dir``)."""

    @abstractmethod
    def unlink(self, path: Path) -> None:
        """Remove a file (not durable before ``fsync_dir``)."""

    @abstractmethod
    def fsync_dir(self, path: Path) -> None:
        """Make the directory's entries (created, renamed, removed names) durable."""

    @abstractmethod
    def lock_dir(self, path: Path) -> DirLock:
        """Lock ``path`` exclusively; ``DirectoryLocked`` if someone holds it."""

    def write_atomic(self, path: Path, chunks: Sequence[bytes]) -> None:
        """Replace ``path`` with ``chunks`` atomically and durably.

        Writes ``path + ".tmp"``, fsyncs it, renames it over ``path`` and fsyncs the
        directory: after a crash the file holds either its old content or the new one.
        If writing the temporary file fails (a full disk, say), it is removed again, so
        a failed attempt does not keep holding the space it took.
        """
        tmp = path.with_name(path.name + ".tmp")
        f = self.create(tmp)
        try:
            try:
                for chunk in chunks:
                    f.write(chunk)
                f.sync()
            finally:
                f.close()
        except OSError:
            with contextlib.suppress(OSError):
                self.unlink(tmp)
            raise
        self.replace(tmp, path)
        self.fsync_dir(path.parent)


def fdatasync(fd: int) -> None:
    """Flush a file's data (and the metadata needed to read it) to stable storage."""
    sync = getattr(os, "fdatasync", None)
    if sync is None:
        os.fsync(fd)
    else:
        sync(fd)


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """Make a directory's entries (created, renamed, deleted files) durable."""
    fd = os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _OsAppendFile(AppendFile):
    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        fd = self._fd
        while view:  # os.write may write less than asked
            view = view[os.write(fd, view) :]

    def sync(self) -> None:
        fdatasync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


class _OsDirLock(DirLock):
    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def close(self) -> None:
        os.close(self._fd)


class OsFileSystem(FileSystem):
    """The real file system (POSIX calls; the directory lock is ``flock``)."""

    def exists(self, path: Path) -> bool:
        """True if ``path`` names a file or directory."""
        return path.exists()

    def is_dir(self, path: Path) -> bool:
        """True if ``path`` is a directory."""
        return path.is_dir()

    def mkdir(self, path: Path) -> None:
        """Create ``path`` and any missing parents, then fsync the parent directory."""
        path.mkdir(parents=True, exist_ok=True)
        fsync_directory(path.parent)

    def listdir(self, path: Path) -> list[str]:
        """The names in directory ``path``."""
        return os.listdir(path)

    def read_bytes(self, path: Path, limit: int | None = None) -> bytes:
        """The file's bytes (at most ``limit`` of them)."""
        if limit is None:
            return path.read_bytes()
        with path.open("rb") as f:
            return f.read(limit)

    def read_view(self, path: Path) -> bytes | memoryview:
        """The file mapped read-only (``MAP_POPULATE`` where there is one): no copy of
        its bytes in the process's own memory, and no page fault per page. A 1 GB
        snapshot read with ``read_bytes`` then sliced cost two fresh gigabytes, 2 s on
        a loaded machine (bench/profiles/FINDINGS.md, h13restart). An empty file (it
        cannot be mapped) is read."""
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return b""
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            mapped = mmap.mmap(f.fileno(), size, flags=flags, prot=mmap.PROT_READ)
        return memoryview(mapped)

    def open_append(self, path: Path) -> AppendFile:
        """Open an existing file for appending (``O_APPEND``)."""
        return _OsAppendFile(os.open(path, os.O_WRONLY | os.O_APPEND | _O_CLOEXEC))

    def create(self, path: Path) -> AppendFile:
        """Create (or empty) ``path`` and open it for writing."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_CLOEXEC
        return _OsAppendFile(os.open(path, flags, 0o644))

    def truncate(self, path: Path, size: int) -> None:
        """Cut the file to ``size`` bytes and fsync it."""
        fd = os.open(path, os.O_WRONLY | _O_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            fdatasync(fd)
        finally:
            os.close(fd)

    def replace(self, src: Path, dst: Path) -> None:
        """Rename ``src`` over ``dst``."""
        os.replace(src, dst)

    def unlink(self, path: Path) -> None:
        """Remove a file."""
        path.unlink()

    def fsync_dir(self, path: Path) -> None:
        """fsync the directory."""
        fsync_directory(path)

    def lock_dir(self, path: Path) -> DirLock:
        """``flock`` the directory (held by an open descriptor until ``close``)."""
        fd = os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
        if sys.platform != "win32":
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise DirectoryLocked(f"{path} is locked") from None
            except BaseException:
                os.close(fd)
                raise
        return _OsDirLock(fd)


OS = OsFileSystem()
"""The real file system: the default wherever a ``fs`` parameter is taken."""
