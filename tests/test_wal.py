"""Write-ahead log: round trips, segments, recovery of torn tails, corruption, fsync failure.

Every test uses real files in tmp_path. Crash states are made by copying a log's
directory and cutting, zero-filling or flipping bytes in the copy.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from pyxos.storage.wal import (
    MARKER_FILENAME,
    MAX_PAYLOAD_BYTES,
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    WAL,
    MarkerError,
    NodeMarker,
    Record,
    RecoveryReport,
    WALCorruption,
    WALError,
    encode_record,
    read_marker,
    write_marker,
)

Batch = Sequence[tuple[int, bytes]]

# Payloads of assorted sizes, with zero bytes in them: zeros are what the recovery
# scan keys on, so they must not confuse it.
BATCHES: list[Batch] = [
    [(1, b"promise:1")],
    [(2, b"accept:" + bytes(range(20))), (2, b"")],
    [(3, bytes(17)), (255, b"x" * 33), (0, b"\x00\x01\x00\x02")],
    [(1, b"promise:2")],
    [(2, b"a" * 5), (2, b"\x00" * 40), (4, b"tail-record-" + bytes(12)), (5, b"z")],
]


def write_log(path: Path, batches: Sequence[Batch], segment_bytes: int = 1 << 20) -> list[Record]:
    """Append and sync each batch (every one acknowledged); return what was written."""
    written: list[Record] = []
    wal, _ = WAL.open(path, segment_bytes=segment_bytes)
    with wal:
        for batch in batches:
            first = wal.last_index + 1
            wal.append_and_sync(batch)
            written += [Record(first + i, t, p) for i, (t, p) in enumerate(batch)]
    return written


def read_log(path: Path) -> tuple[list[Record], RecoveryReport]:
    """Open, recover and replay a log; close it again."""
    wal, report = WAL.open(path)
    with wal:
        return list(wal.replay()), report


def segments(path: Path) -> list[Path]:
    """The segment files of a log directory, oldest first."""
    return sorted(path.glob("wal-*.log"))


def crash_copy(src: Path, dst: Path) -> Path:
    """A copy of a closed log directory, to damage as a crash or a bad disk would."""
    shutil.copytree(src, dst)
    return dst


@pytest.fixture
def fast_fsync(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make fsync and fdatasync no-ops that record the descriptors they were given.

    For the tests that build hundreds of crash states by editing copies of a log:
    what they check does not depend on the disk honouring fsync, and on a busy
    shared disk real fsyncs would make them slow. Other tests use the real calls.
    """
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", calls.append)
    monkeypatch.setattr(os, "fdatasync", calls.append, raising=False)
    return calls


# -- round trips and indexes -------------------------------------------------------------


def test_a_fresh_log_is_empty_and_starts_at_index_1(tmp_path: Path) -> None:
    wal, report = WAL.open(tmp_path / "log")
    with wal:
        assert (report.segments, report.records, report.first_index, report.last_index) == (
            1,
            0,
            1,
            0,
        )
        assert not report.torn_tail
        assert (wal.first_index, wal.durable_index, wal.last_index) == (1, 0, 0)
        assert list(wal.replay()) == []
    assert WAL.exists(tmp_path / "log")
    assert not WAL.exists(tmp_path / "nothing-here")


def test_records_round_trip_through_a_reopen(tmp_path: Path) -> None:
    written = write_log(tmp_path, BATCHES)
    assert [r.index for r in written] == list(range(1, len(written) + 1))
    recovered, report = read_log(tmp_path)
    assert recovered == written
    assert report.records == len(written)
    assert report.last_index == len(written)
    assert not report.torn_tail


def test_appended_records_are_not_replayed_until_synced(tmp_path: Path) -> None:
    wal, _ = WAL.open(tmp_path)
    with wal:
        assert wal.append([(1, b"a"), (1, b"b")]) == 2
        assert (wal.durable_index, wal.last_index) == (0, 2)
        assert list(wal.replay()) == []
        assert wal.sync() == 2
        assert [r.payload for r in wal.replay()] == [b"a", b"b"]


def test_unsynced_records_are_dropped_on_close(tmp_path: Path) -> None:
    wal, _ = WAL.open(tmp_path)
    with wal:
        wal.append_and_sync([(1, b"durable")])
        wal.append([(1, b"never synced")])
    recovered, _ = read_log(tmp_path)
    assert [r.payload for r in recovered] == [b"durable"]


