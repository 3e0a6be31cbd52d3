"""Snapshot files: atomic writes, the newest valid snapshot wins, damaged ones are skipped."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from pyxos.storage.snapshot import (
    SNAPSHOT_HEADER_SIZE,
    Snapshot,
    SnapshotCorrupt,
    load_latest_snapshot,
    prune_snapshots,
    read_snapshot,
    scan_snapshots,
    snapshot_path,
    write_snapshot,
)


def write(path: Path, slot: int) -> Path:
    """A snapshot whose contents name its slot."""
    return write_snapshot(path, slot, f"meta-{slot}".encode(), f"data-{slot}".encode() * 50)


def test_a_snapshot_round_trips(tmp_path: Path) -> None:
    meta, data = b"\x81\xa6ballot\x92\x03\x01", bytes(range(256)) * 40
    path = write_snapshot(tmp_path / "snaps", 42, meta, data)
    assert path == tmp_path / "snaps" / "snap-00000000000000000042.snap"
    assert path.stat().st_size == SNAPSHOT_HEADER_SIZE + len(meta) + len(data)
    assert load_latest_snapshot(tmp_path / "snaps") == Snapshot(42, meta, data, path)
    assert [p.name for p in (tmp_path / "snaps").iterdir()] == [path.name]  # no temp left


def test_empty_meta_and_data_round_trip(tmp_path: Path) -> None:
    path = write_snapshot(tmp_path, 0, b"", b"")
    assert read_snapshot(path) == Snapshot(0, b"", b"", path)


def test_no_snapshot_means_none(tmp_path: Path) -> None:
    assert load_latest_snapshot(tmp_path) is None
    assert load_latest_snapshot(tmp_path / "missing") is None


def test_the_newest_snapshot_wins(tmp_path: Path) -> None:
    for slot in (20, 5, 300):
        write(tmp_path, slot)
    latest = load_latest_snapshot(tmp_path)
    assert latest is not None
    assert (latest.slot, latest.meta) == (300, b"meta-300")


def test_rewriting_a_slot_replaces_it(tmp_path: Path) -> None:
    write_snapshot(tmp_path, 7, b"old", b"old")
    write_snapshot(tmp_path, 7, b"new", b"new")
    latest = load_latest_snapshot(tmp_path)
    assert latest is not None
    assert latest.meta == b"new"


def test_an_unfinished_temp_file_is_ignored(tmp_path: Path) -> None:
    write(tmp_path, 10)
    complete = write(tmp_path / "elsewhere", 99).read_bytes()
    temp = tmp_path / "snap-00000000000000000099.snap.tmp"
    temp.write_bytes(complete[:-10])  # a crash before the rename
    scan = scan_snapshots(tmp_path)
    assert scan.latest is not None
    assert scan.latest.slot == 10
    assert scan.temp_files == (temp,)
    assert scan.skipped == ()


@pytest.mark.parametrize("where", ["magic", "slot", "lengths", "crc", "meta", "data"])
def test_a_damaged_snapshot_is_skipped_for_the_older_valid_one(
    tmp_path: Path, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path, 10)
    newest = write(tmp_path, 20)
    offset = {"magic": 0, "slot": 12, "lengths": 20, "crc": 32, "meta": 37, "data": 60}[where]
    data = bytearray(newest.read_bytes())
    data[offset] ^= 0x04
    newest.write_bytes(data)
    with caplog.at_level(logging.WARNING):
        latest = load_latest_snapshot(tmp_path)
    assert latest is not None
    assert latest.slot == 10
    assert newest.name in caplog.text
    (skipped,) = scan_snapshots(tmp_path).skipped
    assert skipped.path == newest
    with pytest.raises(SnapshotCorrupt):
        read_snapshot(newest)


@pytest.mark.parametrize("size", [0, 10, SNAPSHOT_HEADER_SIZE, -1])
def test_a_truncated_snapshot_is_skipped(tmp_path: Path, size: int) -> None:
    write(tmp_path, 10)
    newest = write(tmp_path, 20)
    newest.write_bytes(newest.read_bytes()[:size])
    latest = load_latest_snapshot(tmp_path)
    assert latest is not None
    assert latest.slot == 10


def test_a_snapshot_renamed_to_another_slot_is_skipped(tmp_path: Path) -> None:
    write(tmp_path, 10)
    write(tmp_path, 20).rename(snapshot_path(tmp_path, 30))
    scan = scan_snapshots(tmp_path)
    assert scan.latest is not None
    assert scan.latest.slot == 10
    assert "slot 20" in scan.skipped[0].reason


def test_only_damaged_snapshots_means_none(tmp_path: Path) -> None:
    write(tmp_path, 10).write_bytes(b"garbage")
    assert load_latest_snapshot(tmp_path) is None
    assert len(scan_snapshots(tmp_path).skipped) == 1


def test_a_failed_fsync_leaves_no_snapshot_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, 10)

    def failing_sync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing_sync, raising=False)
    monkeypatch.setattr(os, "fsync", failing_sync)
    with pytest.raises(OSError):
        write(tmp_path, 20)
    monkeypatch.undo()
    assert not snapshot_path(tmp_path, 20).exists()
    latest = load_latest_snapshot(tmp_path)
    assert latest is not None
    assert latest.slot == 10


def test_prune_keeps_the_newest_valid_snapshots(tmp_path: Path) -> None:
    paths = [write(tmp_path, slot) for slot in (1, 2, 3, 4, 5)]
    temp = tmp_path / "snap-00000000000000000006.snap.tmp"
    temp.write_bytes(b"partial")
    assert sorted(prune_snapshots(tmp_path, keep=2)) == sorted([*paths[:3], temp])
    assert sorted(tmp_path.iterdir()) == paths[3:]


def test_prune_does_not_count_damaged_snapshots(tmp_path: Path) -> None:
    paths = [write(tmp_path, slot) for slot in (1, 2, 3, 4)]
    paths[3].write_bytes(b"damaged")  # the newest is bad: keep 3 and 2, drop 1
    assert prune_snapshots(tmp_path, keep=2) == [paths[0]]
    assert sorted(tmp_path.iterdir()) == paths[1:]


def test_prune_deletes_nothing_valid_when_too_few_are_valid(tmp_path: Path) -> None:
    paths = [write(tmp_path, slot) for slot in (1, 2)]
    paths[1].write_bytes(b"damaged")
    assert prune_snapshots(tmp_path, keep=2) == []
    assert sorted(tmp_path.iterdir()) == paths
    with pytest.raises(ValueError):
        prune_snapshots(tmp_path, keep=0)
