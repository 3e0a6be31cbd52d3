"""Any application under the nemesis: ``pyxos sim app``, one seed, one run, every
property checked.

Theory of operation
-------------------
``run_app(seed, app, ...)`` is :func:`pyxos.sim.service.run_service` (the same
replicas, faults and checks as ``pyxos sim kv``: agreement, validity, per-slot
divergence of state and results, leases, liveness, and convergence down to identical
``snapshot()`` bytes) with any application (docs/architecture.md, *The application
contract*) in place of the KV store, and :class:`AppClient` s whose operations come
from the application's *workload* (``pyxos.sim.workload``). Each client records its
operations as application operations of the history format (docs/architecture.md,
"Histories": ``op``, ``input``, ``output``), and the history is judged by the generic
linearizability checker (``pyxos.check.generic``) against the application's model:
``pyxos check --model ...`` reads the same history (``--history``).

Validity here is exact: every command of every chosen batch is a ``(client, seq,
command bytes)`` a client really sent.

Mutants (:data:`APP_MUTANTS`): every replica, WAL and replication-layer mutant of
``pyxos sim kv`` applies to any application, plus two of the application's own:

- ``wall-clock``: the application stamps its state with the replica's clock on every
  command (``self.updated = time.time()``). Each replica's clock is its own (here: a
  fixed offset per replica process, so a seed replays), its answers stay right, and
  only the divergence check can see it: the state digests of two replicas differ after
  the same slot.
- ``set-order``: the application keeps the distinct commands it applied in a ``set`` of
  ``str`` and, as part of its state, the one the set yields first. Every replica here
  shares one process and so one hash seed, and iterates the set alike; only the
  cross-process replay (``pyxos.sim.determinism``, ``--hash-seeds``) sees that a
  process with another hash seed reaches another state after the same slot.
- ``no-fence``: a lock (``--app lock``) that grants every holder the same token and
  checks only the owner on release and renew: a lock without fencing tokens, caught by
  the lock model's linearizability check.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import Any

import msgspec

from pyxos.check.generic import check_model
from pyxos.check.history import AppOperation
from pyxos.check.invariants import Violation
from pyxos.check.models import Model, ModelOp
from pyxos.core.messages import ClientReply
from pyxos.core.replica import Replica, ReplicaConfig
from pyxos.sim.determinism import DEFAULT_HASH_SEEDS, Recipe, ReplayCheck, replay_hash_seeds
from pyxos.sim.mutants import (
    APP_MUTANTS,
    LAYER_MUTANTS,
    REPLICA_MUTANTS,
    WAL_MUTANTS,
    NoFenceLock,
    SetOrderApp,
    WallClockApp,
)
from pyxos.sim.service import (
    ReplicaFactory,
    RunOptions,
    ServiceClient,
    ServiceResult,
    StoreFactory,
    run_service,
)
from pyxos.sim.workload import SimApp, SimOp, Workload, WorkloadClient, resolve_app
from pyxos.sim.world import Simulator
from pyxos.statemachine.replicated import decode_batch
from pyxos.statemachine.service import SNAPSHOT_CHUNK
from pyxos.storage.wal import WAL

__all__ = [
    "ALL_APP_MUTANTS",
    "LINEARIZABILITY_TIMEOUT",
    "AppClient",
    "AppResult",
    "app_replay_command",
    "app_variant",
    "replay_store_factory",
    "run_app",
]

ALL_APP_MUTANTS = sorted(
    [*REPLICA_MUTANTS, *LAYER_MUTANTS, *WAL_MUTANTS, *APP_MUTANTS, "early-ack"]
)
"""Every name ``run_app(mutant=...)`` and ``pyxos sim app --mutant`` take."""

DEFAULT_OPS = 40
DEFAULT_SNAPSHOT_EVERY = 25
LINEARIZABILITY_TIMEOUT = 120.0
"""Seconds (wall clock) the history check of one run may take; a search that runs
longer is reported as a violation (``linearizability``, unknown), never passed."""

AppResult = ServiceResult[AppOperation]
"""What one seed of an application's simulation did."""


