"""Any replicated service under the nemesis: the run and the checks that every kind of
simulated service shares (the KV store, ``pyxos.sim.kv``; any application,
``pyxos.sim.app``).

Theory of operation
-------------------
:func:`run_service` builds ``nodes`` :class:`~pyxos.statemachine.service.ServiceNode`
replicas (each over its own simulated file system, the real WAL, durable acceptor and
snapshot files) and ``clients`` closed-loop clients in one
:class:`~pyxos.sim.world.Simulator`, lets the :class:`~pyxos.sim.nemesis.Nemesis`
inject faults until ``fault_until``, and checks the run. What differs between kinds of
service is a :class:`Service`: how its clients choose operations and read answers
(a :class:`ServiceClient` subclass), what a valid slot value is, and how its client
history is judged. Everything else is here, once:

- agreement per slot across replicas, and on what acceptors *chose* (omniscient);
- validity: every applied slot is a no-op or a batch of commands clients really sent
  (the service's ``valid``);
- divergence: replicas that applied the same slots hold the same state (digest of the
  application and the session table) and produced the same results for every slot;
- the client history (the service's ``check_history``: linearizability), also when the
  run ends on its time limit: an operation still in flight then is recorded with an
  unknown outcome, so the history holds every call;
- leases (``pyxos.sim.leases``): while a leader's lease runs by its own clock, the
  acceptors that can promise nobody else meet every phase-1 quorum;
- membership (docs/membership.md): every slot a replica commits was chosen by a
  phase-2 quorum of the configuration that governs it (``ChosenMonitor`` with
  ``alpha``: always on; without changes the founding configuration governs every
  slot); with the ``membership`` fault the nemesis adds, promotes, removes and
  replaces nodes (``_MembershipDriver``), configuration entries are valid values, and
  liveness and convergence count the members of the final configuration;
- liveness: once the faults heal (plus a settling time for an election), every
  operation a live client calls completes, with no unknown outcome;
- convergence: at the end, every live replica applies every chosen slot, all hold the
  same state digest, and their applications' ``snapshot()`` bytes are identical (the
  application contract's determinism, docs/architecture.md, *The application
  contract*: a state that digests alike but serialises differently is caught too);
- determinism across processes (``RunOptions.determinism``, ``pyxos.sim.determinism``):
  the chosen log replayed on a fresh application in child processes with other hash
  seeds gives the replicas' digests, results and snapshot bytes, slot by slot (the
  replicas here share one process, so one hash seed: an application that iterates a
  set of strings would pass every check above).

A run starts by seeding the global ``random`` from its seed (and restores the caller's
state at the end): an application or workload that reaches for the global generator
instead of the injected one still replays identically from its seed.

An exception raised anywhere in the run (a node tripping an assertion, an answer a
client cannot read) is a verdict too: an ``exception`` violation naming where it was
raised, with the seed and the replay command like any other.

A client runs one operation at a time: it sends it to the node it believes leads,
follows redirects, retries the same ``(client, seq)`` on a timeout, and after
``give_up`` seconds records the operation with an unknown outcome. The history uses
virtual-time nanoseconds (docs/architecture.md, "Histories").
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Any, Generic, Protocol, TypeVar

from pyxos.check.invariants import ChosenMonitor, DivergenceMonitor, SafetyMonitor, Violation
from pyxos.core.membership import ConfigChangeError, decode_config_entry, is_config_entry
from pyxos.core.messages import ClientReply, ClientRequest, Entry, Message
from pyxos.core.quorum import Majority, QuorumSystem
from pyxos.core.ready import Node, Ready, Send
from pyxos.core.replica import Replica, ReplicaConfig, Role
from pyxos.sim.determinism import ReplayCheck, check_determinism, chosen_log
from pyxos.sim.leases import LeaseMonitor
from pyxos.sim.nemesis import Nemesis
from pyxos.sim.world import NodeFactory, Simulator, TraceEvent, format_trace
from pyxos.statemachine.base import Application
from pyxos.statemachine.kv import KVStore
from pyxos.statemachine.replicated import ReplicatedApp
from pyxos.statemachine.service import SNAPSHOT_CHUNK, ServiceNode
from pyxos.storage.durable import NodeStorage
from pyxos.storage.wal import WAL

__all__ = [
    "CATCHUP_SNAPSHOT_SLOTS",
    "CLIENT_BASE",
    "CONVERGE_BOUND",
    "HistoryOp",
    "ReplicaFactory",
    "RunOptions",
    "Service",
    "ServiceClient",
    "ServiceResult",
    "StoreFactory",
    "run_service",
    "service_node_factory",
]

CLIENT_BASE = 1000
"""Client process ids start here (replica ids are 1..n)."""
MEMBERSHIP_ALPHA = 16
"""``window`` (so alpha) of the replicas in a run with the ``membership`` fault."""
CONVERGE_BOUND = 2.0
"""Seconds (virtual) the live replicas get, after the clients finish, to converge."""
CATCHUP_SNAPSHOT_SLOTS = 8
"""A node that lags by this many slots is served a snapshot of the applied state (few,
so that the short simulated runs take that path: at 40 no run ever lagged that far at a
Fetch, and a snapshot announced under a slot it does not cover went unseen; see
``tests/test_sim_catchup_snapshot.py``)."""

ReplicaFactory = Callable[..., Replica]
StoreFactory = Callable[[], Application | ReplicatedApp[Any]]
"""Makes a simulated node's application, or its whole replicated state (a mutant of
the replication layer)."""


class HistoryOp(Protocol):
    """What the run reads of a history operation (both history line kinds have it)."""

    @property
    def call(self) -> int:
        """Call time, in nanoseconds."""
        ...

    @property
    def return_(self) -> int | None:
        """Return time in nanoseconds; None: the outcome is unknown."""
        ...

    @property
    def ok(self) -> bool | None:
        """The outcome (None: unknown)."""
        ...


H = TypeVar("H", bound=HistoryOp)


@dataclass(slots=True)
class ServiceResult(Generic[H]):
    """What one seed of a service simulation did."""

    seed: int
    nodes: int
    clients: int
    violation: Violation | None = None
    history: list[H] = field(default_factory=list)
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
    replays: int = 0
    """Replays of the chosen log in processes with other hash seeds compared
    (``pyxos.sim.determinism``), whatever their verdict: one per hash seed, or 0 (not
    checked, or the run failed an earlier check)."""

    def trace_text(self, limit: int | None = None) -> str:
        """The run's trace as readable lines."""
        return format_trace(self.trace, limit)


