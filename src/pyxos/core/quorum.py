"""Quorum systems.

Theory of operation
-------------------
Paxos needs only that every phase-1 quorum intersects every phase-2 quorum (Howard,
Malkhi and Spiegelman, "Flexible Paxos"). Classic Paxos uses majorities for both.
Proposers and learners ask a :class:`QuorumSystem` whether a set of acceptors is a
quorum, and never count themselves, so a flexible system plugs in without touching
them.

What else rests on the intersection (docs/architecture.md, *Flexible quorums*): a
read-index round and a lease are confirmed by a *phase-2* quorum of acknowledgements,
which is safe because every phase-2 quorum meets every phase-1 quorum, so no other
leader can have completed (or, under a lease, can complete) phase 1 unseen; and a
rebuild gives up (``majority_lost``) when the nodes without state contain a quorum of
*either* phase. With ``q1 + q2 > n`` these hold for any sizes, not just majorities.
The price of a small ``q2`` is paid in availability: an election needs ``q1`` live
nodes, so the cluster survives only ``n - max(q1, q2)`` failures.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Protocol

__all__ = ["FlexibleQuorum", "Majority", "QuorumSystem", "quorum_sizes", "quorum_system"]


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


def quorum_sizes(n: int, q1: int | None = None, q2: int | None = None) -> tuple[int, int]:
    """The phase-1 and phase-2 quorum sizes for ``n`` acceptors: majorities when neither
    is given; a size left out is the smallest that still meets the other
    (``n - other + 1``). Raises ``ValueError`` on sizes outside ``1..n`` or that do not
    intersect (``q1 + q2 <= n``)."""
    if n < 1:
        raise ValueError("a quorum system needs at least one acceptor")
    for name, q in (("q1", q1), ("q2", q2)):
        if q is not None and not 1 <= q <= n:
            raise ValueError(f"{name}={q} must lie in 1..{n} (the number of acceptors)")
    if q1 is None and q2 is None:
        q1 = q2 = n // 2 + 1
    elif q1 is None:
        assert q2 is not None
        q1 = n - q2 + 1
    elif q2 is None:
        q2 = n - q1 + 1
    if q1 + q2 <= n:
        raise ValueError(
            f"q1 + q2 must exceed n={n} so every phase-1 quorum meets every phase-2 "
            f"quorum (q1={q1} q2={q2})"
        )
    return q1, q2


def quorum_system(
    members: Iterable[int], q1: int | None = None, q2: int | None = None
) -> FlexibleQuorum:
    """:class:`Majority` when neither size is given, else a :class:`FlexibleQuorum`
    with the sizes :func:`quorum_sizes` completes; ``ValueError`` if they are unsafe."""
    m = _members(members)
    if q1 is None and q2 is None:
        return Majority(m)
    a, b = quorum_sizes(len(m), q1, q2)
    return FlexibleQuorum(m, a, b)
