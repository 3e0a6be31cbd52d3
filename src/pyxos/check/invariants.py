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

With membership changes (``alpha`` given) the acceptors of a slot are the voters of
the configuration that governs it (``core/membership.py``: the one chosen at least
``alpha`` slots earlier). The monitor follows the configurations through the committed
log, as the replicas do, and counts a ballot's votes at a slot only among that slot's
voters (a learner's or a removed node's Accepted counts for nothing). It also checks,
for every slot the first time any replica commits it, that some ballot proposed that
value there and a phase-2 quorum of the governing configuration's voters accepted it
(``governing-quorum``): a replica that learned a value no quorum of the right
configuration chose has counted the wrong votes, even if no second value was chosen.

Agreement on the log is not yet agreement on the state: a state machine that leaves
part of its state out of its snapshot (or is not deterministic) makes replicas that
applied the same slots hold different states and answer the same slot differently.
The :class:`DivergenceMonitor` compares what replicas report after each applied slot
(a digest of the whole state, and one of the results the slot produced) and, at the
end of a run, that every live replica reached the same slot with the same state.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable

from pyxos.core.ballot import Ballot
from pyxos.core.membership import Membership, founding_configuration, is_config_entry
from pyxos.core.messages import Accept, Accepted, Entry, Message
from pyxos.core.quorum import QuorumSystem

__all__ = ["ChosenMonitor", "DivergenceMonitor", "SafetyMonitor", "Violation"]


class Violation(Exception):
    """A safety or liveness property failed; ``check`` names which."""

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(f"{check}: {detail}")
        self.check = check
        self.detail = detail

    @classmethod
    def from_exception(cls, e: BaseException, now: float) -> Violation:
        """An ``exception`` violation: ``e`` was raised inside a run at time ``now``
        (a node tripped an assertion, say); the detail names the innermost frames."""
        frames = traceback.extract_tb(e.__traceback__)[-3:]
        where = " <- ".join(
            f"{f.filename.rsplit('/src/', 1)[-1]}:{f.lineno} in {f.name}" for f in reversed(frames)
        )
        return cls("exception", f"{type(e).__name__}: {e} (raised at {now:.6f}s; at {where})")


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

    def __init__(self, quorum: QuorumSystem, *, alpha: int | None = None) -> None:
        self.quorum = quorum
        self.membership = (
            Membership(founding_configuration(quorum, alpha)) if alpha is not None else None
        )
        """The configuration timeline of the committed log (None: ``quorum`` for all)."""
        self.log: dict[int, bytes] = {}
        """slot -> the value committed there (with membership only)."""
        self.prefix = 0
        """Every slot below is in ``log`` and fed to the timeline."""
        self.deferred: set[tuple[int, Ballot]] = set()
        """Keys whose slot's configuration is not known yet (checked once it is)."""
        self.ballots_at: dict[int, list[Ballot]] = {}
        """slot -> ballots proposed there (with membership only)."""
        self.governed = 0
        """Committed slots checked against their governing configuration."""
        self.ungoverned = 0
        """Committed slots whose configuration was not known yet (expected: none)."""
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
                if known is value and self.membership is not None:
                    self.ballots_at.setdefault(key[0], []).append(msg.ballot)
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

    def _governing(self, slot: int) -> QuorumSystem | None:
        """The configuration governing ``slot``, or None if not known yet."""
        m = self.membership
        if m is None:
            return self.quorum
        if slot - m.alpha >= self.prefix:
            return None
        return m.at(slot)

    def committed(self, node_id: int, entries: list[Entry]) -> None:
        """A replica committed ``entries`` (a ``Simulator.observers`` callback): follow
        the configurations, and check each slot's first commit against the
        configuration that governs it."""
        m = self.membership
        if m is None:
            return
        for entry in entries:
            if entry.slot in self.log:
                continue
            self.log[entry.slot] = entry.value
            advanced = False
            while self.prefix in self.log:
                value = self.log[self.prefix]
                if is_config_entry(value):
                    m.chosen(self.prefix, value)
                self.prefix += 1
                advanced = True
            self._check_governed(node_id, entry.slot, entry.value)
            if advanced and self.deferred:
                ready = [k for k in self.deferred if k[0] - m.alpha < self.prefix]
                for key in ready:
                    self.deferred.discard(key)
                    self._check(key)

    def _check_governed(self, node_id: int, slot: int, value: bytes) -> None:
        config = self._governing(slot)
        if config is None:
            # A commit ahead of the committed log: not expected (a replica commits a
            # slot only once every slot below is committed or in its snapshot).
            self.ungoverned += 1
            return
        self.governed += 1
        for ballot in self.ballots_at.get(slot, ()):
            key = (slot, ballot)
            if self.proposed.get(key) == value and config.is_phase2_quorum(self.votes.get(key, ())):
                return
        votes = {
            str(b): sorted(self.votes.get((slot, b), ()))
            for b in self.ballots_at.get(slot, ())
            if self.proposed.get((slot, b)) == value
        }
        raise Violation(
            "governing-quorum",
            f"node {node_id} committed {value[:40]!r} at slot {slot}, but no ballot had it "
            f"accepted by a phase-2 quorum of the configuration governing that slot "
            f"({config!r}); votes per ballot: {votes}",
        )

    def _check(self, key: tuple[int, Ballot]) -> None:
        value = self.proposed.get(key)
        if value is None:
            return
        quorum = self._governing(key[0])
        if quorum is None:
            self.deferred.add(key)
            return
        if not quorum.is_phase2_quorum(self.votes.get(key, ())):
            return
        slot, ballot = key
        first = self.chosen.setdefault(slot, (ballot, value))
        if first[1] != value:
            raise Violation(
                "agreement",
                f"slot {slot}: {first[1]!r} was chosen in ballot {first[0]} and "
                f"{value!r} in ballot {ballot}",
            )