def test_invalid_records_are_refused_whole(tmp_path: Path) -> None:
    wal, _ = WAL.open(tmp_path)
    with wal:
        with pytest.raises(ValueError):
            wal.append([(1, b"ok"), (256, b"bad type")])
        with pytest.raises(ValueError):
            wal.append([(1, b"x" * (MAX_PAYLOAD_BYTES + 1))])
        assert wal.last_index == 0
        wal.append_and_sync([(1, b"x" * MAX_PAYLOAD_BYTES)])
        assert [len(r.payload) for r in wal.replay()] == [MAX_PAYLOAD_BYTES]


def test_indexes_continue_across_reopens(tmp_path: Path) -> None:
    write_log(tmp_path, BATCHES[:2])
    wal, report = WAL.open(tmp_path)
    with wal:
        assert report.last_index == 3
        assert wal.append_and_sync([(9, b"after reopen")]) == 4
    recovered, _ = read_log(tmp_path)
    assert [r.index for r in recovered] == [1, 2, 3, 4]
    assert recovered[-1] == Record(4, 9, b"after reopen")


def test_replay_from_an_index(tmp_path: Path) -> None:
    written = write_log(tmp_path, BATCHES, segment_bytes=96)
    wal, _ = WAL.open(tmp_path, segment_bytes=96)
    with wal:
        assert list(wal.replay(start=5)) == written[4:]
        assert list(wal.replay(start=len(written) + 1)) == []


# -- segments ----------------------------------------------------------------------------


def test_segments_roll_at_segment_bytes_and_chain(tmp_path: Path) -> None:
    batches = [[(1, bytes([i]) * 30) for i in range(j, j + 3)] for j in range(0, 60, 3)]
    written = write_log(tmp_path, batches, segment_bytes=256)
    files = segments(tmp_path)
    assert len(files) > 5
    record_size = len(encode_record(1, bytes(30)))
    first = 1
    for path in files:
        assert path.name == f"wal-{first:020d}.log"
        size = path.stat().st_size
        assert size <= 256
        assert path.read_bytes()[:6] == b"PYXWAL"
        first += (size - SEGMENT_HEADER_SIZE) // record_size
    recovered, report = read_log(tmp_path)
    assert recovered == written
    assert report.segments == len(files)


def test_a_record_larger_than_a_segment_gets_a_segment_of_its_own(tmp_path: Path) -> None:
    written = write_log(tmp_path, [[(1, b"small")], [(2, b"L" * 1000), (3, b"after")]], 128)
    assert len(segments(tmp_path)) == 3
    assert read_log(tmp_path)[0] == written


def test_one_sync_spanning_a_roll_is_durable_in_both_segments(tmp_path: Path) -> None:
    batch = [(1, bytes([i]) * 40) for i in range(12)]
    written = write_log(tmp_path, [batch], segment_bytes=200)
    assert len(segments(tmp_path)) > 2
    assert read_log(tmp_path)[0] == written


def test_truncate_before_deletes_only_whole_segments_below_the_index(tmp_path: Path) -> None:
    batches = [[(1, bytes([i]) * 30)] for i in range(40)]
    written = write_log(tmp_path, batches, segment_bytes=256)
    wal, _ = WAL.open(tmp_path, segment_bytes=256)
    with wal:
        before = segments(tmp_path)
        firsts = [int(p.name[4:24]) for p in before]
        cut = firsts[3] + 1  # inside the fourth segment
        assert wal.truncate_before(cut) == 3
        assert segments(tmp_path) == before[3:]
        assert wal.first_index == firsts[3] <= cut
        assert list(wal.replay()) == written[firsts[3] - 1 :]
        assert wal.truncate_before(cut) == 0
        # The active segment is never deleted, whatever the index.
        wal.truncate_before(10**9)
        assert segments(tmp_path) == before[-1:]
        wal.append_and_sync([(7, b"still appending")])
    recovered, report = read_log(tmp_path)
    assert report.first_index == firsts[-1]
    assert recovered[-1] == Record(len(written) + 1, 7, b"still appending")


# -- recovery: torn tails ----------------------------------------------------------------


