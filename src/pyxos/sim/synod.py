"""Single-decree Paxos under the nemesis: one seed, one run, checked.

Theory of operation
-------------------
``run_synod(seed, ...)`` builds ``nodes`` :class:`~pyxos.core.synod.SynodNode` s, each
proposing its own value at a random time early in the run (so proposers duel), turns
the requested faults on until ``fault_until``, then heals everything. The
:class:`~pyxos.check.invariants.SafetyMonitor` checks agreement and validity at every
learn; termination is checked at the end: every live node must have learned within
``termination_bound`` seconds of virtual time after the heal. An exception raised
inside the run (a node tripping an assertion) is an ``exception`` violation, with the
seed and replay command like any other. The result carries the
statistics for the summary table and, on a violation, the trace that led to it.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from pyxos.check.invariants import ChosenMonitor, SafetyMonitor, Violation
from pyxos.core.quorum import Majority
from pyxos.core.ready import Node
from pyxos.core.synod import SynodNode
from pyxos.sim.nemesis import Nemesis
from pyxos.sim.world import Simulator, TraceEvent, format_trace
from pyxos.storage.durable import NodeStorage

__all__ = ["SynodResult", "SynodVariant", "run_synod", "synod_replay_command"]

SynodVariant = Callable[..., SynodNode]
"""A constructor with SynodNode's signature (the real node, or a broken mutant)."""


@dataclass(slots=True)
class SynodResult:
    """What one seed of the synod simulation did."""

    seed: int
    nodes: int
    violation: Violation | None = None
    learned: dict[int, bytes] = field(default_factory=dict)
    rounds: int = 0
    """Rounds (ballots) started by all proposers before the first value was learned."""
    decided_at: float | None = None
    stats: dict[str, int] = field(default_factory=dict)
    trace: list[TraceEvent] = field(default_factory=list)

    def trace_text(self, limit: int | None = None) -> str:
        """The run's trace as readable lines."""
        return format_trace(self.trace, limit)


def synod_replay_command(seed: int, nodes: int, faults: frozenset[str], mutant: str | None) -> str:
    """The one command that replays this seed."""
    cmd = f"pyxos sim synod --seed {seed} --nodes {nodes} --faults {','.join(sorted(faults))}"
    if mutant:
        cmd += f" --mutant {mutant}"
    return cmd + " --trace"


def run_synod(
    seed: int,
    *,
    nodes: int = 3,
    faults: frozenset[str] = frozenset(),
    fault_until: float = 0.5,
    termination_bound: float = 3.0,
    variant: SynodVariant = SynodNode,
    repropose: int = 2,
    trace: bool = True,
    on_sim: Callable[[Simulator], None] | None = None,
) -> SynodResult:
    """Simulate one seed of single-decree Paxos and check it."""
    sim = Simulator(seed, trace=trace)
    if on_sim is not None:
        on_sim(sim)
    ids = list(range(1, nodes + 1))
    quorum = Majority(ids)
    proposed: set[bytes] = set()
    counter = [0]

    def fresh_value(node_id: int) -> bytes:
        # Every proposal carries a value of its own, so a ballot reused with another
        # value (a proposer that forgot its ballots) shows up as disagreement.
        counter[0] += 1
        value = f"v{node_id}.{counter[0]}-s{seed}".encode()
        proposed.add(value)
        return value

    starts = {i: sim.rng.uniform(0.0, 0.03) for i in ids}
    result = SynodResult(seed, nodes)
    monitor = SafetyMonitor(is_valid=lambda v: v in proposed)
    rounds_before_first = [0]

    def factory(node_id: int, storage: NodeStorage, rng: random.Random, now: float) -> Node:
        return variant(
            node_id,
            quorum,
            rng,
            # A restarted node only accepts and learns until asked to propose again.
            value=fresh_value(node_id) if now == 0.0 else None,
            start_at=starts[node_id],
            promised=storage.state.promised,
            accepted=storage.state.accepted.values(),
        )

    def observe(node_id: int, entries: list) -> None:  # type: ignore[type-arg]
        if result.decided_at is None:
            result.decided_at = sim.now
            rounds_before_first[0] = _rounds(sim, ids)
        monitor.observe(node_id, entries)

    try:
        for i in ids:
            sim.add_node(i, factory)
        sim.observers.append(observe)
        sim.send_observers.append(ChosenMonitor(quorum).observe)

        def _propose_fresh(node_id: int) -> None:
            _propose(sim, node_id, fresh_value(node_id))

        Nemesis(sim, faults, ids, fault_until, interval=(0.005, 0.04))
        # Late proposals, even at nodes that already learned, stress agreement: every
        # round after the choice must propose the chosen value.
        for i in ids:
            for _ in range(repropose):
                when = sim.rng.uniform(0.0, fault_until)
                sim.call_at(when, functools.partial(_propose_fresh, i))

        # Clients retry: at the heal, every node that has learned nothing proposes again,
        # so termination is owed even if every earlier proposer crashed.
        def retry_unlearned() -> None:
            for i in ids:
                node = sim.node(i)
                if node is not None and _learned(node) is None:
                    _propose(sim, i, fresh_value(i))

        sim.call_at(fault_until, retry_unlearned)

        def everyone_learned() -> bool:
            return sim.now >= fault_until and all(_learned(sim.node(i)) is not None for i in ids)

        sim.run(fault_until + termination_bound, stop=everyone_learned)
        missing = [i for i in sim.live_nodes() if _learned(sim.node(i)) is None]
        if missing:
            raise Violation(
                "termination",
                f"nodes {missing} learned nothing within {termination_bound}s after the "
                f"faults healed at {fault_until}s",
            )
    except Violation as v:
        result.violation = v
    except Exception as e:  # a node that raised is a verdict too, with its seed
        result.violation = Violation.from_exception(e, sim.now)
    for i in ids:
        learned = _learned(sim.node(i))
        if learned is not None:
            result.learned[i] = learned
    result.rounds = rounds_before_first[0]
    result.stats = dict(sim.stats)
    result.trace = sim.trace
    return result


def _propose(sim: Simulator, node_id: int, value: bytes) -> None:
    def go(node: Node) -> None:
        if isinstance(node, SynodNode):
            node.propose(value)

    sim.invoke(node_id, go)


def _learned(node: Node | None) -> bytes | None:
    return node.chosen if isinstance(node, SynodNode) else None


def _rounds(sim: Simulator, ids: list[int]) -> int:
    total = 0
    for i in ids:
        node = sim.node(i)
        if isinstance(node, SynodNode):
            total += node.rounds_started
    return total
