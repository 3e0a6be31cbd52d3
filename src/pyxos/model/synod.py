"""The Basic Paxos scope: single-decree nodes, every interleaving.

Theory of operation
-------------------
``nodes`` :class:`~pyxos.core.synod.SynodNode` s (each proposer, acceptor and learner
for slot 0) start at time 0; the first ``proposers`` of them propose a fresh value
each at once, as the simulator's nodes do. From there the checker explores every
order of delivery, loss, duplication and crash within the budgets, every firing of a
proposer's timer (a retry with a higher ballot, or a Fetch when it has not learned),
and ``proposals`` further proposals of fresh values at any node (the simulator's late
proposals: every round after a choice must propose the chosen value). A restarted
node only accepts and learns until asked to propose again, as in the simulator.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pyxos.core.synod import SynodNode, SynodTiming
from pyxos.model.engine import Action, Budget, Model, World
from pyxos.sim.mutants import SYNOD_MUTANTS
from pyxos.storage.memory import MemoryStorage

__all__ = ["SynodModel"]


class SynodModel(Model):
    """Single-decree Paxos over ``nodes`` acceptors with ``proposers`` proposers."""

    scope = "synod"

    def __init__(
        self,
        nodes: int = 3,
        proposers: int = 2,
        budget: Budget | None = None,
        *,
        mutant: str | None = None,
        symmetry: bool = True,
        network: str = "duplicating",
        rebuild_checks: bool = True,
        q1: int | None = None,
        q2: int | None = None,
        wipe_nodes: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__(
            nodes,
            proposers,
            budget or Budget(proposals=0),
            symmetry=symmetry,
            network=network,
            rebuild_checks=rebuild_checks,
            q1=q1,
            q2=q2,
            wipe_nodes=wipe_nodes,
        )
        if mutant is not None and mutant not in SYNOD_MUTANTS:
            raise ValueError(
                f"unknown synod mutant {mutant!r}: choose from {sorted(SYNOD_MUTANTS)}"
            )
        self.mutant = mutant
        self.variant: type[SynodNode] = SYNOD_MUTANTS[mutant] if mutant else SynodNode
        self.timing = SynodTiming()
        self._shared[id(self.timing)] = self.timing
        self.first_values = {i: f"w{k}".encode() for k, i in enumerate(self.proposer_ids, 1)}

    def params(self) -> dict[str, Any]:
        """The scope's parameters, the mutant included."""
        return {**super().params(), "mutant": self.mutant}

    def initial(self) -> World:
        """Every node started; the proposers' first values are the first fresh values."""
        w = super().initial()
        w.values = list(self.first_values.values())
        return w

    def make_node(self, node_id: int, storage: MemoryStorage, now: float, first: bool) -> Any:
        """A synod node from its durable acceptor state."""
        return self.variant(
            node_id,
            self.quorum,
            self.rng,
            value=self.first_values.get(node_id) if first else None,
            start_at=now,
            promised=storage.promised,
            accepted=storage.accepted.values(),
            timing=self.timing,
        )

    def client_actions(self, w: World) -> Iterator[Action]:
        """A further proposal of a fresh value, at any node."""
        if w.left["proposals"] > 0:
            for i in self.ids:
                yield ("propose", i)

    def client_step(self, w: World, a: Action) -> None:
        """Propose a fresh value at the node (its round starts at once)."""
        kind, node_id = a
        if kind != "propose":
            raise ValueError(f"unknown action {a!r}")
        w.left["proposals"] -= 1
        value = f"w{len(w.values) + 1}".encode()
        w.values.append(value)
        node = self.own(w, node_id).node
        node.propose(value)
        node.tick(node.now)
        self.drive(w, node_id)
