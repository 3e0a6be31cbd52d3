"""Storage benchmark: WAL group-commit throughput against the disk's raw fsync rate.

Theory of operation
-------------------
For each batch size the WAL appends ``batch_size`` records of ``record_bytes`` and
syncs, in a closed loop, for ``seconds_per_case``: records/s and syncs/s (one
fdatasync each) follow. Interleaved with it in 0.1 s slices, a raw loop appends
``record_bytes`` and fdatasyncs on the same filesystem: that is the rate a log that
fsyncs every record could reach, so ``gain`` = WAL records/s / raw fsyncs/s is what
group commit buys. Slicing matters on shared or virtual disks, whose fsync rate can
drift several-fold within seconds. Everything runs in fresh subdirectories of
``dirpath`` that are removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

from pyxos.storage.wal import WAL, fdatasync

__all__ = ["StorageBenchRow", "format_table", "main", "measure_raw_fsync", "run_storage_bench"]


class StorageBenchRow(TypedDict):
    """One benchmark case: a WAL batch size, its rates, and the raw fsync rate."""

    batch_size: int
    record_bytes: int
    seconds: float
    records: int
    syncs: int
    records_per_s: float
    fsyncs_per_s: float
    mean_sync_ms: float
    raw_fsyncs_per_s: float
    gain: float


_SLICE_SECONDS = 0.1


def _raw_fsync_slice(fd: int, payload: bytes, seconds: float) -> tuple[int, float]:
    """Append ``payload`` and fdatasync in a loop for ``seconds``: (fsyncs, elapsed)."""
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        os.write(fd, payload)
        fdatasync(fd)
        count += 1
        now = time.perf_counter()
        if now >= deadline:
            return count, now - start


def _wal_slice(wal: WAL, batch: list[tuple[int, bytes]], seconds: float) -> tuple[int, float]:
    """Append ``batch`` and sync in a closed loop for ``seconds``: (syncs, elapsed)."""
    syncs = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        wal.append_and_sync(batch)
        syncs += 1
        now = time.perf_counter()
        if now >= deadline:
            return syncs, now - start


def measure_raw_fsync(dirpath: str | os.PathLike[str], seconds: float, nbytes: int = 100) -> float:
    """Append ``nbytes`` and fdatasync in a loop for ``seconds``; return fsyncs/s."""
    path = Path(tempfile.mkdtemp(prefix="raw-fsync-", dir=dirpath))
    fd = os.open(path / "raw.dat", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        count, elapsed = _raw_fsync_slice(fd, os.urandom(nbytes), seconds)
        return count / elapsed
    finally:
        os.close(fd)
        shutil.rmtree(path)


def _bench_case(
    dirpath: Path, batch_size: int, seconds: float, record_bytes: int
) -> StorageBenchRow:
    """WAL and raw fsync loops in alternating slices, so both see the same disk."""
    path = Path(tempfile.mkdtemp(prefix=f"wal-b{batch_size}-", dir=dirpath))
    payload = os.urandom(record_bytes)
    batch = [(1, payload)] * batch_size
    slices = max(1, round(seconds / _SLICE_SECONDS))
    wal, _ = WAL.open(path / "wal")
    raw_fd = os.open(path / "raw.dat", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    syncs = raw_fsyncs = 0
    wal_seconds = raw_seconds = 0.0
    try:
        for _ in range(slices):
            count, elapsed = _raw_fsync_slice(raw_fd, payload, seconds / slices)
            raw_fsyncs, raw_seconds = raw_fsyncs + count, raw_seconds + elapsed
            count, elapsed = _wal_slice(wal, batch, seconds / slices)
            syncs, wal_seconds = syncs + count, wal_seconds + elapsed
    finally:
        wal.close()
        os.close(raw_fd)
        shutil.rmtree(path)
    records = syncs * batch_size
    raw_rate = raw_fsyncs / raw_seconds
    return StorageBenchRow(
        batch_size=batch_size,
        record_bytes=record_bytes,
        seconds=wal_seconds,
        records=records,
        syncs=syncs,
        records_per_s=records / wal_seconds,
        fsyncs_per_s=syncs / wal_seconds,
        mean_sync_ms=1000.0 * wal_seconds / syncs,
        raw_fsyncs_per_s=raw_rate,
        gain=records / wal_seconds / raw_rate,
    )


def run_storage_bench(
    dirpath: str | os.PathLike[str],
    batch_sizes: Sequence[int] = (1, 8, 64, 512),
    seconds_per_case: float = 1.0,
    record_bytes: int = 100,
) -> list[StorageBenchRow]:
    """Benchmark WAL group commit in ``dirpath``; one row per batch size.

    Each case spends ``seconds_per_case`` in the WAL loop and as long again in a raw
    loop (append ``record_bytes``, fdatasync) on the same filesystem, alternating in
    0.1 s slices so that both see the same disk load. ``gain`` = WAL records/s over
    raw fsyncs/s: what group commit buys over an fsync per record.
    """
    if any(batch_size < 1 for batch_size in batch_sizes):
        raise ValueError("batch sizes must be >= 1")
    base = Path(dirpath)
    base.mkdir(parents=True, exist_ok=True)
    return [_bench_case(base, size, seconds_per_case, record_bytes) for size in batch_sizes]


def format_table(rows: Sequence[StorageBenchRow]) -> str:
    """Render benchmark rows as a plain-text table."""
    lines = [
        f"{'batch':>6} {'records/s':>11} {'fsyncs/s':>9} {'ms/sync':>8}"
        f" {'raw fsyncs/s':>13} {'gain':>7}"
    ]
    for row in rows:
        lines.append(
            f"{row['batch_size']:>6} {row['records_per_s']:>11,.0f} {row['fsyncs_per_s']:>9,.0f}"
            f" {row['mean_sync_ms']:>8.3f} {row['raw_fsyncs_per_s']:>13,.0f}"
            f" {row['gain']:>6.1f}x"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry: run the storage benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dir", default=".", help="directory on the disk to measure")
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per case")
    parser.add_argument("--record-bytes", type=int, default=100)
    parser.add_argument(
        "--batch-sizes", default="1,8,64,512", help="comma-separated WAL batch sizes"
    )
    args = parser.parse_args(argv)
    sizes = tuple(int(s) for s in args.batch_sizes.split(","))
    rows = run_storage_bench(args.dir, sizes, args.seconds, args.record_bytes)
    print(f"dir={Path(args.dir).resolve()} record_bytes={args.record_bytes}")
    print(format_table(rows))
