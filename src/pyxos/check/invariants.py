"""Safety checks over what replicas commit: agreement and validity.

Theory of operation
-------------------
The simulator reports every committed entry of every node as it happens. The
:class:`SafetyMonitor` keeps, per slot, the first value any node committed and the
node that did; a later commit of a different value at that slot by any node is an
*agreement* violation. A committed value that was never proposed is a *validity*
violation (the set of proposed values is supplied by the harness). Each violation is
raised at once as :class:`Violation`, so a run stops at the first event that breaks a
property and its trace ends right there.

Learners latch on the first value they learn, so two conflicting choices can hide
behind them. The :class:`ChosenMonitor` is omniscient instead: it watches every Accept
and Accepted message the simulator carries, and decides for itself when a value is
*chosen* (a phase-2 quorum of acceptors accepted it in one ballot), which is the
definition of agreement in the papers. It also checks that a ballot never carries two
different values at one slot (a proposer that reuses a ballot after a crash).
"""

from __future__ import annotations

from collections.abc import Callable

from pyxos.core.ballot import Ballot
from pyxos.core.messages import Accept, Accepted, Entry, Message
from pyxos.core.quorum import QuorumSystem

__all__ = ["ChosenMonitor", "SafetyMonitor", "Violation"]


class Violation(Exception):
    """A safety or liveness property failed; ``check`` names which."""

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(f"{check}: {detail}")
        self.check = check
        self.detail = detail


class SafetyMonitor:
    """Agreement and validity of committed entries, per slot, across all nodes."""

    def __init__(self, is_valid: Callable[[bytes], bool] | None = None) -> None:
        self.first: dict[int, tuple[int, bytes]] = {}
        """slot -> (node that committed it first, value)."""
        self.is_valid = is_valid
        self.commits = 0

    def observe(self, node_id: int, entries: list[Entry]) -> None:
        """Record commits of ``node_id``; raise :class:`Violation` on a conflict."""
        for entry in entries:
            self.commits += 1
            seen = self.first.get(entry.slot)
            if seen is None:
                if self.is_valid is not None and not self.is_valid(entry.value):
                    raise Violation(
                        "validity",
                        f"node {node_id} committed {entry.value!r} at slot {entry.slot}, "
                        "which no client proposed",
                    )
                self.first[entry.slot] = (node_id, entry.value)
            elif seen[1] != entry.value:
                raise Violation(
                    "agreement",
                    f"slot {entry.slot}: node {seen[0]} committed {seen[1]!r} but node "
                    f"{node_id} committed {entry.value!r}",
                )


class ChosenMonitor:
    """Agreement on what is *chosen* (by acceptors), not only on what is learned."""

    def __init__(self, quorum: QuorumSystem) -> None:
        self.quorum = quorum
        self.proposed: dict[tuple[int, Ballot], bytes] = {}
        """(slot, ballot) -> the value proposed in that ballot at that slot."""
        self.votes: dict[tuple[int, Ballot], set[int]] = {}
        """(slot, ballot) -> acceptors that reported accepting it."""
        self.chosen: dict[int, tuple[Ballot, bytes]] = {}
        """slot -> (first ballot seen chosen, value)."""

    def observe(self, src: int, msg: Message) -> None:
        """Inspect a message as it is sent; raise :class:`Violation` on a conflict."""
        if isinstance(msg, Accept):
            for i, value in enumerate(msg.values):
                key = (msg.slot + i, msg.ballot)
                known = self.proposed.setdefault(key, value)
                if known != value:
                    raise Violation(
                        "ballot-uniqueness",
                        f"ballot {msg.ballot} proposed {known!r} and {value!r} at slot {key[0]}",
                    )
                self._check(key)
        elif isinstance(msg, Accepted):
            for i in range(msg.count):
                key = (msg.slot + i, msg.ballot)
                self.votes.setdefault(key, set()).add(msg.src)
                self._check(key)

    def _check(self, key: tuple[int, Ballot]) -> None:
        value = self.proposed.get(key)
        if value is None or not self.quorum.is_phase2_quorum(self.votes.get(key, ())):
            return
        slot, ballot = key
        first = self.chosen.setdefault(slot, (ballot, value))
        if first[1] != value:
            raise Violation(
                "agreement",
                f"slot {slot}: {first[1]!r} was chosen in ballot {first[0]} and "
                f"{value!r} in ballot {ballot}",
            )
