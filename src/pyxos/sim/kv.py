"""The replicated KV store under the nemesis: one seed, one run, every property checked.

Theory of operation
-------------------
``run_kv(seed, ...)`` builds ``nodes`` :class:`~pyxos.statemachine.service.ServiceNode`
replicas and ``clients`` :class:`SimClient` s in one :class:`~pyxos.sim.world.Simulator`.
Each client runs one operation at a time (get, put, delete or cas on a few shared keys),
sends it to the node it believes leads, follows redirects, retries the same
``(client, seq)`` on a timeout, and after ``give_up`` seconds records the operation
with an unknown outcome. Everything is recorded in the history format of
docs/architecture.md ("Histories"), with virtual-time nanoseconds.

Checked in every run:

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
from dataclasses import dataclass, field
from typing import Literal, cast

import msgspec

from pyxos.check.history import Operation
from pyxos.check.invariants import ChosenMonitor, DivergenceMonitor, SafetyMonitor, Violation
from pyxos.check.linearizability import check_history
from pyxos.core.messages import ClientReply, ClientRequest, Entry, Message
from pyxos.core.quorum import Majority, QuorumSystem
from pyxos.core.ready import Node, Ready, Send
from pyxos.core.replica import Replica, ReplicaConfig, Role
from pyxos.sim.leases import LeaseMonitor
from pyxos.sim.mutants import REPLICA_MUTANTS, STORE_MUTANTS, WAL_MUTANTS
from pyxos.sim.nemesis import Nemesis
from pyxos.sim.world import NodeFactory, Simulator, TraceEvent, format_trace
from pyxos.statemachine.kv import Command, KVStore, decode_batch, decode_result
from pyxos.statemachine.replicated import ReplicatedApp
from pyxos.statemachine.service import SNAPSHOT_CHUNK, ServiceNode
from pyxos.storage.durable import NodeStorage
from pyxos.storage.wal import WAL

__all__ = [
    "KV_MUTANTS",
    "KVResult",
    "SimClient",
    "kv_replay_command",
    "run_kv",
    "service_node_factory",
]

CLIENT_BASE = 1000
"""Client process ids start here (replica ids are 1..n)."""

ReplicaFactory = Callable[..., Replica]
StoreFactory = Callable[[], KVStore | ReplicatedApp[KVStore]]
"""Makes a simulated node's application (the KV store) or its whole replicated
state (a mutant of the replication layer)."""

KV_MUTANTS = sorted([*REPLICA_MUTANTS, *STORE_MUTANTS, *WAL_MUTANTS, "early-ack"])
"""Every name ``run_kv(mutant=...)`` and ``pyxos sim kv --mutant`` take."""

DEFAULT_OPS = 40
DEFAULT_KEYS = 3
DEFAULT_SNAPSHOT_EVERY = 25
CONVERGE_BOUND = 2.0
"""Seconds (virtual) the live replicas get, after the clients finish, to converge."""
_command_encoder = msgspec.msgpack.Encoder()
OpName = Literal["get", "put", "cas", "delete"]


@dataclass(slots=True)
class KVResult:
    """What one seed of the KV simulation did."""

    seed: int
    nodes: int
    clients: int
    violation: Violation | None = None
    history: list[Operation] = field(default_factory=list)
    calls: int = 0
    """Operations the clients called; the history holds every one of them."""
    ok: int = 0
    failed: int = 0
    unknown: int = 0
    leader_changes: int = 0
    slots: int = 0
    latencies: list[float] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    stale_ballot: dict[str, int] = field(default_factory=dict)
    """Messages of an older ballot the replicas received, per message type."""
    trace: list[TraceEvent] = field(default_factory=list)
    replay: str = ""
    """The one command that replays this run exactly (every option it depends on)."""
    audits: int = 0
    """Digest reports the divergence check compared."""

    def trace_text(self, limit: int | None = None) -> str:
        """The run's trace as readable lines."""
        return format_trace(self.trace, limit)


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
) -> str:
    """The one command that replays this seed: every option of ``pyxos sim kv`` that
    shapes a run is spelled out, defaults included, so the command means the same run
    even if a default changes."""
    kinds = ",".join(sorted(faults)) or "none"
    cmd = (
        f"pyxos sim kv --seed {seed} --nodes {nodes} --clients {clients} --ops {ops} "
        f"--keys {keys} --snapshot-every {snapshot_every} --faults {kinds}"
    )
    if mutant:
        cmd += f" --mutant {mutant}"
    return cmd + " --trace"


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
    if name in WAL_MUTANTS:
        return None, None, False  # run_kv takes its WAL from WAL_MUTANTS
    raise ValueError(f"unknown mutant {name!r}; choose from {', '.join(KV_MUTANTS)}")


