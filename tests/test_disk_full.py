"""A full disk: the WAL and snapshots survive ENOSPC, and a node resumes by itself.

Storage level on the simulated file system (``storage/simfs.py``: a write that does not
fit writes what fits, then raises ``ENOSPC``; a failing fsync drops the dirty pages as
Linux does), then a real node process on a size-capped tmpfs (root only).
"""

from __future__ import annotations

import contextlib
import errno
import random
from pathlib import Path

import pytest

from pyxos.storage.simfs import SimFileSystem
from pyxos.storage.snapshot import load_latest_snapshot, write_snapshot
from pyxos.storage.wal import WAL, WALDiskFull, is_disk_full

D = Path("/node")


def records(wal: WAL) -> list[tuple[int, bytes]]:
    return [(r.index, r.payload) for r in wal.replay()]


def reopen_after_power_loss(fs: SimFileSystem, wal: WAL, seed: int) -> WAL:
    wal.close()
    fs.power_loss(random.Random(seed))
    fs.capacity, fs.fsync_fault = None, None  # the machine comes back with room
    reopened, _ = WAL.open(D, fs=fs, segment_bytes=256)
    return reopened


def test_enospc_mid_record_keeps_the_records_and_a_retry_makes_them_durable() -> None:
    fs = SimFileSystem()
    wal, _ = WAL.open(D, fs=fs)
    wal.append_and_sync([(1, b"a" * 100)])
    fs.capacity = fs.used() + 150  # the second record is cut in the middle
    wal.append([(1, b"b" * 100), (1, b"c" * 100)])
    with pytest.raises(WALDiskFull) as info:
        wal.sync()
    assert is_disk_full(info.value)
    assert not wal.failed and wal.durable_index == 1 and wal.last_index == 3
    with pytest.raises(WALDiskFull):  # still full: the same records wait
        wal.sync()
    wal.append([(1, b"d")])  # appends go on meanwhile, numbered after the waiting ones
    fs.capacity = None  # space returns
    assert wal.sync() == 4
    assert records(wal) == [(1, b"a" * 100), (2, b"b" * 100), (3, b"c" * 100), (4, b"d")]
    wal = reopen_after_power_loss(fs, wal, 0)
    assert records(wal) == [(1, b"a" * 100), (2, b"b" * 100), (3, b"c" * 100), (4, b"d")]


def test_an_enospc_fsync_drops_the_pages_and_the_retry_writes_them_again() -> None:
    # After a failed fsync Linux marks the dirty pages clean: a retry that only called
    # fsync again would "succeed" with nothing on the disk. The WAL cuts the file back
    # and writes the records again, so a power loss after the retry keeps them.
    fs = SimFileSystem()
    wal, _ = WAL.open(D, fs=fs)
    wal.append_and_sync([(1, b"kept")])
    fs.fsync_errno = errno.ENOSPC
    fs.fsync_fault = lambda path: True
    wal.append([(1, b"then"), (1, b"more")])
    with pytest.raises(WALDiskFull):
        wal.sync()
    fs.fsync_fault = None
    assert wal.sync() == 3
    for seed in range(5):
        wal = reopen_after_power_loss(fs, wal, seed)
        assert records(wal) == [(1, b"kept"), (2, b"then"), (3, b"more")]


def test_enospc_during_a_segment_roll_leaves_no_half_made_segment() -> None:
    fs = SimFileSystem()
    wal, _ = WAL.open(D, fs=fs, segment_bytes=256)
    wal.append_and_sync([(1, b"x" * 150)])
    fs.capacity = fs.used() + 10  # not even the next segment's header fits
    wal.append([(1, b"y" * 150)])
    with pytest.raises(WALDiskFull):
        wal.sync()
    assert [p.name for p in wal.segment_paths] == ["wal-00000000000000000001.log"]
    assert not any(n.endswith(".tmp") for n in fs.listdir(D))
    fs.capacity = None
    assert wal.sync() == 2
    wal = reopen_after_power_loss(fs, wal, 1)
    assert records(wal) == [(1, b"x" * 150), (2, b"y" * 150)]


@pytest.mark.parametrize("seed", range(40))
def test_random_full_disks_lose_nothing_synced_and_keep_every_record_in_order(
    seed: int,
) -> None:
    rng = random.Random(seed)
    fs = SimFileSystem()
    wal, _ = WAL.open(D, fs=fs, segment_bytes=256)
    appended: list[bytes] = []
    synced = 0  # records covered by a sync that returned
    for _ in range(60):
        batch = [bytes([65 + rng.randrange(26)]) * rng.randrange(1, 90) for _ in range(3)]
        wal.append([(1, p) for p in batch])
        appended += batch
        if rng.random() < 0.3:
            fs.capacity = fs.used() + rng.randrange(0, 200)
            if rng.random() < 0.3:
                fs.fsync_errno, fs.fsync_fault = errno.ENOSPC, lambda path: True
        elif rng.random() < 0.5:
            fs.capacity, fs.fsync_fault = None, None
        with contextlib.suppress(WALDiskFull):
            synced = wal.sync()
        assert not wal.failed
        if rng.random() < 0.1:
            wal = reopen_after_power_loss(fs, wal, rng.randrange(1000))
            got = [p for _, p in records(wal)]
            assert got == appended[: len(got)] and len(got) >= synced, f"seed {seed}"
            appended, synced = got, len(got)
    fs.capacity, fs.fsync_fault = None, None
    assert wal.sync() == len(appended)
    wal = reopen_after_power_loss(fs, wal, seed)
    assert [p for _, p in records(wal)] == appended


def test_a_snapshot_that_does_not_fit_leaves_no_temporary_file() -> None:
    fs = SimFileSystem()
    snaps = D / "snapshots"
    write_snapshot(snaps, 10, b"", b"ten", fs=fs)
    fs.capacity = fs.used() + 20
    with pytest.raises(OSError) as info:
        write_snapshot(snaps, 20, b"", b"t" * 100, fs=fs)
    assert is_disk_full(info.value)
    assert sorted(fs.listdir(snaps)) == ["snap-00000000000000000010.snap"]
    fs.capacity = fs.used() + 200  # the space the failed attempt took is free again
    write_snapshot(snaps, 20, b"", b"t" * 100, fs=fs)
    latest = load_latest_snapshot(snaps, fs=fs)
    assert latest is not None and latest.slot == 20
