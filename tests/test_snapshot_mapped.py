"""Snapshots read from a memory map of their file (``OsFileSystem.read_view``) attacked:
a file truncated, corrupted in the middle or at its checksum is refused with
``SnapshotCorrupt`` (and the scan falls back to the older one); a view already held
stays the file's bytes when the file is replaced by a newer one of the same name, or
deleted by compaction, so a KV store restored (or a peer served) from it afterwards
gets the original state, never a crash on a stale map."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyxos.statemachine.kv import KVStore
from pyxos.storage.snapshot import (
    SNAPSHOT_HEADER_SIZE,
    SnapshotCorrupt,
    read_snapshot,
    scan_snapshots,
    write_snapshot,
)


def kv_state(n: int, tag: str) -> bytes:
    kv = KVStore()
    kv._values = {f"k{i}": f"{tag}{i}" * 50 for i in range(n)}
    return kv.snapshot()


def restored(data: bytes | memoryview) -> dict[str, str]:
    kv = KVStore()
    kv.restore(data)
    return dict(kv._values)


def damage(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "truncated_by_one":
        raw = raw[:-1]
    elif how == "truncated_to_header":
        raw = raw[:SNAPSHOT_HEADER_SIZE]
    elif how == "truncated_in_header":
        raw = raw[: SNAPSHOT_HEADER_SIZE - 3]
    elif how == "empty":
        raw = bytearray()
    elif how == "middle":
        raw[len(raw) // 2] ^= 0x40
    elif how == "checksum":
        raw[SNAPSHOT_HEADER_SIZE - 1] ^= 0x01
    elif how == "grown":
        raw += b"\0"
    path.write_bytes(bytes(raw))


HOWS = [
    "truncated_by_one",
    "truncated_to_header",
    "truncated_in_header",
    "empty",
    "middle",
    "checksum",
    "grown",
]


@pytest.mark.parametrize("how", HOWS)
def test_a_damaged_mapped_snapshot_is_refused_and_the_scan_falls_back(
    tmp_path: Path, how: str
) -> None:
    old = kv_state(200, "old")
    write_snapshot(tmp_path, 10, b"meta", old)
    path = write_snapshot(tmp_path, 20, b"meta", kv_state(200, "new"))
    assert isinstance(read_snapshot(path).data, memoryview)  # the mapped path
    damage(path, how)
    with pytest.raises(SnapshotCorrupt):
        read_snapshot(path)
    scan = scan_snapshots(tmp_path)
    assert scan.latest is not None and scan.latest.slot == 10
    assert [s.path for s in scan.skipped] == [path]
    assert restored(scan.latest.data) == restored(old)


@pytest.mark.parametrize("then", ["replaced", "deleted", "replaced_then_deleted"])
def test_a_held_view_keeps_the_original_bytes(tmp_path: Path, then: str) -> None:
    first = kv_state(300, "a")
    path = write_snapshot(tmp_path, 5, b"m1", first)
    snap = read_snapshot(path)
    assert isinstance(snap.data, memoryview)
    if then.startswith("replaced"):  # a snapshot of the same slot written again
        assert write_snapshot(tmp_path, 5, b"m2", kv_state(300, "b")) == path
        assert restored(read_snapshot(path).data) == restored(kv_state(300, "b"))
    if then.endswith("deleted"):  # compaction
        os.unlink(path)
        assert not path.exists()
    assert bytes(snap.data) == first and snap.meta == b"m1"
    assert restored(snap.data) == restored(first)
    chunks = [bytes(snap.data[i : i + 1000]) for i in range(0, len(snap.data), 1000)]
    assert b"".join(chunks) == first  # what a lagging peer is sent, chunk by chunk
