"""The replicated KV store under the nemesis: one seed, one run, every property checked.

Theory of operation
-------------------
``run_kv(seed, ...)`` is :func:`pyxos.sim.service.run_service` with the KV store as the
application and ``clients`` :class:`SimClient` s: each runs one operation at a time (get,
put, delete or cas on a few shared keys), sends it to the node it believes leads,
follows redirects, retries the same ``(client, seq)`` on a timeout, and after
``give_up`` seconds records the operation with an unknown outcome. Everything is
recorded in the history format of docs/architecture.md ("Histories"), with
virtual-time nanoseconds; the history is judged by the register checker
(``pyxos.check.linearizability``). ``pyxos.sim.app`` runs any other application the
same way.

Checked in every run (``pyxos.sim.service``):

- agreement per slot across replicas, and on what acceptors *chose* (omniscient);
- validity: every applied slot is a no-op or a batch of commands clients really sent;
- divergence: replicas that applied the same slots hold the same state (digest of
  the data and the session table) and produced the same results for every slot;
- linearizability of the client history (``pyxos.check.linearizability``), also when
  the run ends on its time limit: an operation still in flight then is recorded with
  an unknown outcome, so the history holds every call;
- leases: while a leader's lease runs by its own clock, the acceptors that can promise
  nobody else meet every phase-1 quorum, and no leader of a higher ballot exists
  (``pyxos.sim.leases``: the promise a lease read relies on, checked directly, since a
  stale read shows in a history only by luck);
- liveness: once the faults heal (plus a settling time for an election), every
  operation a live client calls completes, with no unknown outcome;
- convergence: at the end, every live replica applies every chosen slot and all hold
  the same state.

An exception raised anywhere in the run (a node tripping an assertion, say) is a
verdict too: an ``exception`` violation naming where it was raised, with the seed and
the replay command like any other. ``KVResult.replay`` is that command, with every
option the run depends on.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Literal, cast

import msgspec

from pyxos.check.history import Operation
from pyxos.check.invariants import Violation
from pyxos.check.linearizability import check_history
from pyxos.core.messages import ClientReply
from pyxos.core.quorum import QuorumSystem, quorum_sizes, quorum_system
from pyxos.core.replica import Replica, ReplicaConfig
from pyxos.sim.determinism import DEFAULT_HASH_SEEDS, Recipe, ReplayCheck, replay_hash_seeds
from pyxos.sim.mutants import QUORUM_MUTANTS, REPLICA_MUTANTS, STORE_MUTANTS, WAL_MUTANTS
from pyxos.sim.service import (
    CATCHUP_SNAPSHOT_SLOTS,
    CLIENT_BASE,
    ReplicaFactory,
    RunOptions,
    ServiceClient,
    ServiceResult,
    run_service,
    service_node_factory,
)
from pyxos.sim.world import Simulator
from pyxos.statemachine.kv import Command, KVStore, decode_batch, decode_result
from pyxos.statemachine.replicated import ReplicatedApp
from pyxos.statemachine.service import SNAPSHOT_CHUNK
from pyxos.storage.wal import WAL

__all__ = [
    "CLIENT_BASE",
    "KV_MUTANTS",
    "KVResult",
    "SimClient",
    "kv_replay_command",
    "replay_store_factory",
    "run_kv",
    "service_node_factory",
]

StoreFactory = Callable[[], KVStore | ReplicatedApp[KVStore]]
"""Makes a simulated node's application (the KV store) or its whole replicated
state (a mutant of the replication layer)."""

KV_MUTANTS = sorted([*REPLICA_MUTANTS, *STORE_MUTANTS, *WAL_MUTANTS, *QUORUM_MUTANTS, "early-ack"])
"""Every name ``run_kv(mutant=...)`` and ``pyxos sim kv --mutant`` take."""

DEFAULT_OPS = 40
DEFAULT_KEYS = 3
DEFAULT_SNAPSHOT_EVERY = 25
_command_encoder = msgspec.msgpack.Encoder()
OpName = Literal["get", "put", "cas", "delete"]

KVResult = ServiceResult[Operation]
"""What one seed of the KV simulation did."""


def kv_replay_command(
    seed: int,
    nodes: int,
    clients: int,
    faults: frozenset[str],
    mutant: str | None,
    *,
    ops: int = DEFAULT_OPS,
    keys: int = DEFAULT_KEYS,
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
    q1: int | None = None,
    q2: int | None = None,
    hash_seeds: int = DEFAULT_HASH_SEEDS,
    snapshot_chunk: int = SNAPSHOT_CHUNK,
) -> str:
    """The one command that replays this seed: every option of ``pyxos sim kv`` that
    shapes a run is spelled out, defaults included, so the command means the same run
    even if a default changes."""
    kinds = ",".join(sorted(faults)) or "none"
    cmd = (
        f"pyxos sim kv --seed {seed} --nodes {nodes} --clients {clients} --ops {ops} "
        f"--keys {keys} --snapshot-every {snapshot_every} --snapshot-chunk {snapshot_chunk} "
        f"--hash-seeds {hash_seeds} --faults {kinds}"
    )
    if mutant in QUORUM_MUTANTS:
        half = max(1, nodes // 2)
        sizes = (q1 or half, q2 or half)
    else:
        sizes = quorum_sizes(nodes, q1, q2)
    cmd += f" --q1 {sizes[0]} --q2 {sizes[1]}"
    if mutant:
        cmd += f" --mutant {mutant}"
    return cmd + " --trace"


def replay_store_factory(mutant: str | None) -> StoreFactory:
    """The store factory of a run under ``mutant`` (the KV store, or a broken layer
    around it), made from its name alone: how the cross-process replay
    (``pyxos.sim.determinism``) rebuilds a run's store in a process of its own."""
    return _mutant_parts(mutant)[1] or KVStore