class ServiceClient(Generic[H]):
    """A closed-loop client: one operation at a time, retries, honest unknowns.

    A subclass chooses the operations (``_begin``) and reads the answers
    (``_answered``, ``_operation``); this class does the rest: sending to the node it
    believes leads, redirects, retries of the same ``(client, seq)``, giving up.
    """

    def __init__(
        self,
        client_id: int,
        servers: list[int],
        rng: random.Random,
        *,
        ops: int,
        now: float,
        record: Callable[[H], None],
        request_timeout: float = 0.1,
        give_up: float = 1.0,
        think: tuple[float, float] = (0.0, 0.06),
    ) -> None:
        self._node_id = client_id
        self.servers = servers
        self.rng = rng
        self.ops_left = ops
        self.record = record
        self.request_timeout = request_timeout
        self.give_up = give_up
        self.think = think
        self.now = now
        self.seq = 0
        self.target = rng.choice(servers)
        self.busy = False
        """True while an operation is outstanding."""
        self.encoded = b""
        """The request bytes of the operation outstanding."""
        self.query = False
        """Whether it is a read-only query (never through the log)."""
        self.call_time = 0.0
        self.retry_at: float | None = None
        self.next_op_at: float | None = now + rng.uniform(*think)
        self._out: list[Send] = []

    # -- what a subclass supplies ----------------------------------------------------------

    def _begin(self) -> None:
        """Choose the next operation (``self.seq`` is already its seq): set
        ``encoded`` and ``query``, and remember what ``_operation`` needs."""
        raise NotImplementedError

    def _answered(self, reply: ClientReply) -> None:
        """Read the answer to the outstanding operation and ``_finish`` it."""
        raise NotImplementedError

    def _operation(self, *, ok: bool | None, output: Any, unknown: bool, failed: bool) -> H:
        """The history line of the outstanding operation, as it ended."""
        raise NotImplementedError

    # -- the driver contract -------------------------------------------------------------

    @property
    def node_id(self) -> int:
        """This client's process id."""
        return self._node_id

    def step(self, msg: Message) -> None:
        """Handle a reply (redirects and stale replies included)."""
        if not isinstance(msg, ClientReply) or not self.busy or msg.seq != self.seq:
            return
        if not msg.ok:
            # A redirect: try the leader it names, or another node, soon.
            self.target = msg.leader if msg.leader else self.rng.choice(self.servers)
            self.retry_at = min(self.retry_at or self.now, self.now + 0.01)
            return
        self.target = msg.src  # it answered: it leads
        self._answered(msg)

    def tick(self, now: float) -> None:
        """Start the next operation, retry, or give up, as time says."""
        self.now = now
        if not self.busy:
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
        if not self.busy:
            return self.next_op_at
        return self.retry_at

    def abandon(self) -> None:
        """The run is over: record the operation in flight, if any, as unknown (it may
        or may not have taken effect), so the history holds every call."""
        if self.busy:
            self._finish(ok=None, output=None, unknown=True)

    # -- internals -----------------------------------------------------------------------

    def _start(self) -> None:
        self.seq += 1
        self._begin()
        self.busy = True
        self.call_time = self.now
        self._send()

    def _send(self) -> None:
        req = ClientRequest(self.node_id, self.node_id, self.seq, self.encoded, self.query)
        self._out.append(Send((self.target,), req))
        self.retry_at = self.now + self.request_timeout
        # The next attempt goes elsewhere unless a reply names the leader first.
        self.target = self.rng.choice(self.servers)

    def _finish(
        self, *, ok: bool | None, output: Any, unknown: bool = False, failed: bool = False
    ) -> None:
        self.record(self._operation(ok=ok, output=output, unknown=unknown, failed=failed))
        self.busy = False
        self.retry_at = None
        self.ops_left -= 1
        self.next_op_at = self.now + self.rng.uniform(*self.think) if self.ops_left > 0 else None