def record_ends(segment: Path) -> list[int]:
    """End offset of each record in a segment file."""
    data = segment.read_bytes()
    ends, pos = [], SEGMENT_HEADER_SIZE
    while pos < len(data):
        pos += RECORD_HEADER_SIZE + int.from_bytes(data[pos : pos + 4], "little")
        ends.append(pos)
    assert pos == len(data)
    return ends


@pytest.mark.parametrize("segment_bytes", [1 << 20, 160], ids=["one-segment", "many-segments"])
@pytest.mark.parametrize("fill", ["cut", "zero-filled"])
def test_every_torn_tail_recovers_exactly_an_acknowledged_prefix(
    tmp_path: Path, fast_fsync: list[int], segment_bytes: int, fill: str
) -> None:
    src = tmp_path / "src"
    written = write_log(src, BATCHES, segment_bytes)
    last_segment = segments(src)[-1]
    ends = record_ends(last_segment)
    in_earlier_segments = len(written) - len(ends)
    assert len(ends) >= 4
    start = ends[-5] if len(ends) > 4 else SEGMENT_HEADER_SIZE  # the last 4 records
    size = last_segment.stat().st_size
    for cut in range(start, size + 1):
        crashed = crash_copy(src, tmp_path / f"cut-{cut}")
        victim = crashed / last_segment.name
        data = last_segment.read_bytes()[:cut]
        if fill == "zero-filled":
            data += bytes(size - cut + 512)  # the file grew, its new blocks never written
        victim.write_bytes(data)

        fast_fsync.clear()
        recovered, report = read_log(crashed)
        assert fast_fsync or not report.torn_tail, "a truncation must be fsynced"
        # Exactly a prefix: every record whose bytes survived, never a partial one.
        # (Zero-filling can complete a record whose missing bytes were all zeros:
        # that record is then recovered whole, as it was written.)
        kept = len(recovered)
        assert recovered == written[:kept], f"cut at {cut}"
        whole = sum(1 for end in ends if end <= cut)
        assert kept == in_earlier_segments + whole or (
            fill == "zero-filled" and kept == in_earlier_segments + whole + 1
        ), f"cut at {cut}"
        good_end = [SEGMENT_HEADER_SIZE, *ends][kept - in_earlier_segments]
        assert report.truncated_bytes == len(data) - good_end, f"cut at {cut}"
        assert victim.stat().st_size == good_end

        wal, _ = WAL.open(crashed, segment_bytes=segment_bytes)
        with wal:
            assert wal.append_and_sync([(6, b"after recovery")]) == kept + 1
        again, report = read_log(crashed)
        assert again == [*written[:kept], Record(kept + 1, 6, b"after recovery")]
        assert not report.torn_tail


def test_a_garbage_tail_with_no_record_after_it_is_torn(tmp_path: Path) -> None:
    written = write_log(tmp_path, BATCHES)
    (path,) = segments(tmp_path)
    with path.open("ab") as f:
        f.write(b"\xff\x13\x07 half-written junk with no valid record in it")
    recovered, report = read_log(tmp_path)
    assert recovered == written
    assert report.torn_tail
    assert report.truncated_segment == path


def test_a_flipped_byte_anywhere_in_the_final_record_is_a_torn_tail(
    tmp_path: Path, fast_fsync: list[int]
) -> None:
    src = tmp_path / "src"
    written = write_log(src, BATCHES)
    (segment,) = segments(src)
    ends = record_ends(segment)
    for offset in range(ends[-2], ends[-1]):
        crashed = crash_copy(src, tmp_path / f"flip-{offset}")
        data = bytearray(segment.read_bytes())
        data[offset] ^= 0x40
        (crashed / segment.name).write_bytes(data)
        recovered, report = read_log(crashed)
        assert recovered == written[:-1], f"flip at {offset}"
        assert report.truncated_at == ends[-2]
        assert report.truncated_bytes == ends[-1] - ends[-2]


def test_leftover_temp_segments_are_removed_and_reported(tmp_path: Path) -> None:
    written = write_log(tmp_path, BATCHES)
    tmp = tmp_path / "wal-00000000000000000099.log.tmp"
    tmp.write_bytes(b"PYX")
    recovered, report = read_log(tmp_path)
    assert recovered == written
    assert report.removed_temp_files == (tmp,)
    assert not tmp.exists()


# -- recovery: corruption ----------------------------------------------------------------