class SimClient:
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
        self._node_id = client_id
        self.servers = servers
        self.rng = rng
        self.keys = [f"k{i}" for i in range(keys)]
        self.ops_left = ops
        self.record = record
        self.issued = issued
        self.request_timeout = request_timeout
        self.give_up = give_up
        self.think = think
        self.now = now
        self.seq = 0
        self.target = rng.choice(servers)
        self.current: Command | None = None
        self.encoded = b""
        self.call_time = 0.0
        self.retry_at: float | None = None
        self.next_op_at: float | None = now + rng.uniform(*think)
        self.last_values: list[str] = []
        self._out: list[Send] = []

    @property
    def node_id(self) -> int:
        """This client's process id."""
        return self._node_id

    @property
    def busy(self) -> bool:
        """True while an operation is outstanding."""
        return self.current is not None

    def step(self, msg: Message) -> None:
        """Handle a reply (redirects and stale replies included)."""
        cur = self.current
        if not isinstance(msg, ClientReply) or cur is None or msg.seq != cur.seq:
            return
        if not msg.ok:
            # A redirect: try the leader it names, or another node, soon.
            self.target = msg.leader if msg.leader else self.rng.choice(self.servers)
            self.retry_at = min(self.retry_at or self.now, self.now + 0.01)
            return
        self.target = msg.src  # it answered: it leads
        result = decode_result(msg.result)
        if result.error is not None:
            self._finish(ok=False, output=None, failed=True)
            return
        output = result.value if cur.op == "get" else None
        ok = result.ok if cur.op == "cas" else True
        if cur.op == "get" and result.value is not None:
            self.last_values.append(result.value)
        self._finish(ok=ok, output=output)

    def tick(self, now: float) -> None:
        """Start the next operation, retry, or give up, as time says."""
        self.now = now
        if self.current is None:
            if self.next_op_at is not None and now >= self.next_op_at:
                self._start()
        elif self.retry_at is not None and now >= self.retry_at:
            if now - self.call_time >= self.give_up:
                self._finish(ok=None, output=None, unknown=True)
            else:
                self._send()

    def ready(self) -> Ready:
        """Requests to send."""
        r = Ready(send_now=self._out)
        self._out = []
        return r

    def advance(self) -> None:
        """Nothing to acknowledge: a client has no durable state."""

    def next_deadline(self) -> float | None:
        """When to start, retry or give up."""
        if self.current is None:
            return self.next_op_at
        return self.retry_at

    def _start(self) -> None:
        rng = self.rng
        self.seq += 1
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
        self.issued.add(self.encoded)
        self.call_time = self.now
        self._send()

    def _send(self) -> None:
        cur = self.current
        assert cur is not None
        req = ClientRequest(self.node_id, cur.client, cur.seq, self.encoded, cur.op == "get")
        self._out.append(Send((self.target,), req))
        self.retry_at = self.now + self.request_timeout
        # The next attempt goes elsewhere unless a reply names the leader first.
        self.target = self.rng.choice(self.servers)

    def abandon(self) -> None:
        """The run is over: record the operation in flight, if any, as unknown (it may
        or may not have taken effect), so the history holds every call."""
        if self.current is not None:
            self._finish(ok=None, output=None, unknown=True)

    def _finish(
        self, *, ok: bool | None, output: str | None, unknown: bool = False, failed: bool = False
    ) -> None:
        cur = self.current
        assert cur is not None
        op = Operation(
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
        self.record(op)
        self.current = None
        self.retry_at = None
        self.ops_left -= 1
        self.next_op_at = self.now + self.rng.uniform(*self.think) if self.ops_left > 0 else None


def service_node_factory(
    quorum: QuorumSystem,
    config: ReplicaConfig,
    *,
    replica_factory: ReplicaFactory = Replica,
    store_factory: StoreFactory = KVStore,
    snapshot_every: int = 25,
    snapshot_bytes: int = 64 * 1024 * 1024,
    snapshot_chunk: int = SNAPSHOT_CHUNK,
    catchup_snapshot_slots: int = 40,
) -> NodeFactory:
    """Builds a :class:`ServiceNode` from what a node's storage recovered, as the
    server's startup does: the acceptor state, the rebuild flags, the latest snapshot.
    A node that lags by ``catchup_snapshot_slots`` gets a snapshot (small here, so that
    the short simulated runs exercise it)."""

    def build(node_id: int, storage: NodeStorage, rng: random.Random, now: float) -> Node:
        state = storage.state
        replica = replica_factory(
            node_id,
            quorum,
            rng,
            config=config,
            promised=state.promised,
            accepted=state.accepted.values(),
            now=now,
            rebuilding=state.needs_rebuild,
            rebuilt_from=max(state.rebuilt, 0),
            fences=state.fences,
            bootstrapping=state.bootstrapping,
        )
        node = ServiceNode(
            replica,
            store_factory(),
            snapshot_every=snapshot_every,
            snapshot_bytes=snapshot_bytes,
            snapshot_chunk=snapshot_chunk,
            catchup_snapshot_slots=catchup_snapshot_slots,
        )
        if storage.snapshot is not None:
            node.restore_snapshot(storage.snapshot.slot, storage.snapshot.data)
        return node

    return build


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
    drifting_clocks: bool = True,
    stale_messages: bool = True,
    wal_class: type[WAL] = WAL,
) -> KVResult:
    """Simulate one seed of the replicated KV store and check it.

    Every replica runs the real WAL (``wal_class``), durable acceptor and snapshot
    files over its own simulated file system. ``mutant`` names a deliberately broken
    variant (:data:`KV_MUTANTS`); it overrides ``replica_factory``, ``store_factory``,
    ``ack_before_sync`` or ``wal_class`` accordingly. ``drifting_clocks=False`` and
    ``stale_messages=False`` turn off per-node clock drift and the messages held back
    for several election timeouts (see :class:`~pyxos.sim.nemesis.Nemesis`), to show
    what a mutant needs them for.
    """
    m_replica, m_store, m_early = _mutant_parts(mutant)
    wal_class = WAL_MUTANTS.get(mutant or "", wal_class)
    replica_factory = m_replica or replica_factory
    store_factory = m_store or store_factory
    ack_before_sync = ack_before_sync or m_early
    sim = Simulator(seed, trace=trace)
    sim.ack_before_sync = ack_before_sync
    sim.wal_class = wal_class
    if on_sim is not None:
        on_sim(sim)
    ids = list(range(1, nodes + 1))
    quorum = Majority(ids)
    config = config or ReplicaConfig()
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
    )
    history = result.history
    issued: set[bytes] = set()
    client_ids = [CLIENT_BASE + i for i in range(1, clients + 1)]

    def valid(value: bytes) -> bool:
        if not value:
            return True
        try:
            commands = decode_batch(value)
        except msgspec.DecodeError:
            return False
        return all(_command_encoder.encode(c) in issued for c in commands)

    monitor = SafetyMonitor(is_valid=valid)
    divergence = DivergenceMonitor()

    build_node = service_node_factory(
        quorum,
        config,
        replica_factory=replica_factory,
        store_factory=store_factory,
        snapshot_every=snapshot_every,
        snapshot_bytes=snapshot_bytes,
    )

    def replica_node(node_id: int, storage: NodeStorage, rng: random.Random, now: float) -> Node:
        node = build_node(node_id, storage, rng, now)
        if check_divergence and isinstance(node, ServiceNode):
            node.audit_with(divergence.observe)
        return node

    def client_node(client_id: int, storage: NodeStorage, rng: random.Random, now: float) -> Node:
        return SimClient(
            client_id,
            ids,
            rng,
            keys=keys,
            ops=ops_per_client,
            now=now,
            record=history.append,
            issued=issued,
        )

    def observe(node_id: int, entries: list[Entry]) -> None:
        monitor.observe(node_id, entries)

    def clients_done() -> bool:
        return all(not _client(sim, c).busy and _client(sim, c).ops_left <= 0 for c in client_ids)

    end = fault_until + settle + liveness_bound
    try:
        for i in ids:
            sim.add_node(i, replica_node)
        for c in client_ids:
            sim.add_node(c, client_node, crashable=False)
        sim.observers.append(observe)
        sim.send_observers.append(ChosenMonitor(quorum).observe)
        sim.send_observers.append(LeaseMonitor(sim, quorum, ids).observe)

        def leader() -> int | None:
            for i in ids:
                node = sim.node(i)
                if isinstance(node, ServiceNode) and node.replica.role is Role.LEADER:
                    return i
            return None

        Nemesis(
            sim,
            faults,
            ids,
            fault_until,
            leader=leader,
            clock_drift=config.clock_drift,
            drift=drifting_clocks,
            stale=stale_messages,
        )
        sim.run(end, stop=clients_done)
        calm = int((fault_until + settle) * 1e9)
        late_unknown = [op for op in history if op.return_ is None and op.call >= calm]
        stuck = [c for c in client_ids if _client(sim, c).busy or _client(sim, c).ops_left > 0]
        _abandon_in_flight(sim, client_ids)
        if check_linearizability:
            verdict = check_history(history)
            if not verdict.ok:
                raise Violation("linearizability", verdict.describe())
        if late_unknown or stuck:
            raise Violation(
                "liveness",
                f"after the faults healed at {fault_until}s: {len(late_unknown)} operations "
                f"called after {fault_until + settle}s ended unknown; clients still working "
                f"at {end}s: {stuck}",
            )
        if check_divergence:
            _check_convergence(sim, ids, divergence)
    except Violation as v:
        result.violation = v
    except Exception as e:  # a crash is a verdict too, with its seed and replay
        result.violation = Violation.from_exception(e, sim.now)
    _abandon_in_flight(sim, client_ids)
    result.calls = sum(_client(sim, c).seq for c in client_ids if sim.node(c) is not None)
    result.ok = sum(
        1 for op in history if op.ok is not None and op.return_ is not None and not _failed(op)
    )
    result.unknown = sum(1 for op in history if op.return_ is None)
    result.failed = len(history) - result.ok - result.unknown
    result.latencies = [(op.return_ - op.call) / 1e9 for op in history if op.return_ is not None]
    result.slots = max((len(monitor.first),), default=0)
    result.leader_changes = _leader_changes(sim, ids)
    result.stats = dict(sim.stats)
    result.stale_ballot = sim.stale_ballot_counts()
    result.audits = divergence.reports
    result.trace = sim.trace
    return result


