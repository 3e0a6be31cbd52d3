"""Quorum systems.

Theory of operation
-------------------
Paxos needs only that every phase-1 quorum intersects every phase-2 quorum (Howard,
Malkhi and Spiegelman, "Flexible Paxos"). Classic Paxos uses majorities for both.
Proposers and learners ask a :class:`QuorumSystem` whether a set of acceptors is a
quorum, and never count themselves, so a flexible system plugs in without touching
them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Protocol

__all__ = ["FlexibleQuorum", "Majority", "QuorumSystem"]


class QuorumSystem(Protocol):
    """Which sets of acceptors form phase-1 (prepare) and phase-2 (accept) quorums."""

    @property
    def members(self) -> tuple[int, ...]:
        """The acceptors, in ascending id order."""
        ...

    def is_phase1_quorum(self, acceptors: Collection[int]) -> bool:
        """True if ``acceptors`` (a set of members) is a phase-1 quorum."""
        ...

    def is_phase2_quorum(self, acceptors: Collection[int]) -> bool:
        """True if ``acceptors`` (a set of members) is a phase-2 quorum."""
        ...


def _members(members: Iterable[int]) -> tuple[int, ...]:
    ordered = tuple(sorted(set(members)))
    if not ordered:
        raise ValueError("a quorum system needs at least one acceptor")
    if ordered[0] < 1:
        raise ValueError("acceptor ids must be >= 1")
    return ordered


class FlexibleQuorum:
    """Counting quorums of sizes ``q1`` and ``q2`` with ``q1 + q2 > n``."""

    def __init__(self, members: Iterable[int], q1: int, q2: int) -> None:
        self._members = _members(members)
        n = len(self._members)
        if not (1 <= q1 <= n and 1 <= q2 <= n):
            raise ValueError(f"quorum sizes must lie in 1..{n}, got q1={q1} q2={q2}")
        if q1 + q2 <= n:
            raise ValueError(f"q1 + q2 must exceed n={n} so quorums intersect (q1={q1} q2={q2})")
        self.q1 = q1
        self.q2 = q2
        self._set = frozenset(self._members)

    @property
    def members(self) -> tuple[int, ...]:
        """The acceptors, in ascending id order."""
        return self._members

    def _count(self, acceptors: Collection[int]) -> int:
        return sum(1 for a in acceptors if a in self._set)

    def is_phase1_quorum(self, acceptors: Collection[int]) -> bool:
        """True if at least ``q1`` members are in ``acceptors``."""
        return self._count(acceptors) >= self.q1

    def is_phase2_quorum(self, acceptors: Collection[int]) -> bool:
        """True if at least ``q2`` members are in ``acceptors``."""
        return self._count(acceptors) >= self.q2

    def __repr__(self) -> str:
        return f"{type(self).__name__}(members={self._members}, q1={self.q1}, q2={self.q2})"


class Majority(FlexibleQuorum):
    """Classic Paxos: both phases need a strict majority of the acceptors."""

    def __init__(self, members: Iterable[int]) -> None:
        m = _members(members)
        q = len(m) // 2 + 1
        super().__init__(m, q, q)