def test_a_flipped_byte_anywhere_in_a_middle_record_is_corruption(
    tmp_path: Path, fast_fsync: list[int]
) -> None:
    src = tmp_path / "src"
    write_log(src, BATCHES)
    (segment,) = segments(src)
    ends = record_ends(segment)
    victim_start, victim_end = ends[3], ends[4]  # the 5th record; 6 more follow it
    for offset in range(victim_start, victim_end):
        crashed = crash_copy(src, tmp_path / f"flip-{offset}")
        data = bytearray(segment.read_bytes())
        data[offset] ^= 0x01 if offset % 2 else 0x80
        (crashed / segment.name).write_bytes(data)
        with pytest.raises(WALCorruption) as info:
            WAL.open(crashed)
        assert info.value.path == crashed / segment.name
        assert info.value.offset == victim_start, f"flip at {offset}"
        assert data == (crashed / segment.name).read_bytes(), "corrupt log must not be modified"


def test_a_length_that_overshoots_the_file_cannot_hide_the_records_after_it(
    tmp_path: Path,
) -> None:
    write_log(tmp_path, BATCHES)
    (segment,) = segments(tmp_path)
    ends = record_ends(segment)
    data = bytearray(segment.read_bytes())
    data[ends[0] : ends[0] + 4] = (len(data) * 2).to_bytes(4, "little")  # plausible, too long
    segment.write_bytes(data)
    with pytest.raises(WALCorruption, match="followed by an intact record"):
        WAL.open(tmp_path)


def test_damage_in_a_sealed_segment_is_corruption_even_at_its_end(tmp_path: Path) -> None:
    write_log(tmp_path, BATCHES, segment_bytes=160)
    first = segments(tmp_path)[0]
    data = first.read_bytes()
    first.write_bytes(data[:-1])  # a torn tail, but not in the last segment
    with pytest.raises(WALCorruption, match="sealed segment") as info:
        WAL.open(tmp_path)
    assert info.value.path == first


def test_a_missing_middle_segment_is_corruption(tmp_path: Path) -> None:
    write_log(tmp_path, BATCHES, segment_bytes=96)
    files = segments(tmp_path)
    assert len(files) >= 3
    files[1].unlink()
    with pytest.raises(WALCorruption, match="expected"):
        WAL.open(tmp_path)


def test_a_damaged_segment_header_is_corruption(tmp_path: Path) -> None:
    write_log(tmp_path, BATCHES)
    (segment,) = segments(tmp_path)
    data = bytearray(segment.read_bytes())
    data[10] ^= 0x01  # inside first_index
    segment.write_bytes(data)
    with pytest.raises(WALCorruption, match="header") as info:
        WAL.open(tmp_path)
    assert info.value.offset == 0


def test_a_segment_whose_name_and_header_disagree_is_corruption(tmp_path: Path) -> None:
    write_log(tmp_path, BATCHES)
    (segment,) = segments(tmp_path)
    segment.rename(tmp_path / "wal-00000000000000000005.log")
    with pytest.raises(WALCorruption, match="first index 1"):
        WAL.open(tmp_path)


# -- failures ----------------------------------------------------------------------------


def failing_sync(fd: int) -> None:
    raise OSError(errno.EIO, "Input/output error")


@pytest.mark.parametrize("function", ["fsync", "fdatasync"])
def test_a_failed_fsync_makes_the_wal_refuse_every_later_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, function: str
) -> None:
    wal, _ = WAL.open(tmp_path)
    wal.append_and_sync([(1, b"durable")])
    monkeypatch.setattr(os, function, failing_sync, raising=False)
    if function == "fsync":  # fsync is only the fallback where fdatasync is missing
        monkeypatch.delattr(os, "fdatasync", raising=False)
    wal.append([(1, b"lost")])
    with pytest.raises(WALError, match="fsync failed"):
        wal.sync()
    assert wal.failed
    monkeypatch.undo()  # a later fsync that "works" must not be believed either
    for call in (
        lambda: wal.append([(1, b"x")]),
        wal.sync,
        lambda: wal.append_and_sync([(1, b"x")]),
        lambda: list(wal.replay()),
        lambda: wal.truncate_before(1),
    ):
        with pytest.raises(WALError, match="failed earlier"):
            call()
    wal.close()
    recovered, _ = read_log(tmp_path)
    assert recovered[0] == Record(1, 1, b"durable")