def app_replay_command(
    seed: int,
    app: str,
    model: str | None,
    workload: str | None,
    nodes: int,
    clients: int,
    faults: frozenset[str],
    mutant: str | None,
    *,
    ops: int = DEFAULT_OPS,
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
    hash_seeds: int = DEFAULT_HASH_SEEDS,
    snapshot_chunk: int = SNAPSHOT_CHUNK,
) -> str:
    """The one command that replays this seed, every option that shapes it spelled
    out (defaults included)."""
    kinds = ",".join(sorted(faults)) or "none"
    cmd = f"pyxos sim app --app {app}"
    if model is not None:
        cmd += f" --model {model}"
    if workload is not None:
        cmd += f" --workload {workload}"
    cmd += (
        f" --seed {seed} --nodes {nodes} --clients {clients} --ops {ops} "
        f"--snapshot-every {snapshot_every} --snapshot-chunk {snapshot_chunk} "
        f"--hash-seeds {hash_seeds} --faults {kinds}"
    )
    if mutant:
        cmd += f" --mutant {mutant}"
    return cmd + " --trace"


class AppClient(ServiceClient[AppOperation]):
    """A closed-loop client of any application: its workload picks each operation."""

    def __init__(
        self,
        client_id: int,
        servers: list[int],
        rng: random.Random,
        *,
        workload: Workload,
        ops: int,
        now: float,
        record: Callable[[AppOperation], None],
        issued: set[tuple[int, int, bytes]],
    ) -> None:
        self.workload = workload
        self.context = WorkloadClient(client_id)
        self.issued = issued
        self.current: SimOp | None = None
        super().__init__(client_id, servers, rng, ops=ops, now=now, record=record)

    def _begin(self) -> None:
        op = self.workload(self.rng, self.context)
        self.current = op
        self.encoded = op.command
        self.query = op.query
        if not op.query:
            self.issued.add((self.node_id, self.seq, op.command))

    def _answered(self, reply: ClientReply) -> None:
        cur = self.current
        assert cur is not None
        if reply.error is not None:
            # Refused (validate) or apply raised: the command had no effect.
            self._finish(ok=False, output=None, failed=True)
            return
        self._finish(ok=True, output=cur.output(reply.result))

    def _operation(
        self, *, ok: bool | None, output: Any, unknown: bool, failed: bool
    ) -> AppOperation:
        cur = self.current
        assert cur is not None
        answered = not unknown and not failed
        return AppOperation(
            client=self.node_id,
            op=cur.op,
            input=cur.input,
            output=output if answered else msgspec.UNSET,
            call=int(self.call_time * 1e9),
            return_=None if unknown else int(self.now * 1e9),
            ok=None if unknown else (False if failed else ok),
        )


class _AppService:
    """An application as a simulated service: workload clients, exact validity, and
    the generic linearizability check against its model."""

    def __init__(self, model: Model, workload: Workload, ops: int) -> None:
        self.model = model
        self.workload = workload
        self.ops = ops
        self.issued: set[tuple[int, int, bytes]] = set()

    def client(
        self,
        client_id: int,
        servers: list[int],
        rng: random.Random,
        now: float,
        record: Callable[[AppOperation], None],
    ) -> AppClient:
        return AppClient(
            client_id,
            servers,
            rng,
            workload=self.workload,
            ops=self.ops,
            now=now,
            record=record,
            issued=self.issued,
        )

    def valid(self, value: bytes) -> bool:
        if not value:
            return True
        try:
            entries = decode_batch(value)
        except msgspec.DecodeError:
            return False
        return all(entry in self.issued for entry in entries)

    def check_history(self, history: list[AppOperation]) -> None:
        model = self.model
        ops: list[ModelOp] = []
        for op in history:
            try:
                ops.append(ModelOp(op, *model.parse(op)))
            except ValueError as e:
                raise Violation(
                    "linearizability",
                    f"the {model.name} model cannot read an operation of client {op.client} "
                    f"called at {op.call} ns: {e}",
                ) from None
        verdict = check_model(model, ops, timeout_s=LINEARIZABILITY_TIMEOUT)
        if not verdict.ok:
            raise Violation("linearizability", verdict.describe(model, timing=False))

    def failed(self, op: AppOperation) -> bool:
        return op.ok is False


def _store_factory(app: SimApp, mutant: str | None) -> StoreFactory:
    """One run's maker of a replica's application (a mutant's wraps the real one)."""
    if mutant in LAYER_MUTANTS:
        layer = LAYER_MUTANTS[mutant]
        return lambda: layer(app.factory())
    if mutant == "wall-clock":
        # Each replica process made in this run reads its own clock (a replay makes
        # the same processes in the same order, so it reads the same clocks).
        replica_number = itertools.count(1)
        factory = app.factory
        return lambda: WallClockApp(factory(), clock_offset=1000.0 * next(replica_number))
    if mutant == "set-order":
        inner = app.factory
        return lambda: SetOrderApp(inner())
    return app.factory