def _abandon_in_flight(sim: Simulator, client_ids: list[int]) -> None:
    for c in client_ids:
        node = sim.node(c)
        if isinstance(node, SimClient):
            node.abandon()


def _applied(sim: Simulator, ids: list[int]) -> dict[int, ServiceNode]:
    live: dict[int, ServiceNode] = {}
    for i in ids:
        node = sim.node(i)
        if isinstance(node, ServiceNode):
            live[i] = node
    return live


def _check_convergence(sim: Simulator, ids: list[int], divergence: DivergenceMonitor) -> None:
    """Run on (faults healed, clients done) until every live replica applied every chosen
    slot, for at most ``CONVERGE_BOUND`` seconds; then they must all hold one state."""

    def target() -> int:
        return max((n.replica.first_unchosen for n in _applied(sim, ids).values()), default=0)

    def converged() -> bool:
        t = target()
        return all(n.state.applied_slot == t for n in _applied(sim, ids).values())

    done = [converged()]
    deadline = sim.now + CONVERGE_BOUND

    def poll() -> None:
        done[0] = converged()
        if not done[0] and sim.now < deadline:
            sim.call_at(sim.now + 0.01, poll)

    if not done[0]:
        sim.call_at(sim.now + 0.01, poll)
        sim.run(deadline, stop=lambda: done[0])
    live = _applied(sim, ids)
    divergence.check_converged(
        {i: (n.state.applied_slot, n.state.state_digest()) for i, n in live.items()}, target()
    )


def _failed(op: Operation) -> bool:
    return op.ok is False and op.op != "cas"


def _client(sim: Simulator, client_id: int) -> SimClient:
    node = sim.node(client_id)
    assert isinstance(node, SimClient)
    return node


def _leader_changes(sim: Simulator, ids: list[int]) -> int:
    total = 0
    for i in ids:
        node = sim.node(i)
        if isinstance(node, ServiceNode):
            total = max(total, node.replica.elections)
    return total