def _mutant_parts(name: str | None) -> tuple[ReplicaFactory | None, StoreFactory | None, bool]:
    """(replica factory, store factory, ack before sync) of a mutant; None: the real one."""
    if name is None:
        return None, None, False
    if name == "early-ack":
        return None, None, True
    if name in REPLICA_MUTANTS:
        return REPLICA_MUTANTS[name], None, False
    if name in STORE_MUTANTS:
        return None, STORE_MUTANTS[name], False
    if name in WAL_MUTANTS or name in QUORUM_MUTANTS:
        return None, None, False  # run_kv takes its WAL or quorum system from them
    raise ValueError(f"unknown mutant {name!r}; choose from {', '.join(KV_MUTANTS)}")


class SimClient(ServiceClient[Operation]):
    """A closed-loop KV client: one operation at a time, retries, honest unknowns."""

    def __init__(
        self,
        client_id: int,
        servers: list[int],
        rng: random.Random,
        *,
        keys: int,
        ops: int,
        now: float,
        record: Callable[[Operation], None],
        issued: set[bytes],
        request_timeout: float = 0.1,
        give_up: float = 1.0,
        think: tuple[float, float] = (0.0, 0.06),
    ) -> None:
        self.keys = [f"k{i}" for i in range(keys)]
        self.issued = issued
        self.current: Command | None = None
        self.last_values: list[str] = []
        super().__init__(
            client_id,
            servers,
            rng,
            ops=ops,
            now=now,
            record=record,
            request_timeout=request_timeout,
            give_up=give_up,
            think=think,
        )

    def _answered(self, reply: ClientReply) -> None:
        cur = self.current
        assert cur is not None
        result = decode_result(reply.result)
        if result.error is not None:
            self._finish(ok=False, output=None, failed=True)
            return
        output = result.value if cur.op == "get" else None
        ok = result.ok if cur.op == "cas" else True
        if cur.op == "get" and result.value is not None:
            self.last_values.append(result.value)
        self._finish(ok=ok, output=output)

    def _begin(self) -> None:
        rng = self.rng
        key = rng.choice(self.keys)
        roll = rng.random()
        value = f"c{self.node_id}-{self.seq}"
        if roll < 0.35:
            cmd = Command(self.node_id, self.seq, "get", key)
        elif roll < 0.7:
            cmd = Command(self.node_id, self.seq, "put", key, value)
        elif roll < 0.8:
            cmd = Command(self.node_id, self.seq, "delete", key)
        else:
            expected = (
                rng.choice(self.last_values) if self.last_values and rng.random() < 0.7 else None
            )
            cmd = Command(self.node_id, self.seq, "cas", key, value, expected)
        self.current = cmd
        self.encoded = _command_encoder.encode(cmd)
        self.query = cmd.op == "get"
        self.issued.add(self.encoded)

    def _operation(self, *, ok: bool | None, output: Any, unknown: bool, failed: bool) -> Operation:
        cur = self.current
        assert cur is not None
        return Operation(
            client=cur.client,
            op=cast(OpName, cur.op),
            key=cur.key,
            value=cur.value,
            expected=cur.expected,
            call=int(self.call_time * 1e9),
            return_=None if unknown else int(self.now * 1e9),
            output=output,
            ok=None if unknown else (False if failed else ok),
        )


class _KVService:
    """The KV store as a simulated service: its clients, validity, the register check."""

    def __init__(self, keys: int, ops: int) -> None:
        self.keys = keys
        self.ops = ops
        self.issued: set[bytes] = set()

    def client(
        self,
        client_id: int,
        servers: list[int],
        rng: random.Random,
        now: float,
        record: Callable[[Operation], None],
    ) -> SimClient:
        return SimClient(
            client_id,
            servers,
            rng,
            keys=self.keys,
            ops=self.ops,
            now=now,
            record=record,
            issued=self.issued,
        )

    def valid(self, value: bytes) -> bool:
        if not value:
            return True
        try:
            commands = decode_batch(value)
        except msgspec.DecodeError:
            return False
        return all(_command_encoder.encode(c) in self.issued for c in commands)

    def check_history(self, history: list[Operation]) -> None:
        verdict = check_history(history)
        if not verdict.ok:
            raise Violation("linearizability", verdict.describe())

    def failed(self, op: Operation) -> bool:
        return op.ok is False and op.op != "cas"