def test_a_failed_directory_fsync_during_a_roll_fails_the_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal, _ = WAL.open(tmp_path, segment_bytes=64)
    wal.append_and_sync([(1, b"first" * 5)])
    monkeypatch.setattr(os, "fsync", failing_sync)
    with pytest.raises(WALError):
        wal.append_and_sync([(1, b"second" * 5)])  # needs a new segment
    assert wal.failed
    wal.close()


def test_a_failed_write_fails_the_wal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wal, _ = WAL.open(tmp_path)

    def io_error(fd: int, data: object) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "write", io_error)
    with pytest.raises(WALError):
        wal.append_and_sync([(1, b"x")])
    monkeypatch.undo()
    with pytest.raises(WALError):
        wal.append([(1, b"y")])
    wal.close()


def test_a_closed_wal_refuses_use(tmp_path: Path) -> None:
    wal, _ = WAL.open(tmp_path)
    wal.close()
    wal.close()
    with pytest.raises(WALError, match="closed"):
        wal.append([(1, b"x")])


def test_a_second_opener_is_locked_out(tmp_path: Path) -> None:
    wal, _ = WAL.open(tmp_path)
    with wal, pytest.raises(WALError, match="already open"):
        WAL.open(tmp_path)
    second, _ = WAL.open(tmp_path)  # the lock goes with close
    second.close()


# -- group commit across threads ---------------------------------------------------------


def test_appends_during_a_sync_in_another_thread_are_kept_in_order(tmp_path: Path) -> None:
    wal, _ = WAL.open(tmp_path, segment_bytes=4096)
    done = threading.Event()

    def syncer() -> None:
        while not done.is_set():
            wal.sync()

    thread = threading.Thread(target=syncer)
    thread.start()
    try:
        for i in range(400):
            wal.append([(1, i.to_bytes(4, "little")), (2, b"pad" * (i % 7))])
    finally:
        done.set()
        thread.join()
    wal.sync()
    wal.close()
    recovered, _ = read_log(tmp_path)
    assert [int.from_bytes(r.payload, "little") for r in recovered if r.rtype == 1] == list(
        range(400)
    )
    assert [r.index for r in recovered] == list(range(1, 801))


# -- node marker -------------------------------------------------------------------------


def test_the_marker_round_trips_and_is_absent_on_a_fresh_directory(tmp_path: Path) -> None:
    assert read_marker(tmp_path) is None
    assert write_marker(tmp_path, "cluster-a", 3) == NodeMarker("cluster-a", 3)
    assert read_marker(tmp_path) == NodeMarker("cluster-a", 3)
    assert [p.name for p in tmp_path.iterdir()] == [MARKER_FILENAME]


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b"[]", b'{"format": "other"}', b"\xff\xfe"],
)
def test_a_damaged_marker_is_an_error_not_an_absence(tmp_path: Path, content: bytes) -> None:
    (tmp_path / MARKER_FILENAME).write_bytes(content)
    with pytest.raises(MarkerError):
        read_marker(tmp_path)


def test_a_marker_with_an_edited_node_id_fails_its_checksum(tmp_path: Path) -> None:
    write_marker(tmp_path, "cluster-a", 3)
    path = tmp_path / MARKER_FILENAME
    path.write_text(path.read_text().replace('"node_id": 3', '"node_id": 4'))
    with pytest.raises(MarkerError, match="checksum"):
        read_marker(tmp_path)


# -- benchmark smoke test ----------------------------------------------------------------


def test_the_storage_benchmark_runs_and_reports_every_batch_size(tmp_path: Path) -> None:
    from pyxos.storage.bench import format_table, run_storage_bench

    rows = run_storage_bench(tmp_path, batch_sizes=(1, 16), seconds_per_case=0.05)
    assert [row["batch_size"] for row in rows] == [1, 16]
    for row in rows:
        assert row["records"] == row["syncs"] * row["batch_size"] > 0
        assert row["raw_fsyncs_per_s"] > 0
        assert row["gain"] == pytest.approx(row["records_per_s"] / row["raw_fsyncs_per_s"])
    assert "raw fsyncs/s" in format_table(rows)
    assert list(tmp_path.iterdir()) == []  # cleaned up
