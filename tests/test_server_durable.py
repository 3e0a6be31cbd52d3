"""Durable acceptor state: Persist records through the WAL and back."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyxos.core.ballot import ZERO, Ballot
from pyxos.core.messages import Entry
from pyxos.core.ready import Fence, FenceState, Persist
from pyxos.storage.durable import (
    REBUILT,
    AcceptorStateLost,
    DurableAcceptor,
    DurableStateError,
)
from pyxos.storage.wal import WAL


def test_fresh_directory_recovers_nothing(tmp_path: Path) -> None:
    durable, state = DurableAcceptor.open(tmp_path / "d")
    durable.close()
    assert state.promised == ZERO
    assert state.accepted == {}
    assert state.chosen == 0


def test_round_trip_through_a_reopen(tmp_path: Path) -> None:
    durable, _ = DurableAcceptor.open(tmp_path)
    durable.write(Persist(promised=Ballot(1, 2)))
    durable.write(
        Persist(accepted=[Entry(0, Ballot(1, 2), b"a"), Entry(1, Ballot(1, 2), b"\x00b")])
    )
    durable.write(Persist())  # empty: writes nothing
    durable.sync()
    durable.write(Persist(promised=Ballot(3, 1), accepted=[Entry(1, Ballot(3, 1), b"c")], chosen=1))
    durable.sync()
    assert durable.writes == 3
    assert durable.syncs == 2
    durable.close()

    again, state = DurableAcceptor.open(tmp_path)
    again.close()
    assert state.promised == Ballot(3, 1)
    assert state.accepted == {0: Entry(0, Ballot(1, 2), b"a"), 1: Entry(1, Ballot(3, 1), b"c")}
    assert state.chosen == 1


def test_unsynced_writes_are_lost_like_a_crash(tmp_path: Path) -> None:
    durable, _ = DurableAcceptor.open(tmp_path)
    durable.write(Persist(promised=Ballot(1, 1)))
    durable.sync()
    durable.write(Persist(promised=Ballot(2, 1)))
    durable.close()
    _, state = DurableAcceptor.open(tmp_path)
    assert state.promised == Ballot(1, 1)


def test_group_commit_one_sync_covers_many_writes(tmp_path: Path) -> None:
    durable, _ = DurableAcceptor.open(tmp_path)
    for slot in range(50):
        durable.write(Persist(accepted=[Entry(slot, Ballot(1, 1), b"v")]))
    durable.sync()
    assert durable.syncs == 1
    durable.close()
    _, state = DurableAcceptor.open(tmp_path)
    assert sorted(state.accepted) == list(range(50))


def _segment(path: Path) -> Path:
    (segment,) = sorted(path.glob("wal-*.log"))
    return segment


def test_a_torn_tail_recovers_a_prefix(tmp_path: Path) -> None:
    durable, _ = DurableAcceptor.open(tmp_path)
    durable.write(Persist(promised=Ballot(1, 1), accepted=[Entry(0, Ballot(1, 1), b"x")]))
    durable.sync()
    size = _segment(tmp_path).stat().st_size
    durable.write(Persist(promised=Ballot(2, 2), accepted=[Entry(1, Ballot(2, 2), b"y" * 100)]))
    durable.sync()
    durable.close()
    segment = _segment(tmp_path)
    data = segment.read_bytes()
    segment.write_bytes(data[: size + (len(data) - size) // 2 + 20])  # cut inside the batch

    again, state = DurableAcceptor.open(tmp_path)
    again.close()
    assert state.report is not None and state.report.torn_tail
    assert state.accepted[0] == Entry(0, Ballot(1, 1), b"x")
    assert 1 not in state.accepted
    # The first record of the second batch (the promise) may or may not have survived.
    assert state.promised in (Ballot(1, 1), Ballot(2, 2))


def test_corruption_refuses_to_vote(tmp_path: Path) -> None:
    durable, _ = DurableAcceptor.open(tmp_path)
    durable.write(Persist(promised=Ballot(1, 1)))
    durable.sync()
    durable.write(Persist(promised=Ballot(2, 1)))
    durable.sync()
    durable.close()
    segment = _segment(tmp_path)
    data = bytearray(segment.read_bytes())
    data[30] ^= 0xFF  # inside the first record, an intact one follows
    segment.write_bytes(bytes(data))
    with pytest.raises(AcceptorStateLost, match="refusing to vote"):
        DurableAcceptor.open(tmp_path)
    # The directory lock was released: the failure left nothing open.
    with pytest.raises(AcceptorStateLost):
        DurableAcceptor.open(tmp_path)


def test_a_record_of_unknown_type_is_an_error(tmp_path: Path) -> None:
    wal, _ = WAL.open(tmp_path)
    wal.append_and_sync([(99, b"\x01")])
    wal.close()
    with pytest.raises(DurableStateError, match="unknown type 99"):
        DurableAcceptor.open(tmp_path)


def test_checkpoint_then_truncate_keeps_the_state(tmp_path: Path) -> None:
    durable, _ = DurableAcceptor.open(tmp_path, segment_bytes=256)
    for slot in range(40):
        durable.write(Persist(promised=Ballot(1, 1), accepted=[Entry(slot, Ballot(1, 1), b"v")]))
        durable.sync()
    assert durable.segments > 3
    # A snapshot covers slots < 30: the checkpoint keeps the rest.
    first = durable.checkpoint(
        Ballot(2, 3), [Entry(s, Ballot(1, 1), b"v") for s in range(30, 40)], chosen=35
    )
    durable.sync()
    assert durable.truncate_before(first) > 0
    assert durable.segments <= 3
    durable.close()
    again, state = DurableAcceptor.open(tmp_path, segment_bytes=256)
    again.close()
    assert state.promised == Ballot(2, 3)
    assert set(range(30, 40)) <= set(state.accepted)
    assert state.chosen == 35


def test_a_huge_persist_is_split_into_records_under_the_limit(tmp_path: Path) -> None:
    from pyxos.storage.wal import MAX_PAYLOAD_BYTES

    big = b"x" * (MAX_PAYLOAD_BYTES // 3)
    durable, _ = DurableAcceptor.open(tmp_path)
    durable.write(Persist(accepted=[Entry(s, Ballot(1, 1), big) for s in range(5)]))
    durable.sync()
    durable.close()
    _, state = DurableAcceptor.open(tmp_path)
    assert sorted(state.accepted) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="exceeds the WAL record limit"):
        durable.write(Persist(accepted=[Entry(0, Ballot(1, 1), big * 4)]))


def test_every_persist_field_reaches_the_log(tmp_path: Path) -> None:
    """A non-empty Persist must never write nothing (a new field would be lost)."""
    fields = set(Persist.__struct_fields__)
    assert fields <= {"promised", "accepted", "chosen", "rebuilt", "fences"}, fields
    durable, _ = DurableAcceptor.open(tmp_path)
    persist = Persist()
    persist.rebuilt = 7
    persist.fences = [Fence(2, 9), Fence(3, 4, Ballot(1, 3))]
    durable.write(persist)
    durable.sync()
    durable.close()
    _, state = DurableAcceptor.open(tmp_path)
    assert state.rebuilt == 7
    assert state.fences == {2: FenceState(up={9}), 3: FenceState(Ballot(1, 3))}


def test_open_for_rebuild_quarantines_the_log_and_remembers_it(tmp_path: Path) -> None:
    durable, _ = DurableAcceptor.open(tmp_path)
    durable.write(Persist(promised=Ballot(5, 1), accepted=[Entry(0, Ballot(5, 1), b"x")]))
    durable.sync()
    durable.close()
    old = {p.name for p in tmp_path.glob("wal-*.log")}

    durable, state = DurableAcceptor.open_for_rebuild(tmp_path)
    assert state.needs_rebuild
    assert {p.name for p in (tmp_path / "quarantine-1").iterdir()} == old
    durable.close()

    # Across a restart the node still knows it must rebuild...
    durable, state = DurableAcceptor.open(tmp_path)
    assert state.needs_rebuild
    assert state.promised == ZERO and state.accepted == {}
    # ...until a finished rebuild is recorded.
    durable.wal.append_and_sync([(REBUILT, b"\x07")])
    durable.close()
    _, state = DurableAcceptor.open(tmp_path)
    assert not state.needs_rebuild
    assert state.rebuilt == 7


def test_open_for_bootstrap_is_remembered_until_a_bootstrap_or_rebuild_ends(
    tmp_path: Path,
) -> None:
    durable, state = DurableAcceptor.open_for_bootstrap(tmp_path)
    assert state.bootstrapping and not state.needs_rebuild
    durable.close()
    with pytest.raises(DurableStateError, match="already holds"):
        DurableAcceptor.open_for_bootstrap(tmp_path)
    durable, state = DurableAcceptor.open(tmp_path)
    assert state.bootstrapping, "a restart keeps asking the peers before it votes"
    durable.write(Persist(rebuilt=0))
    durable.sync()
    durable.close()
    _, state = DurableAcceptor.open(tmp_path)
    assert not state.bootstrapping and not state.needs_rebuild