class Service(Protocol[H]):
    """One kind of service under simulation: its clients, what a valid slot value is,
    and how its history is judged. One instance serves one run (it may remember what
    the clients sent)."""

    def client(
        self,
        client_id: int,
        servers: list[int],
        rng: random.Random,
        now: float,
        record: Callable[[H], None],
    ) -> ServiceClient[H]:
        """A new client process."""
        ...

    def valid(self, value: bytes) -> bool:
        """Whether a chosen slot value is a no-op or a batch of commands clients sent."""
        ...

    def check_history(self, history: list[H]) -> None:
        """Judge the client history; raise :class:`Violation` if it is wrong."""
        ...

    def failed(self, op: H) -> bool:
        """Whether a returned operation failed definitely (took no effect)."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """Everything that shapes one simulated run besides the seed and the service."""

    nodes: int = 3
    clients: int = 4
    faults: frozenset[str] = frozenset()
    fault_until: float = 1.5
    settle: float = 1.0
    liveness_bound: float = 4.0
    replica_factory: ReplicaFactory = Replica
    store_factory: StoreFactory | None = None
    config: ReplicaConfig | None = None
    trace: bool = True
    on_sim: Callable[[Simulator], None] | None = None
    check_linearizability: bool = True
    check_divergence: bool = True
    ack_before_sync: bool = False
    snapshot_every: int = 25
    snapshot_bytes: int = 64 * 1024 * 1024
    snapshot_chunk: int = SNAPSHOT_CHUNK
    """Bytes per Snapshot message: a small one makes a catch-up snapshot travel in many
    chunks, pipelined (``statemachine.service``), through the network faults."""
    catchup_snapshot_slots: int = CATCHUP_SNAPSHOT_SLOTS
    """0 turns the catch-up snapshots off (a Fetch gets a snapshot only for slots
    compacted away), so a run without compaction keeps every slot in some log."""
    drifting_clocks: bool = True
    stale_messages: bool = True
    wal_class: type[WAL] = WAL
    quorum: QuorumSystem | None = None
    """The quorum system of the replicas and the checks (None: majorities)."""
    tolerance: int | None = None
    """Servers the nemesis may take down at once (None: a minority)."""
    determinism: ReplayCheck | None = None
    """Replay the chosen log in other processes (other hash seeds) and compare, once
    every other check passed (None: not done; needs ``check_divergence``)."""


def service_node_factory(
    quorum: QuorumSystem,
    config: ReplicaConfig,
    *,
    replica_factory: ReplicaFactory = Replica,
    store_factory: StoreFactory = KVStore,
    snapshot_every: int = 25,
    snapshot_bytes: int = 64 * 1024 * 1024,
    snapshot_chunk: int = SNAPSHOT_CHUNK,
    catchup_snapshot_slots: int = CATCHUP_SNAPSHOT_SLOTS,
) -> NodeFactory:
    """Builds a :class:`ServiceNode` from what a node's storage recovered, as the
    server's startup does: the acceptor state, the rebuild flags, the latest snapshot.
    A node that lags by ``catchup_snapshot_slots`` gets a snapshot (small here, so that
    the short simulated runs exercise it; 0: only for slots compacted away). The
    application defaults to the KV store, as a node's does
    (``pyxos.statemachine.loader.DEFAULT_APP``)."""

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


def _transfer(sim: Simulator, leader: int, target: int, leading: Callable[[], int | None]) -> None:
    """The operator asks ``leader`` to hand its leadership to ``target`` (the nemesis'
    ``transfer`` fault kind); counted in ``sim.stats`` (``transfers_*``)."""
    refused: list[str | None] = []

    def ask(node: Node) -> None:
        if isinstance(node, ServiceNode):
            refused.append(node.replica.transfer_leadership(target))

    if sim.invoke(leader, ask) and refused:
        key = "transfers_refused" if refused[0] is not None else "transfers_started"
        sim.stats[key] = sim.stats.get(key, 0) + 1
        if refused[0] is None:
            _count_outcome(sim, leader, "transfers_done", leading)


def _count_outcome(
    sim: Simulator, leader: int, key: str, leading: Callable[[], int | None]
) -> None:
    """Count ``key`` if ``leader`` hands over (started now): looked at when the core
    has given a transfer up at the latest, the same incarnation only. Handed over: the
    target's ballot deposed it, or the node its last TimeoutNow named leads then (an
    undercount under faults: it may have been deposed since)."""
    node = sim.node(leader)

    def look() -> None:
        if sim.node(leader) is node and isinstance(node, ServiceNode):
            replica = node.replica
            done = replica.transfer_result.startswith("done")
            if done or (replica.handed_to and leading() == replica.handed_to):
                sim.stats[key] = sim.stats.get(key, 0) + 1

    sim.call_at(sim.now + 6 * ReplicaConfig().election_timeout[1], look)


def run_service(
    seed: int, service: Service[H], result: ServiceResult[H], options: RunOptions
) -> ServiceResult[H]:
    """Simulate one seed of ``service`` as ``options`` say, check it (see the module
    notes), and fill in ``result`` (whose ``replay`` the caller has set).

    The global ``random`` is seeded from ``seed`` for the run and given back to the
    caller as it was."""
    saved = random.getstate()
    random.seed(f"pyxos.sim.service global random, seed {seed}")
    try:
        return _run_service(seed, service, result, options)
    finally:
        random.setstate(saved)


def _run_service(
    seed: int, service: Service[H], result: ServiceResult[H], options: RunOptions
) -> ServiceResult[H]:
    o = options
    assert o.store_factory is not None, "run_service needs a store_factory"
    sim = Simulator(seed, trace=o.trace)
    sim.ack_before_sync = o.ack_before_sync
    sim.wal_class = o.wal_class
    if o.on_sim is not None:
        o.on_sim(sim)
    ids = list(range(1, o.nodes + 1))
    quorum = o.quorum if o.quorum is not None else Majority(ids)
    membership = "membership" in o.faults
    config = o.config
    if config is None:
        # With membership changes, a short alpha (the window): a change takes over
        # within 16 slots, so a short run sees many, each at the edge of the window.
        config = ReplicaConfig(window=MEMBERSHIP_ALPHA) if membership else ReplicaConfig()
    history = result.history
    client_ids = [CLIENT_BASE + i for i in range(1, o.clients + 1)]

    def valid(value: bytes) -> bool:
        if is_config_entry(value):
            try:
                decode_config_entry(value)
            except ConfigChangeError:
                return False
            return membership  # only the membership nemesis proposes them
        return service.valid(value)

    monitor = SafetyMonitor(is_valid=valid)
    divergence = DivergenceMonitor()

    build_node = service_node_factory(
        quorum,
        config,
        replica_factory=o.replica_factory,
        store_factory=o.store_factory,
        snapshot_every=o.snapshot_every,
        snapshot_bytes=o.snapshot_bytes,
        snapshot_chunk=o.snapshot_chunk,
        catchup_snapshot_slots=o.catchup_snapshot_slots,
    )

    fresh_joiners: set[int] = set()

    def replica_node(node_id: int, storage: NodeStorage, rng: random.Random, now: float) -> Node:
        node = build_node(node_id, storage, rng, now)
        if node_id in fresh_joiners and isinstance(node, ServiceNode):
            # A new id joining (never a wiped member): no bootstrap round needed.
            fresh_joiners.discard(node_id)
            node.replica.join_fresh()
        if o.check_divergence and isinstance(node, ServiceNode):
            node.audit_with(divergence.observe)
        return node

    def client_node(client_id: int, storage: NodeStorage, rng: random.Random, now: float) -> Node:
        return service.client(client_id, ids, rng, now, history.append)

    chosen_monitor = ChosenMonitor(quorum, alpha=config.window)

    def observe(node_id: int, entries: list[Entry]) -> None:
        monitor.observe(node_id, entries)
        chosen_monitor.committed(node_id, entries)

    def clients_done() -> bool:
        return all(not _client(sim, c).busy and _client(sim, c).ops_left <= 0 for c in client_ids)

    end = o.fault_until + o.settle + o.liveness_bound
    driver: _MembershipDriver | None = None
    try:
        for i in ids:
            sim.add_node(i, replica_node)
        for c in client_ids:
            sim.add_node(c, client_node, crashable=False)
        sim.observers.append(observe)
        sim.send_observers.append(chosen_monitor.observe)
        sim.send_observers.append(LeaseMonitor(sim, quorum, ids).observe)

        def leader() -> int | None:
            for i in ids:
                node = sim.node(i)
                if isinstance(node, ServiceNode) and node.replica.role is Role.LEADER:
                    return i
            return None

        driver = _MembershipDriver(sim, ids, o.nodes, leader, replica_node, fresh_joiners)
        nemesis = Nemesis(
            sim,
            o.faults,
            ids,
            o.fault_until,
            leader=leader,
            clock_drift=config.clock_drift,
            drift=o.drifting_clocks,
            stale=o.stale_messages,
            membership=driver.change if membership else None,
            budget=driver.budget if membership else None,
            tolerance=o.tolerance,
            transfer=lambda lead, target: _transfer(sim, lead, target, leader),
        )
        driver.nemesis = nemesis
        if membership:
            sim.call_at(o.fault_until, driver.heal)
        sim.run(end, stop=clients_done)
        calm = int((o.fault_until + o.settle) * 1e9)
        late_unknown = [op for op in history if op.return_ is None and op.call >= calm]
        stuck = [c for c in client_ids if _client(sim, c).busy or _client(sim, c).ops_left > 0]
        _abandon_in_flight(sim, client_ids)
        if o.check_linearizability:
            service.check_history(history)
        if late_unknown or stuck:
            raise Violation(
                "liveness",
                f"after the faults healed at {o.fault_until}s: {len(late_unknown)} operations "
                f"called after {o.fault_until + o.settle}s ended unknown; clients still working "
                f"at {end}s: {stuck}",
            )
        if o.check_divergence:
            slots, snapshot = _check_convergence(sim, _members(sim, ids), divergence)
            if o.determinism is not None:
                log = chosen_log(monitor.first, slots)
                final = snapshot if len(log) == slots else None
                result.replays = len(o.determinism.hash_seeds) if log else 0
                check_determinism(o.determinism, log, divergence, final)
    except Violation as v:
        result.violation = v
    except Exception as e:  # a crash is a verdict too, with its seed and replay
        result.violation = Violation.from_exception(e, sim.now)
    _abandon_in_flight(sim, client_ids)
    result.calls = sum(_client(sim, c).seq for c in client_ids if sim.node(c) is not None)
    result.ok = sum(
        1
        for op in history
        if op.ok is not None and op.return_ is not None and not service.failed(op)
    )
    result.unknown = sum(1 for op in history if op.return_ is None)
    result.failed = len(history) - result.ok - result.unknown
    result.latencies = [(op.return_ - op.call) / 1e9 for op in history if op.return_ is not None]
    result.slots = max((len(monitor.first),), default=0)
    result.leader_changes = _leader_changes(sim, ids)
    result.stats = dict(sim.stats)
    if driver is not None and driver.changes:
        result.stats["membership_changes"] = driver.changes
        result.stats["membership_refused"] = driver.refused
        result.stats["governed_slots"] = chosen_monitor.governed
        result.stats["ungoverned_slots"] = chosen_monitor.ungoverned
    result.stale_ballot = sim.stale_ballot_counts()
    result.audits = divergence.reports
    result.trace = sim.trace
    return result


class _MembershipDriver:
    """The ``membership`` fault: one change at a time through the leader's replica,
    with new ids (never reused) started as fresh joiners."""

    def __init__(
        self,
        sim: Simulator,
        ids: list[int],
        nodes: int,
        leader: Callable[[], int | None],
        factory: NodeFactory,
        fresh: set[int],
    ) -> None:
        self.sim = sim
        self.ids = ids
        """Every server id so far (shared with the clients and the lease monitor)."""
        self.nodes = nodes
        self.leader = leader
        self.factory = factory
        self.fresh = fresh
        self.next_id = nodes + 1
        self.nemesis: Nemesis | None = None
        self.changes = 0
        self.refused = 0

    def change(self) -> None:
        """Propose one random change at the leader (if any and none is in flight)."""
        sim, rng = self.sim, self.sim.rng
        lead = self.leader()
        node = sim.node(lead) if lead is not None else None
        if lead is None or not isinstance(node, ServiceNode):
            return
        replica = node.replica
        self._track(replica)
        if replica.change_in_flight():
            return
        latest = replica.membership.latest
        voters, learners = list(latest.voters), list(latest.learners)
        ops = ["replace"]
        if len(learners) < 2:
            ops.append("learner")
        if learners and len(voters) <= self.nodes:
            ops.append("promote")
        if len(voters) > max(2, self.nodes - 1):
            ops.append("remove")
        op = rng.choice(ops)
        new = self.next_id
        if op == "promote":
            target = rng.choice(learners)
        elif op == "remove" and rng.random() < 0.4:
            target = lead  # the leader removes itself: it hands over first
        else:
            down = [v for v in voters if not sim.procs[v].up]
            target = rng.choice(down or voters)  # replace a dead node if there is one
        done: list[int] = []

        # Like the server, propose no change that leaves no live quorum (up, and with
        # its acceptor state): a 2-voter configuration whose other voter is rebuilding
        # stalls for good (the transfer sweep found it, seed 125).
        live = [i for i in self.ids if sim.procs[i].up and not sim.rebuilding(i)]

        def act(n: Node) -> None:
            assert isinstance(n, ServiceNode)
            r = n.replica
            try:
                if op in ("remove", "replace"):
                    latest = r.membership.latest
                    new_config = (
                        latest.remove(target) if op == "remove" else latest.replace(target, new)
                    )
                    if not new_config.live_quorums(live):
                        return
                if op == "learner":
                    done.append(r.add_learner(new))
                elif op == "promote":
                    done.append(r.promote(target))
                elif op == "remove":
                    done.append(r.remove(target))
                else:
                    done.append(r.replace(target, new))
            except ConfigChangeError:
                pass

        if not sim.invoke(lead, act) or not done:
            self.refused += 1
            return
        self.changes += 1
        sim._log("membership", lead, None, f"{op} {target if op != 'learner' else new}")
        if op == "remove" and target == lead:
            # It hands over to a voter of the new configuration before it takes over.
            sim.stats["self_removals"] = sim.stats.get("self_removals", 0) + 1
            _count_outcome(sim, lead, "handovers_done", self.leader)
        if op in ("learner", "replace"):
            self.next_id += 1
            self.fresh.add(new)
            self.ids.append(new)
            sim.add_node(new, self.factory)
            if self.nemesis is not None:
                self.nemesis.servers.append(new)

    def budget(self) -> int:
        """Nodes that may be down at once: what the smallest margin among the
        configurations the leader (or any replica) knows allows (a 2-voter
        configuration spares none), proposed ones included: a change accepted
        anywhere may be chosen while the nodes it leaves are already down (the
        transfer sweep found a crash between proposing a removal and choosing it
        leave a 2-voter configuration with a voter that had to rebuild)."""
        margin = None
        for i in self.ids:
            node = self.sim.node(i)
            if not isinstance(node, ServiceNode):
                continue
            replica = node.replica
            configs = [c for _, c in replica.configurations()] + [replica.membership.latest]
            first = replica.first_unchosen
            for entry in replica.acceptor.accepted.values():
                if entry.slot >= first and is_config_entry(entry.value):
                    with contextlib.suppress(ConfigChangeError):
                        configs.append(decode_config_entry(entry.value))
            for c in configs:
                spare = len(c.voters) - max(c.q1, c.q2)
                margin = spare if margin is None else min(margin, spare)
        return max(0, margin if margin is not None else (self.nodes - 1) // 2)

    def heal(self) -> None:
        """At the heal, removed nodes that are down start again too: they may still be
        needed as voters of the slots before their removal (docs/membership.md,
        "Removed nodes"), and an operator shuts one down only once that is over."""
        nemesis = self.nemesis
        for i in self.ids:
            if not self.sim.procs[i].up and nemesis is not None:
                nemesis._restart(i)

    def _track(self, replica: Replica) -> None:
        """The nemesis faults the nodes of the current and pending configurations: of
        every live replica's, not only the leader's. A node removed where the leader
        stands is still a voter of the slots a replica behind it has not learned, and
        may be needed there if the leader loses its state (the transfer sweep found a
        5-node run where the leader, which alone knew those slots, was wiped while the
        removed voter was down and, no longer counted, rebuilding too: no phase-1
        quorum of their configuration was left)."""
        nemesis = self.nemesis
        if nemesis is None:
            return
        members = set(replica.members)
        for i in self.ids:
            node = self.sim.node(i)
            if isinstance(node, ServiceNode) and node.replica.removed is None:
                members.update(node.replica.members)  # (a removed node's view is stale)
        for gone in [s for s in nemesis.servers if s not in members]:
            nemesis.servers.remove(gone)
            nemesis.crashed.discard(gone)
            nemesis.paused.discard(gone)


def _members(sim: Simulator, ids: list[int]) -> list[int]:
    """The nodes of the configurations in force (and pending) at the most advanced
    live replica (every server, when the membership never changed)."""
    live = _applied(sim, ids)
    if not live:
        return ids
    ahead = max(live.values(), key=lambda n: n.replica.first_unchosen).replica
    members = set(ahead.members)
    # A node started to join, whose change was never chosen, is no member.
    return [i for i in ids if i in members]


def _abandon_in_flight(sim: Simulator, client_ids: list[int]) -> None:
    for c in client_ids:
        node = sim.node(c)
        if isinstance(node, ServiceClient):
            node.abandon()


def _applied(sim: Simulator, ids: list[int]) -> dict[int, ServiceNode]:
    live: dict[int, ServiceNode] = {}
    for i in ids:
        node = sim.node(i)
        if isinstance(node, ServiceNode):
            live[i] = node
    return live


def _check_convergence(
    sim: Simulator, ids: list[int], divergence: DivergenceMonitor
) -> tuple[int, bytes | None]:
    """Run on (faults healed, clients done) until every live replica applied every chosen
    slot, for at most ``CONVERGE_BOUND`` seconds; then they must all hold one state, and
    their applications must serialise it to the same bytes. Returns the slots applied
    and those bytes (None: no live replica)."""

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
    snapshots = {i: n.state.app.snapshot() for i, n in live.items()}
    if len(set(snapshots.values())) > 1:
        raise Violation(
            "convergence",
            f"live replicas applied the same {target()} slots and their digests agree, but "
            "their applications' snapshot() bytes differ: "
            + ", ".join(
                f"node {i}: {len(data)} bytes, blake2b {blake2b(data, digest_size=8).hexdigest()}"
                for i, data in sorted(snapshots.items())
            ),
        )
    return target(), next(iter(snapshots.values()), None)


def _client(sim: Simulator, client_id: int) -> ServiceClient[Any]:
    node = sim.node(client_id)
    assert isinstance(node, ServiceClient)
    return node


def _leader_changes(sim: Simulator, ids: list[int]) -> int:
    total = 0
    for i in ids:
        node = sim.node(i)
        if isinstance(node, ServiceNode):
            total = max(total, node.replica.elections)
    return total
