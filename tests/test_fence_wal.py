"""FENCE records on the real WAL: older logs, corrupt records, checkpoints.

See ``storage/durable.py`` (record types) and "Rebuilding" in ``core/replica.py``.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from pyxos.core.ballot import Ballot
from pyxos.core.messages import Entry
from pyxos.core.ready import Fence, FenceState, Persist
from pyxos.storage.durable import FENCE, DurableAcceptor, DurableStateError


def test_a_log_written_before_fences_existed_recovers_with_none(tmp_path: Path) -> None:
    d, _ = DurableAcceptor.open(tmp_path)
    d.write(Persist(promised=Ballot(3, 2), accepted=[Entry(0, Ballot(3, 2), b"v")], chosen=1))
    d.sync()
    rtypes = {record.rtype for record in d.wal.replay()}
    assert FENCE not in rtypes
    d.close()
    d, state = DurableAcceptor.open(tmp_path)
    assert state.fences == {} and d.fences == {}
    assert state.promised == Ballot(3, 2) and state.accepted[0].value == b"v"
    first = d.checkpoint(state.promised, list(state.accepted.values()), state.chosen)
    d.sync()
    d.truncate_before(first)
    d.close()
    _, state = DurableAcceptor.open(tmp_path)
    assert state.fences == {} and state.promised == Ballot(3, 2)


@pytest.mark.parametrize(
    "payload",
    [b"\xc1", msgspec.msgpack.encode("not a fence"), msgspec.msgpack.encode([1])],
)
def test_a_corrupt_fence_record_is_a_clear_error(tmp_path: Path, payload: bytes) -> None:
    d, _ = DurableAcceptor.open(tmp_path)
    d.write(Persist(promised=Ballot(1, 1), fences=[Fence(2, 9)]))
    d.wal.append([(FENCE, payload)])
    d.sync()
    d.close()
    with pytest.raises(DurableStateError, match=r"WAL record \d+ \(type 7\) does not decode"):
        DurableAcceptor.open(tmp_path)


def test_fences_outlive_a_checkpoint_that_truncates_the_log(tmp_path: Path) -> None:
    d, _ = DurableAcceptor.open(tmp_path, segment_bytes=4096)
    d.write(Persist(promised=Ballot(2, 1), fences=[Fence(3, 5), Fence(2, 6)]))
    for slot in range(200):  # several segments, so the truncation deletes some
        d.write(Persist(accepted=[Entry(slot, Ballot(2, 1), b"x" * 64)]))
    d.write(Persist(fences=[Fence(2, 6, Ballot(4, 2))]))
    d.sync()
    first = d.checkpoint(Ballot(2, 1), [], 200)
    d.sync()
    d.truncate_before(first)
    d.close()
    d, state = DurableAcceptor.open(tmp_path, segment_bytes=4096)
    assert state.fences == {3: FenceState(up={5}), 2: FenceState(Ballot(4, 2), set())}
    assert 0 not in state.accepted  # the first segments (the first FENCE records) are gone
    # A second checkpoint, from the recovered state only, repeats them again.
    first = d.checkpoint(state.promised, [], 200)
    d.sync()
    d.truncate_before(first)
    d.close()
    _, again = DurableAcceptor.open(tmp_path, segment_bytes=4096)
    assert again.fences == state.fences