def replay_store_factory(
    app: str, model: str | None, workload: str | None, mutant: str | None
) -> StoreFactory:
    """The store factory of a run of ``app`` under ``mutant``, made from names alone:
    how the cross-process replay (``pyxos.sim.determinism``) rebuilds a run's
    application in a process of its own."""
    return _store_factory(app_variant(resolve_app(app, model, workload), mutant), mutant)


def app_variant(app: SimApp, mutant: str | None) -> SimApp:
    """``app`` as the mutant ``mutant`` runs it (itself for most mutants, which break
    something else); ``ValueError`` if the mutant does not apply to it."""
    if mutant is not None and mutant not in ALL_APP_MUTANTS:
        raise ValueError(f"unknown mutant {mutant!r}; choose from {', '.join(ALL_APP_MUTANTS)}")
    if mutant != "no-fence":
        return app
    if app.object_class is None or app.model.name != "lock":
        raise ValueError("mutant 'no-fence' is a lock's: run it with --app lock")
    return app.with_object_class(NoFenceLock)


def run_app(
    seed: int,
    app: str,
    *,
    model: str | None = None,
    workload: str | None = None,
    nodes: int = 3,
    clients: int = 4,
    faults: frozenset[str] = frozenset(),
    ops_per_client: int = DEFAULT_OPS,
    fault_until: float = 1.5,
    settle: float = 1.0,
    liveness_bound: float = 4.0,
    mutant: str | None = None,
    replica_factory: ReplicaFactory = Replica,
    config: ReplicaConfig | None = None,
    trace: bool = True,
    on_sim: Callable[[Simulator], None] | None = None,
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
    wal_class: type[WAL] = WAL,
    resolved: SimApp | None = None,
    hash_seeds: int = DEFAULT_HASH_SEEDS,
    snapshot_chunk: int = SNAPSHOT_CHUNK,
) -> AppResult:
    """Simulate one seed of the application ``app`` (a short name or
    ``module:Factory``, see :func:`~pyxos.sim.workload.resolve_app`) and check it.

    ``model`` and ``workload`` override the application's own; ``mutant`` names a
    deliberately broken variant (:data:`ALL_APP_MUTANTS`). ``resolved`` is ``app``
    already resolved (a sweep resolves it once). ``hash_seeds`` processes with other
    hash seeds replay the chosen log and must agree with the replicas
    (``pyxos.sim.determinism``; 0: not checked). ``ValueError`` for an application,
    model, workload or mutant that cannot be had (before anything runs).
    """
    sim_app = app_variant(resolved or resolve_app(app, model, workload), mutant)
    result = AppResult(seed, nodes, clients)
    result.replay = app_replay_command(
        seed,
        app,
        model,
        workload,
        nodes,
        clients,
        faults,
        mutant,
        ops=ops_per_client,
        snapshot_every=snapshot_every,
        hash_seeds=hash_seeds,
        snapshot_chunk=snapshot_chunk,
    )
    determinism = None
    if hash_seeds > 0:
        args = {"app": app, "model": model, "workload": workload, "mutant": mutant}
        recipe = Recipe("pyxos.sim.app:replay_store_factory", args)
        determinism = ReplayCheck(recipe, replay_hash_seeds(hash_seeds))
    options = RunOptions(
        nodes=nodes,
        clients=clients,
        faults=faults,
        fault_until=fault_until,
        settle=settle,
        liveness_bound=liveness_bound,
        replica_factory=REPLICA_MUTANTS.get(mutant or "", replica_factory),
        store_factory=_store_factory(sim_app, mutant),
        config=config,
        trace=trace,
        on_sim=on_sim,
        ack_before_sync=mutant == "early-ack",
        snapshot_every=snapshot_every,
        snapshot_chunk=snapshot_chunk,
        wal_class=WAL_MUTANTS.get(mutant or "", wal_class),
        determinism=determinism,
    )
    service = _AppService(sim_app.model, sim_app.workload, ops_per_client)
    return run_service(seed, service, result, options)
