"""Quorum systems: majorities and flexible quorums."""

import pytest

from pyxos.core.quorum import FlexibleQuorum, Majority


def test_majority_needs_more_than_half() -> None:
    q = Majority([1, 2, 3, 4, 5])
    assert not q.is_phase1_quorum({1, 2})
    assert q.is_phase1_quorum({1, 2, 3})
    assert q.is_phase2_quorum({3, 4, 5})


def test_non_members_do_not_count() -> None:
    q = Majority([1, 2, 3])
    assert not q.is_phase2_quorum({1, 7, 8})


def test_flexible_quorums_must_intersect() -> None:
    with pytest.raises(ValueError, match="intersect"):
        FlexibleQuorum([1, 2, 3, 4], 2, 2)
    q = FlexibleQuorum([1, 2, 3, 4], 3, 2)
    assert q.is_phase2_quorum({1, 2}) and not q.is_phase1_quorum({1, 2})


def test_invalid_members_are_refused() -> None:
    with pytest.raises(ValueError):
        Majority([])
    with pytest.raises(ValueError):
        Majority([0, 1])