def run_kv(
    seed: int,
    *,
    nodes: int = 3,
    clients: int = 4,
    faults: frozenset[str] = frozenset(),
    ops_per_client: int = DEFAULT_OPS,
    keys: int = DEFAULT_KEYS,
    fault_until: float = 1.5,
    settle: float = 1.0,
    liveness_bound: float = 4.0,
    mutant: str | None = None,
    replica_factory: ReplicaFactory = Replica,
    store_factory: StoreFactory = KVStore,
    config: ReplicaConfig | None = None,
    trace: bool = True,
    on_sim: Callable[[Simulator], None] | None = None,
    check_linearizability: bool = True,
    check_divergence: bool = True,
    ack_before_sync: bool = False,
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
    snapshot_bytes: int = 64 * 1024 * 1024,
    snapshot_chunk: int = SNAPSHOT_CHUNK,
    catchup_snapshot_slots: int = CATCHUP_SNAPSHOT_SLOTS,
    drifting_clocks: bool = True,
    stale_messages: bool = True,
    wal_class: type[WAL] = WAL,
    q1: int | None = None,
    q2: int | None = None,
    hash_seeds: int = DEFAULT_HASH_SEEDS,
) -> KVResult:
    """Simulate one seed of the replicated KV store and check it.

    Every replica runs the real WAL (``wal_class``), durable acceptor and snapshot
    files over its own simulated file system. ``mutant`` names a deliberately broken
    variant (:data:`KV_MUTANTS`); it overrides ``replica_factory``, ``store_factory``,
    ``ack_before_sync`` or ``wal_class`` accordingly. ``drifting_clocks=False`` and
    ``stale_messages=False`` turn off per-node clock drift and the messages held back
    for several election timeouts (see :class:`~pyxos.sim.nemesis.Nemesis`), to show
    what a mutant needs them for. ``catchup_snapshot_slots=0`` turns the catch-up
    snapshots off (a Fetch gets a snapshot only for slots compacted away), so a run
    without compaction keeps every slot in some log.
    ``q1``/``q2``: flexible quorum sizes (default:
    majorities; one alone: the other is the smallest that meets it); sizes that do not
    intersect raise ``ValueError`` before anything runs, except under the mutant
    ``non-intersecting-quorums``, which takes them unchecked (default ``n // 2`` each).
    The nemesis keeps at most ``n - max(q1, q2)`` servers down at once.
    ``hash_seeds`` processes with other hash seeds replay the chosen log and must agree
    with the replicas (``pyxos.sim.determinism``; 0, or a ``store_factory`` of the
    caller's own, which a process of its own cannot rebuild: not checked).
    """
    ids = list(range(1, nodes + 1))
    tolerance: int | None = None
    if mutant in QUORUM_MUTANTS:
        quorum: QuorumSystem = QUORUM_MUTANTS[mutant](ids, q1, q2)
    else:
        quorum = quorum_system(ids, q1, q2)
        tolerance = nodes - max(quorum_sizes(nodes, q1, q2))  # (n - 1) // 2 for majorities
    m_replica, m_store, m_early = _mutant_parts(mutant)
    result = KVResult(seed, nodes, clients)
    result.replay = kv_replay_command(
        seed,
        nodes,
        clients,
        faults,
        mutant,
        ops=ops_per_client,
        keys=keys,
        snapshot_every=snapshot_every,
        q1=q1,
        q2=q2,
        hash_seeds=hash_seeds,
        snapshot_chunk=snapshot_chunk,
    )
    determinism = None
    if hash_seeds > 0 and store_factory is KVStore:
        recipe = Recipe("pyxos.sim.kv:replay_store_factory", {"mutant": mutant})
        determinism = ReplayCheck(recipe, replay_hash_seeds(hash_seeds))
    options = RunOptions(
        quorum=quorum,
        tolerance=tolerance,
        nodes=nodes,
        clients=clients,
        faults=faults,
        fault_until=fault_until,
        settle=settle,
        liveness_bound=liveness_bound,
        replica_factory=m_replica or replica_factory,
        store_factory=m_store or store_factory,
        config=config,
        trace=trace,
        on_sim=on_sim,
        check_linearizability=check_linearizability,
        check_divergence=check_divergence,
        ack_before_sync=ack_before_sync or m_early,
        snapshot_every=snapshot_every,
        snapshot_bytes=snapshot_bytes,
        snapshot_chunk=snapshot_chunk,
        catchup_snapshot_slots=catchup_snapshot_slots,
        drifting_clocks=drifting_clocks,
        stale_messages=stale_messages,
        wal_class=WAL_MUTANTS.get(mutant or "", wal_class),
        determinism=determinism,
    )
    return run_service(seed, _KVService(keys, ops_per_client), result, options)