class DivergenceMonitor:
    """Replicas that applied the same slots hold the same state and gave the same results.

    ``observe`` takes the audit of a replica (``ServiceNode.audit_with``): after it
    applied every slot below ``applied_slot``, its state digest, and the digest of the
    results of slot ``applied_slot - 1`` (None when the state came from a snapshot).
    The first report per slot is the reference; any later different one raises.
    """

    def __init__(self) -> None:
        self.states: dict[int, tuple[int, int]] = {}
        """applied_slot -> (first node to report it, its state digest)."""
        self.results: dict[int, tuple[int, int]] = {}
        """slot -> (first node to apply it, the digest of its results)."""
        self.reports = 0

    def observe(
        self, node_id: int, applied_slot: int, state_digest: int, results_digest: int | None
    ) -> None:
        """Record one audit report; raise :class:`Violation` on a divergence."""
        self.reports += 1
        seen = self.states.setdefault(applied_slot, (node_id, state_digest))
        if seen[1] != state_digest:
            how = (
                "after applying" if results_digest is not None else "after restoring a snapshot of"
            )
            raise Violation(
                "divergence",
                f"state after slot {applied_slot - 1}: node {seen[0]} has digest "
                f"{seen[1]:016x} but node {node_id}, {how} slots < {applied_slot}, has "
                f"{state_digest:016x}",
            )
        if results_digest is None:
            return
        slot = applied_slot - 1
        first = self.results.setdefault(slot, (node_id, results_digest))
        if first[1] != results_digest:
            raise Violation(
                "divergence",
                f"results of slot {slot}: node {first[0]} produced digest {first[1]:016x} "
                f"but node {node_id} {results_digest:016x}",
            )

    def check_converged(self, replicas: dict[int, tuple[int, int]], target: int) -> None:
        """Every live replica (``node -> (applied_slot, state digest)``) applied every
        slot below ``target`` and holds the same state; raise :class:`Violation` if not."""
        behind = {n: a for n, (a, _) in replicas.items() if a != target}
        if behind:
            raise Violation(
                "convergence",
                f"live replicas did not all apply the {target} chosen slots: applied "
                + ", ".join(f"node {n}: {a}" for n, a in sorted(behind.items())),
            )
        digests = {d for _, d in replicas.values()}
        if len(digests) > 1:
            raise Violation(
                "convergence",
                f"live replicas applied the same {target} slots but hold different states: "
                + ", ".join(f"node {n}: {d:016x}" for n, (_, d) in sorted(replicas.items())),
            )
