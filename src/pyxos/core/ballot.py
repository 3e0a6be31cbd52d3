"""Ballots: the totally ordered proposal numbers of Paxos.

Theory of operation
-------------------
A ballot is the pair ``(round, node)``. Ballots compare by round first and node id
second, so two proposers can never pick the same ballot as long as each proposes only
ballots carrying its own node id (node ids are >= 1). ``ZERO`` is below every ballot a
proposer can create, so "nothing promised yet" and "nothing accepted yet" are the real
ballot ``ZERO`` rather than ``None``: a ballot is never compared with ``None``.
"""

from __future__ import annotations

import msgspec

__all__ = ["ZERO", "Ballot"]


class Ballot(msgspec.Struct, frozen=True, order=True, array_like=True):
    """A proposal number ``(round, node)``, totally ordered.

    ``round`` grows when a proposer retries; ``node`` is the proposer's id and breaks
    ties, which makes every ballot unique to one proposer.
    """

    round: int
    node: int

    def next_for(self, node: int) -> Ballot:
        """The smallest ballot above ``self`` that ``node`` may propose."""
        return Ballot(self.round + 1, node)

    def __str__(self) -> str:
        return f"{self.round}.{self.node}"


ZERO = Ballot(0, 0)
"""The ballot below every real ballot: nothing promised, nothing accepted."""
