"""The Multi-Paxos scope: replicas, a register on top, every interleaving.

Theory of operation
-------------------
``nodes`` :class:`~pyxos.core.replica.Replica` s start at time 0 as followers. The
first ``proposers`` of them have timers (a timeout runs pre-vote and the election, or,
at a leader, the heartbeat that resends Accepts and carries the commit point); the
others only answer. The clients' register sits on the log: a ``propose`` action at the
leader writes a fresh value (the slot value is the value itself), a ``read`` action at
the leader asks for a linearizable read (read-index; leases are off, see
``engine``), served from the register as that node applied it. A write returns when
the node it was proposed at applies it; a read when the replica releases it; a read
refused because leadership was lost failed and constrains nothing. The history is
checked for linearizability whenever an operation returns.

The service layer's part in a rebuild is played here as ``ServiceNode`` plays it:
once the replica says ``rebuild_caught_up``, a snapshot of the register at its first
unchosen slot is made durable, the replica compacts below it and ``finish_rebuild``
runs. A restart restores the register from the durable snapshot, if any, and skips
the replica past it, as ``service_node_factory`` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pyxos.check.history import Operation
from pyxos.check.invariants import Violation
from pyxos.check.linearizability import check_history
from pyxos.core.messages import Entry
from pyxos.core.replica import NOOP, Replica, ReplicaConfig, Role
from pyxos.model.engine import Action, Budget, Model, Op, World
from pyxos.sim.mutants import REPLICA_MUTANTS
from pyxos.storage.memory import MemoryStorage

__all__ = ["ReplicaModel"]

MODEL_CONFIG = ReplicaConfig(lease=0, window=4)
"""Leases off (timing is out of the model's scope); a small window."""


class ReplicaModel(Model):
    """Multi-Paxos over ``nodes`` replicas, ``proposers`` of which may run for leader."""

    scope = "replica"
    noop = NOOP

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
        config: ReplicaConfig = MODEL_CONFIG,
    ) -> None:
        super().__init__(
            nodes,
            proposers,
            budget or Budget(proposals=2),
            symmetry=symmetry,
            network=network,
            rebuild_checks=rebuild_checks,
            q1=q1,
            q2=q2,
            wipe_nodes=wipe_nodes,
        )
        if mutant is not None and mutant not in REPLICA_MUTANTS:
            raise ValueError(
                f"unknown replica mutant {mutant!r}: choose from {sorted(REPLICA_MUTANTS)}"
            )
        self.mutant = mutant
        self.variant: type[Replica] = REPLICA_MUTANTS[mutant] if mutant else Replica
        self.config = config
        self._shared[id(config)] = config

    def params(self) -> dict[str, Any]:
        """The scope's parameters, the mutant included."""
        return {**super().params(), "mutant": self.mutant}

    def make_node(self, node_id: int, storage: MemoryStorage, now: float, first: bool) -> Any:
        """A replica from its durable storage, as ``service_node_factory`` builds it."""
        replica = self.variant(
            node_id,
            self.quorum,
            self.rng,
            config=self.config,
            promised=storage.promised,
            accepted=storage.accepted.values(),
            now=now,
            rebuilding=storage.needs_rebuild,
            rebuilt_from=storage.rebuilt_from,
            fences=storage.fences,
        )
        if storage.snapshot is not None:
            slot = storage.snapshot[0]
            replica.skip_to(slot)
            replica.compact(slot)
        return replica

    def restore(self, w: World, node_id: int) -> None:
        """The register comes back from the durable snapshot (or starts empty)."""
        proc = w.procs[node_id]
        snap = proc.storage.snapshot
        proc.register = snap[1] if snap is not None else b""

    def client_actions(self, w: World) -> Iterator[Action]:
        """Write a fresh value or read, at a node that believes it leads."""
        for i in self.ids:
            if w.procs[i].node.role is Role.LEADER:
                if w.left["proposals"] > 0:
                    yield ("propose", i)
                if w.left["reads"] > 0:
                    yield ("read", i)

    def client_step(self, w: World, a: Action) -> None:
        """Start a write or a read at the leader ``a[1]``."""
        kind, node_id = a
        node = self.own(w, node_id).node
        if kind == "propose":
            w.left["proposals"] -= 1
            value = f"w{len(w.values) + 1}".encode()
            w.values.append(value)
            w.ops.append(Op("write", value, node_id, w.clock))
            w.clock += 1
            node.tick(node.now)
            if not node.propose(value):
                raise ValueError(f"node {node_id} refused a proposal")
        elif kind == "read":
            w.left["reads"] -= 1
            w.ops.append(Op("read", b"", node_id, w.clock))
            w.clock += 1
            node.tick(node.now)
            if not node.read(len(w.ops) - 1):
                raise ValueError(f"node {node_id} refused a read")
        else:
            raise ValueError(f"unknown action {a!r}")
        self.drive(w, node_id)

    def on_committed(self, w: World, node_id: int, entries: list[Entry]) -> None:
        """Apply to the node's register; a write returns when its node applied it."""
        proc = w.procs[node_id]
        returned = False
        for entry in entries:
            if entry.value != NOOP:
                proc.register = entry.value
            for op in w.ops:
                if (
                    op.kind == "write"
                    and op.ret is None
                    and op.node == node_id
                    and op.value == entry.value
                ):
                    op.ret = w.clock
                    w.clock += 1
                    returned = True
        if returned:
            _check_register(w)

    def on_reads(self, w: World, node_id: int, reads: list[tuple[object, bool]]) -> None:
        """A released read returns the node's register; a refused one failed."""
        returned = False
        for token, ok in reads:
            assert isinstance(token, int)
            op = w.ops[token]
            if ok:
                op.ret = w.clock
                w.clock += 1
                op.output = w.procs[node_id].register
                returned = True
            else:
                op.failed = True
        if returned:
            _check_register(w)

    def after_drive(self, w: World, node_id: int) -> bool:
        """The service layer's part of a rebuild (see the module docstring)."""
        proc = w.procs[node_id]
        replica = proc.node
        if not (replica.rebuilding and replica.rebuild_caught_up):
            return False
        slot = replica.first_unchosen
        proc.storage.save_snapshot(slot, proc.register)
        proc.storage.compact(slot)
        replica.compact(slot)
        replica.finish_rebuild(slot)
        if not replica.rebuilding:
            self.check_rebuilt(w, node_id)
        return True


def _check_register(w: World) -> None:
    history = []
    for n, op in enumerate(w.ops, 1):
        if op.failed:
            continue
        if op.kind == "write":
            history.append(
                Operation(
                    client=n,
                    op="put",
                    key="r",
                    value=op.value.decode(),
                    call=op.call,
                    return_=op.ret,
                    ok=None if op.ret is None else True,
                )
            )
        elif op.ret is not None:
            assert op.output is not None
            history.append(
                Operation(
                    client=n,
                    op="get",
                    key="r",
                    call=op.call,
                    return_=op.ret,
                    output=op.output.decode() or None,
                    ok=True,
                )
            )
    verdict = check_history(history)
    if not verdict.ok:
        raise Violation("linearizability", verdict.describe())
