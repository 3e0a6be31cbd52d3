"""A snapshot is restored without copying its bytes (h13restart, issue 13 item 4).

``read_snapshot`` returns the data as a read-only view of the mapped file; the
membership wrapper and the replication layer hand the application a view of it, and
``KVStore`` decodes from that view. An application that did not say it takes a view
still gets ``bytes``, as the application contract promises.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from pyxos.statemachine.kv import Command, KVStore
from pyxos.statemachine.replicated import ReplicatedApp
from pyxos.statemachine.service import unwrap_snapshot
from pyxos.storage.fs import OS
from pyxos.storage.snapshot import (
    SnapshotCorrupt,
    prune_snapshots,
    read_snapshot,
    write_snapshot,
)


def loaded_state(keys: int = 50) -> ReplicatedApp[KVStore]:
    state = ReplicatedApp(KVStore())
    enc = msgspec.msgpack.Encoder()
    for i in range(keys):
        cmd = enc.encode(Command(client=1, seq=i + 1, op="put", key=f"k{i}", value="v" * i))
        state.apply(i, enc.encode([(1, i + 1, cmd)]))
    return state


def test_a_snapshot_read_from_disk_is_a_view_and_restores(tmp_path: Path) -> None:
    state = loaded_state()
    path = write_snapshot(tmp_path, 7, b"meta", state.snapshot())
    snap = read_snapshot(path)
    assert isinstance(snap.data, memoryview) and snap.data.readonly
    assert snap.meta == b"meta" and bytes(snap.data) == state.snapshot()
    membership, app = unwrap_snapshot(snap.data)
    assert membership is None
    again = ReplicatedApp(KVStore())
    again.restore(app)
    assert again.app.state_digest() == state.app.state_digest()
    assert again.applied_slot == state.applied_slot


def test_a_view_outlives_the_deleted_file(tmp_path: Path) -> None:
    state = loaded_state()
    first = write_snapshot(tmp_path, 1, b"", state.snapshot())
    snap = read_snapshot(first)
    write_snapshot(tmp_path, 2, b"", b"x")
    write_snapshot(tmp_path, 3, b"", b"y")
    assert first in prune_snapshots(tmp_path, keep=2)
    again = ReplicatedApp(KVStore())
    again.restore(snap.data)  # still readable: the mapping holds the deleted file
    assert again.app.state_digest() == state.app.state_digest()


def test_a_damaged_snapshot_is_still_refused(tmp_path: Path) -> None:
    path = write_snapshot(tmp_path, 5, b"", loaded_state().snapshot())
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(SnapshotCorrupt, match="checksum mismatch"):
        read_snapshot(path)
    empty = tmp_path / "snap-00000000000000000009.snap"
    empty.write_bytes(b"")
    with pytest.raises(SnapshotCorrupt, match="header incomplete"):
        read_snapshot(empty, fs=OS)


class BytesOnly:
    """An application that reads its snapshot with ``bytes`` methods only."""

    def __init__(self) -> None:
        self.state = b""

    def apply(self, command: bytes) -> bytes:
        self.state += command
        return b""

    def query(self, query: bytes) -> bytes:
        return self.state

    def snapshot(self) -> bytes:
        return self.state

    def restore(self, data: bytes) -> None:
        assert type(data) is bytes, "the contract promises bytes"
        self.state = data.upper().lower()


def test_an_application_without_the_flag_gets_bytes(tmp_path: Path) -> None:
    state = ReplicatedApp(BytesOnly())  # type: ignore[type-var]
    state.apply(0, msgspec.msgpack.encode([(1, 1, b"abc")]))
    path = write_snapshot(tmp_path, 1, b"", state.snapshot())
    again = ReplicatedApp(BytesOnly())  # type: ignore[type-var]
    again.restore(read_snapshot(path).data)
    assert again.app.state == b"abc"
    assert again.session(1) is not None
