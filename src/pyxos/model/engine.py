"""Exhaustive exploration of small scopes: states, actions, breadth-first search.

Theory of operation
-------------------
A *state* (:class:`World`) is the real core object of every node, its durable storage
(:class:`~pyxos.storage.memory.MemoryStorage`, as in the simulator), the multiset of
messages in flight, what is left of each fault budget, and the omniscient records the
checks need (every acceptor's votes, what was chosen, what was learned, the client
history). An *action* is one thing that may happen next:

- ``deliver``: a message in flight reaches its destination and is consumed;
- ``dup``: it is delivered and stays in flight (duplication, budget ``dups``);
- ``drop``: it is lost (budget ``drops``; messages to oneself are never lost);
- ``timeout``: a node's timers fire (``tick(now + E)`` on the node's own logical clock,
  ``E`` longer than every timeout and interval; budget ``timeouts``, proposers only);
- ``crash``: the node loses its memory and every message addressed to it, and restarts
  at once from its durable storage, exactly as the simulator rebuilds a node (budget
  ``crashes``; a node that stays down is, for safety, a node whose messages are all
  late, which asynchronous delivery covers already);
- ``wipe``: a crash that also loses the disk; the node restarts rebuilding (budget
  ``wipes``, Multi-Paxos only);
- client actions of the scope (propose a fresh value, read the register).

Every action is driven as the simulator drives a node: ``tick(now)``, the input, then
``ready()``: ``persist`` is written and synced at once (it is durable at the step it
is emitted, before any message that depends on it leaves, as the Ready contract
requires; the model does not explore crashes between the write and the fsync, which
the simulator's torn-write faults cover), ``send_now`` and ``send_after_sync`` enter
the network, ``committed`` and ``reads`` go to the checks, then ``advance()``.

Checks, after every action (a failing one ends the search with a counterexample):

- **agreement** on what is *chosen*, omnisciently: every accepted entry an acceptor
  persists is a vote; a value is chosen at a slot when a phase-2 quorum voted for it
  in one ballot; two different values chosen at one slot violate agreement, and one
  ballot carrying two values at one slot violates ballot uniqueness;
- **agreement** among learners, and that a learned value was chosen;
- **validity**: a chosen value was proposed by a client (or is the no-op);
- **linearizability** of the register (Multi-Paxos scope), with
  :func:`~pyxos.check.linearizability.check_history`, whenever an operation returns;
- an exception from a core object is a violation too (``crash``), not a crash of the
  checker;
- in scopes with wipes, the two guarantees a rebuild exists for (core/replica.py,
  *Rebuilding*: "Why that bounds what the lost state held"), from omniscient records
  of who promised, voted and answered what in which incarnation:
  ``rebuild-promise``: a node that votes again after losing its disk has promised at
  least every ballot of another node that a lost incarnation of it promised, unless
  that ballot's owner lost its disk since (the owner promised it durably first and
  answers every rebuild query); ``rebuild-fence``: a peer that answered the rebuild
  query of a later incarnation of node X accepts nothing more in a ballot in which
  someone voted before X lost its disk (its answer bounded that ballot's votes).
  Agreement breaks only many actions after either one does (a rebuild that breaks
  the first lets a lower ballot's phase 1 complete, which takes two elections; one
  that breaks the second lets a later leader miss the slot, which takes another), so
  these checks are what bring the weakened rules within reach of the search
  (tests/test_model_rebuild.py). ``--no-rebuild-checks`` leaves them out.

Search and reductions. Breadth first, with a visited set of 128-bit digests of the
canonical state (:mod:`pyxos.model.canon`), so the first violation found has a
shortest path and every state is expanded once; the number of distinct states is
exact and deterministic, and the tests assert it. Reductions applied, each sound:

- *Canonical multiset*: the network is a multiset (message, destination) with counts,
  rendered sorted; two orders of sending give one state. (Delivery order is free in
  the model, so nothing is lost.)
- *Value symmetry*: proposed values are fresh (``w1``, ``w2`` ... in order of proposal)
  and opaque to the protocol, which only compares them for equality (and with the
  no-op, which is never renamed). Renaming the proposed values by a permutation maps
  every run to a run, and preserves every checked property (each is stated in terms
  of equality of values), and future fresh values are distinct from all of them; so
  a state and its renamings have isomorphic futures. The fingerprint is the least
  digest over all renamings of the values proposed so far.
- *Write-only statistics* are left out of the fingerprint (see ``canon``).
- *Subsumption*: a successor its own predecessor can simulate (the same nodes and
  records, a network holding all its messages, no larger budget) is not kept: a lost
  message, a stale message delivered and ignored (see :func:`explore`). The states
  kept render (but for network and budgets) exactly as those of the unreduced search,
  and counterexamples stay shortest; in the duplicating network it only saves the
  fingerprints of successors that are their predecessor again.
- *Time* is each node's own logical clock, advanced only by its ``timeout`` action;
  clocks are part of the state, so no two states with different clocks are merged.
  No reduction is made on time, and none is needed: the budgets bound it. Timing
  properties (leases) are out of scope: the model runs with leases off, every read
  takes the read-index round (the simulator's clock faults test leases).

Node ids are not symmetric (ballots carry them and their order decides duels, and
a replica picks the peer it fetches from by its index among its peers), so no
symmetry over nodes is applied. Nor is partial-order reduction: a node's mailbox is
unordered and open, so a message sent later races with every message in flight to
it, and no node's pending deliveries form a persistent set (docs/architecture.md,
*Evidence*, has the measurements).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import random
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from pyxos.check.invariants import Violation
from pyxos.core.ballot import Ballot
from pyxos.core.messages import Entry, Message, RebuildInfo
from pyxos.core.quorum import FlexibleQuorum, Majority, quorum_sizes
from pyxos.core.ready import Ready
from pyxos.model.canon import canon, clone
from pyxos.storage.memory import MemoryStorage

__all__ = [
    "Action",
    "Budget",
    "Counterexample",
    "FixedRng",
    "Model",
    "ModelResult",
    "Proc",
    "World",
    "explore",
    "format_action",
]

NETWORKS = ("duplicating", "exact")
"""``duplicating``: the network is the set of messages ever sent, and a delivery leaves
the message there (unbounded duplication; loss is a message never delivered).
``exact``: a multiset; a delivery consumes, duplication and loss are budgeted."""

E = 1.0
"""How far a ``timeout`` action moves a node's clock: beyond every timer of the core."""

Action = tuple[Any, ...]
"""("deliver"|"dup"|"drop", dst, msg) or (kind, node) for node and client actions."""


class FixedRng:
    """The node's injected randomness, fixed: every run of the model is the same.

    ``uniform`` returns the low end (the shortest election timeout or backoff) and
    ``random`` one half (a fetch goes to the known leader). Timing choices only decide
    *when* timers expire, and the model fires timers by action anyway.
    """

    def random(self) -> float:
        """Always 0.5."""
        return 0.5

    def uniform(self, a: float, b: float) -> float:
        """Always ``a``."""
        return a


@dataclass(frozen=True, slots=True)
class Budget:
    """The bounds of a scope: how many of each nondeterministic event may happen."""

    drops: int = 0
    dups: int = 0
    crashes: int = 0
    wipes: int = 0
    timeouts: int = 2
    proposals: int = 0
    reads: int = 0


@dataclass(slots=True)
class Proc:
    """One node of a state: the core object, its disk, and the scope's volatile extras."""

    node: Any
    storage: MemoryStorage
    register: bytes = b""
    """The register's value as this node applied it (Multi-Paxos scope)."""
    text: str | None = None
    """The canonical rendering of this proc (a cache; procs are never changed once
    a state is complete)."""


@dataclass(slots=True)
class Op:
    """One register operation of the client history (call and return are event numbers)."""

    kind: str
    value: bytes
    node: int
    call: int
    ret: int | None = None
    output: bytes | None = None
    failed: bool = False


@dataclass(slots=True)
class World:
    """One state of the model (see the module docstring)."""

    procs: dict[int, Proc]
    net: dict[tuple[int, Message], int]
    left: dict[str, int]
    values: list[bytes] = field(default_factory=list)
    votes: dict[tuple[int, Ballot], frozenset[int]] = field(default_factory=dict)
    proposed: dict[tuple[int, Ballot], bytes] = field(default_factory=dict)
    chosen: dict[int, bytes] = field(default_factory=dict)
    learned: dict[int, bytes] = field(default_factory=dict)
    ops: list[Op] = field(default_factory=list)
    clock: int = 0
    wiped: dict[int, int] = field(default_factory=dict)
    """How often each node lost its disk (the rebuild records below; empty in scopes
    without wipes)."""
    other_promise: dict[int, tuple[Ballot, int]] = field(default_factory=dict)
    """node -> the highest ballot of *another* node it promised since its last wipe,
    with how often that ballot's owner had been wiped then."""
    lost_promises: dict[int, frozenset[tuple[Ballot, int]]] = field(default_factory=dict)
    """node -> the ``other_promise`` of each of its incarnations that lost its disk."""
    old_ballots: dict[Ballot, int] = field(default_factory=dict)
    """A ballot that reached phase 2 (someone voted in it) and whose owner lost its
    disk afterwards -> the owner's wipe count when it ran that ballot."""
    answered: dict[tuple[int, int], int] = field(default_factory=dict)
    """(peer, asker) -> the asker's wipe count when the peer answered its rebuild
    query (the latest)."""
    owned: set[int] = field(default_factory=set)
    """Procs this world copied for itself (the others are shared with its parent)."""
    text: str | None = None
    """The canonical rendering but for the network and budgets (a cache, set once the
    state is complete)."""

    def child(self) -> World:
        """A successor sharing the unchanged node objects with this state."""
        return World(
            dict(self.procs),
            dict(self.net),
            dict(self.left),
            list(self.values),
            dict(self.votes),
            dict(self.proposed),
            dict(self.chosen),
            dict(self.learned),
            [copy.copy(op) for op in self.ops],
            self.clock,
            dict(self.wiped),
            dict(self.other_promise),
            dict(self.lost_promises),
            dict(self.old_ballots),
            dict(self.answered),
            set(),
        )


@dataclass(slots=True)
class Counterexample:
    """A shortest path from the initial state to a violation."""

    scope: str
    params: dict[str, Any]
    actions: list[Action]
    violation: Violation

    def to_json(self) -> bytes:
        """The file ``pyxos model replay`` reads."""
        actions = [_action_json(a) for a in self.actions]
        doc = {
            "scope": self.scope,
            "params": self.params,
            "actions": actions,
            "violation": {"check": self.violation.check, "detail": self.violation.detail},
        }
        return msgspec.json.format(msgspec.json.encode(doc), indent=1)


@dataclass(slots=True)
class ModelResult:
    """What one exploration did."""

    states: int
    transitions: int
    depth: int
    seconds: float
    complete: bool
    """Every reachable state of the scope was explored (no ``max_states`` cut)."""
    counterexample: Counterexample | None = None
    subsumed: int = 0
    """Successors pruned because the state they came from subsumes them (see
    :func:`explore`); not counted in ``states``."""


_msg_decoder = msgspec.json.Decoder(Message)


def _action_json(a: Action) -> list[Any]:
    if a[0] in ("deliver", "dup", "drop"):
        return [a[0], a[1], msgspec.to_builtins(a[2])]
    return list(a)


def action_from_json(raw: list[Any]) -> Action:
    """Inverse of the encoding in :meth:`Counterexample.to_json`."""
    if raw[0] in ("deliver", "dup", "drop"):
        msg = _msg_decoder.decode(msgspec.json.encode(raw[2]))
        return (raw[0], int(raw[1]), msg)
    return (str(raw[0]), int(raw[1]))


def format_action(a: Action) -> str:
    """One readable line for an action."""
    if a[0] in ("deliver", "dup", "drop"):
        msg = a[2]
        verb = {"deliver": "deliver", "dup": "deliver (and keep a duplicate)", "drop": "drop"}
        return f"{verb[a[0]]} {type(msg).__name__} {msg.src}->{a[1]}: {_short(msg)}"
    return f"{a[0]} node {a[1]}"


def _short(msg: Message) -> str:
    text = repr(msg)
    return text if len(text) <= 140 else text[:137] + "..."


class Model:
    """A scope: which nodes, how they are built and driven, and which client actions.

    Subclasses fill in :meth:`make_node`, :meth:`client_actions`, :meth:`client_step`
    and the committed/reads hooks.
    """

    scope = "model"
    noop: bytes | None = None
    """A value the protocol itself proposes (valid without a client), if any."""

    def __init__(
        self,
        nodes: int,
        proposers: int,
        budget: Budget,
        *,
        symmetry: bool = True,
        network: str = "duplicating",
        rebuild_checks: bool = True,
        q1: int | None = None,
        q2: int | None = None,
        wipe_nodes: tuple[int, ...] | None = None,
    ):
        if network not in NETWORKS:
            raise ValueError(f"network must be one of {NETWORKS}")
        self.network = network
        if not 1 <= proposers <= nodes:
            raise ValueError("proposers must lie in 1..nodes")
        self.ids = tuple(range(1, nodes + 1))
        self.proposer_ids = self.ids[:proposers]
        if wipe_nodes is not None and not set(wipe_nodes) <= set(self.ids):
            raise ValueError(f"wipe_nodes must lie in 1..{nodes}")
        self.wipe_ids = self.ids if wipe_nodes is None else tuple(sorted(set(wipe_nodes)))
        """The nodes that may lose their disk (every node unless the scope says)."""
        self.q1, self.q2 = q1, q2
        if q1 is None and q2 is None:
            self.quorum: FlexibleQuorum = Majority(self.ids)
        else:
            self.quorum = FlexibleQuorum(self.ids, *quorum_sizes(nodes, q1, q2))
        self.rng = FixedRng()
        self.budget = budget
        self.rebuild_checks = rebuild_checks
        self.rebuild_records = rebuild_checks and budget.wipes > 0
        """Keep the records of the rebuild checks (only a wipe makes them matter)."""
        self.symmetry = symmetry
        self._canon_msg: dict[Message, str] = {}
        self._shared: dict[int, Any] = {id(self.quorum): self.quorum, id(self.rng): self.rng}

    # -- hooks -------------------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        """The command-line parameters of this scope (for the counterexample file)."""
        b = self.budget
        return {
            "nodes": len(self.ids),
            "proposers": len(self.proposer_ids),
            "drops": b.drops,
            "dups": b.dups,
            "crashes": b.crashes,
            "wipes": b.wipes,
            "timeouts": b.timeouts,
            "proposals": b.proposals,
            "reads": b.reads,
            "symmetry": self.symmetry,
            "network": self.network,
            "rebuild_checks": self.rebuild_checks,
            "q1": self.q1,
            "q2": self.q2,
            "wipe_nodes": None if self.wipe_ids == self.ids else list(self.wipe_ids),
        }

    def make_node(self, node_id: int, storage: MemoryStorage, now: float, first: bool) -> Any:
        """Build node ``node_id`` from its durable storage (``first``: at the start)."""
        raise NotImplementedError

    def client_actions(self, w: World) -> Iterator[Action]:
        """The client actions enabled in ``w``."""
        return iter(())

    def client_step(self, w: World, a: Action) -> None:
        """Carry out client action ``a`` on ``w`` (a child state)."""
        raise NotImplementedError

    def on_committed(self, w: World, node_id: int, entries: list[Entry]) -> None:
        """Entries ``node_id`` committed (after the agreement checks)."""

    def on_reads(self, w: World, node_id: int, reads: list[tuple[object, bool]]) -> None:
        """Reads ``node_id`` released."""

    def after_drive(self, w: World, node_id: int) -> bool:
        """Driver work after a Ready (the service layer's part); True to drive again."""
        return False

    def restore(self, w: World, node_id: int) -> None:
        """Volatile scope state of a node restarted from its storage."""
        w.procs[node_id].register = b""

    # -- driving -------------------------------------------------------------------------

    def initial(self) -> World:
        """The initial state: every node started at time 0."""
        w = World({}, {}, {f: getattr(self.budget, f) for f in Budget.__slots__})
        for i in self.ids:
            storage = MemoryStorage()
            w.procs[i] = Proc(self.make_node(i, storage, 0.0, True), storage)
            w.owned.add(i)
        for i in self.ids:
            self.start(w, i)
        w.owned.clear()
        return w

    def start(self, w: World, node_id: int) -> None:
        """Tick a freshly built node at its own time and drive it (as the simulator)."""
        node = w.procs[node_id].node
        node.tick(node.now)
        self.drive(w, node_id)

    def own(self, w: World, node_id: int) -> Proc:
        """The proc of ``node_id`` in ``w``, copied first if it is shared."""
        if node_id not in w.owned:
            old = w.procs[node_id]
            shared = self._shared
            w.procs[node_id] = Proc(
                clone(old.node, shared), clone(old.storage, shared), old.register
            )
            w.owned.add(node_id)
        return w.procs[node_id]

    def drive(self, w: World, node_id: int) -> None:
        """Carry out the node's Ready (see the module docstring), then advance."""
        while True:
            proc = w.procs[node_id]
            node = proc.node
            r: Ready = node.ready()
            if r.persist:
                proc.storage.write(r.persist)
                proc.storage.sync()
                for entry in r.persist.accepted:
                    self._vote(w, node_id, entry)
            if self.rebuild_records:
                self._note_rebuild_records(w, node_id, r)
            for send in (*r.send_now, *r.send_after_sync):
                for dst in send.to:
                    if dst in w.procs:
                        key = (dst, send.msg)
                        if self.network == "duplicating":
                            w.net[key] = 1
                        else:
                            w.net[key] = w.net.get(key, 0) + 1
            if r.committed:
                self._learn(w, node_id, r.committed)
                self.on_committed(w, node_id, r.committed)
            if r.reads:
                self.on_reads(w, node_id, r.reads)
            node.advance()
            if not self.after_drive(w, node_id):
                return

    def _note_rebuild_records(self, w: World, node_id: int, r: Ready) -> None:
        """Keep the records the rebuild checks read (scopes with wipes only)."""
        promised = w.procs[node_id].node.acceptor.promised
        owner = promised.node
        if owner not in (0, node_id):
            known = w.other_promise.get(node_id)
            if known is None or known[0] < promised:
                w.other_promise[node_id] = (promised, w.wiped.get(owner, 0))
        for send in r.send_after_sync:
            if isinstance(send.msg, RebuildInfo):
                for dst in send.to:
                    w.answered[(node_id, dst)] = w.wiped.get(dst, 0)

    def check_rebuilt(self, w: World, node_id: int) -> None:
        """The rebuild rule's promise: a node that votes again after losing its disk
        has promised at least every ballot of another node that its lost incarnations
        promised, unless that ballot's owner lost its disk since (docs/architecture.md,
        *Rebuilding*; core/replica.py, "Why that bounds what the lost state held")."""
        if not self.rebuild_records:
            return
        promised = w.procs[node_id].node.acceptor.promised
        for ballot, owner_wiped in sorted(w.lost_promises.get(node_id, ())):
            if w.wiped.get(ballot.node, 0) == owner_wiped and promised < ballot:
                raise Violation(
                    "rebuild-promise",
                    f"node {node_id} votes again with promise {promised}, below ballot "
                    f"{ballot} it promised before its disk was lost (node {ballot.node}, "
                    "which ran that ballot, still holds its promise)",
                )

    def _vote(self, w: World, node_id: int, entry: Entry) -> None:
        owner = entry.ballot.node
        epoch = w.old_ballots.get(entry.ballot)
        if epoch is not None and owner != node_id and w.answered.get((node_id, owner), -1) > epoch:
            raise Violation(
                "rebuild-fence",
                f"node {node_id} accepted slot {entry.slot} in ballot {entry.ballot} of a lost "
                f"incarnation of node {owner} after answering a later incarnation's "
                "rebuild query (the answer no longer bounds what that ballot chose)",
            )
        key = (entry.slot, entry.ballot)
        known = w.proposed.setdefault(key, entry.value)
        if known != entry.value:
            raise Violation(
                "ballot-uniqueness",
                f"ballot {entry.ballot} carried {known!r} and {entry.value!r} at slot {entry.slot}",
            )
        voters = w.votes.get(key, frozenset()) | {node_id}
        w.votes[key] = voters
        if not self.quorum.is_phase2_quorum(voters):
            return
        if entry.value != self.noop and entry.value not in w.values:
            raise Violation(
                "validity", f"{entry.value!r} chosen at slot {entry.slot}: nobody proposed it"
            )
        first = w.chosen.setdefault(entry.slot, entry.value)
        if first != entry.value:
            raise Violation(
                "agreement",
                f"slot {entry.slot}: {first!r} and {entry.value!r} were both chosen "
                f"(the latter by {sorted(voters)} in ballot {entry.ballot})",
            )

    def _learn(self, w: World, node_id: int, entries: list[Entry]) -> None:
        for entry in entries:
            chosen = w.chosen.get(entry.slot)
            if chosen != entry.value:
                raise Violation(
                    "agreement",
                    f"node {node_id} learned {entry.value!r} at slot {entry.slot}, but "
                    + (f"{chosen!r} was chosen" if chosen is not None else "nothing was chosen"),
                )
            w.learned.setdefault(entry.slot, entry.value)

    # -- actions -------------------------------------------------------------------------

    def actions(self, w: World) -> Iterator[Action]:
        """Every action enabled in ``w``, in a fixed order."""
        left = w.left
        duplicating = self.network == "duplicating"
        for dst, msg in sorted(w.net, key=self._net_key):
            yield ("deliver", dst, msg)
            if dst != msg.src and not duplicating:
                if left["dups"] > 0:
                    yield ("dup", dst, msg)
                if left["drops"] > 0:
                    yield ("drop", dst, msg)
        if left["timeouts"] > 0:
            for i in self.proposer_ids:
                yield ("timeout", i)
        if left["crashes"] > 0:
            for i in self.ids:
                yield ("crash", i)
        if left["wipes"] > 0:
            for i in self.wipe_ids:
                yield ("wipe", i)
        yield from self.client_actions(w)

    def step(self, w: World, a: Action) -> World:
        """The state after action ``a`` (``w`` is left as it was)."""
        c = w.child()
        kind = a[0]
        if kind in ("deliver", "dup", "drop"):
            _, dst, msg = a
            key = (dst, msg)
            if kind != "dup" and self.network != "duplicating":
                n = c.net[key] - 1
                if n:
                    c.net[key] = n
                else:
                    del c.net[key]
            if kind == "drop":
                c.left["drops"] -= 1
                return c
            if kind == "dup":
                c.left["dups"] -= 1
            node = self.own(c, dst).node
            node.tick(node.now)
            node.step(msg)
            self.drive(c, dst)
        elif kind == "timeout":
            c.left["timeouts"] -= 1
            node = self.own(c, a[1]).node
            node.tick(node.now + E)
            self.drive(c, a[1])
        elif kind in ("crash", "wipe"):
            c.left[kind + "es" if kind == "crash" else kind + "s"] -= 1
            self._restart(c, a[1], wipe=kind == "wipe")
        else:
            self.client_step(c, a)
        return c

    def _restart(self, w: World, node_id: int, *, wipe: bool) -> None:
        proc = self.own(w, node_id)
        now = proc.node.now
        proc.storage.crash()
        if wipe:
            proc.storage.corrupt(keep_snapshot=False)
            epoch = w.wiped.get(node_id, 0)
            lost = w.other_promise.pop(node_id, None)
            if lost is not None:
                w.lost_promises[node_id] = w.lost_promises.get(node_id, frozenset()) | {lost}
            for _, ballot in w.votes:
                if ballot.node == node_id:
                    w.old_ballots.setdefault(ballot, epoch)
            w.wiped[node_id] = epoch + 1
        if self.network != "duplicating":
            for key in [k for k in w.net if k[0] == node_id]:
                del w.net[key]
        proc.node = self.make_node(node_id, proc.storage, now, False)
        self.restore(w, node_id)
        self.start(w, node_id)

    # -- fingerprints --------------------------------------------------------------------

    def _net_key(self, item: tuple[int, Message]) -> tuple[int, bytes]:
        return (item[0], msgspec.msgpack.encode(item[1]))

    def _canon_net(self, w: World) -> list[str]:
        cache = self._canon_msg
        out = []
        for (dst, msg), n in w.net.items():
            c = cache.get(msg)
            if c is None:
                c = cache[msg] = repr(canon(msg))
            out.append(f"{dst}:{n}:{c}")
        return out

    def _canon_ops(self, w: World) -> Any:
        times = sorted({t for op in w.ops for t in (op.call, op.ret) if t is not None})
        rank = {t: i for i, t in enumerate(times)}
        return tuple(
            (
                op.kind,
                op.value,
                op.node,
                rank[op.call],
                None if op.ret is None else rank[op.ret],
                op.output,
                op.failed,
            )
            for op in w.ops
        )

    def _text(self, w: World) -> str:
        """The canonical rendering of ``w`` but for its network and its budgets."""
        if w.text is None:
            nodes = []
            for i in self.ids:
                proc = w.procs[i]
                if proc.text is None:
                    proc.text = repr((i, canon(proc.node), canon(proc.storage), proc.register))
                nodes.append(proc.text)
            rest = repr(
                (
                    canon(w.votes),
                    canon(w.proposed),
                    canon(w.chosen),
                    canon(w.learned),
                    canon(w.wiped),
                    canon(w.other_promise),
                    canon(w.lost_promises),
                    canon(w.old_ballots),
                    canon(w.answered),
                    self._canon_ops(w),
                    len(w.values),
                )
            )
            w.text = "\n".join([*nodes, rest])
        return w.text

    def subsumed(self, c: World, w: World) -> bool:
        """Whether ``w`` can do everything ``c`` can: the same nodes and records, a
        network holding every message of ``c``'s (with at least as many copies) and at
        least as much of every budget left (see :func:`explore`)."""
        if any(n > w.left[k] for k, n in c.left.items()):
            return False
        net = w.net
        if any(net.get(key, 0) < n for key, n in c.net.items()):
            return False
        return self._text(c) == self._text(w)

    def fingerprint(self, w: World) -> bytes:
        """The least digest of ``w`` over every renaming of its proposed values.

        The state is rendered once (:func:`~pyxos.model.canon.canon`, then ``repr``),
        and each renaming is applied to that text: a proposed value appears in it only
        as its bytes literal (``b'w1'``), and no container of the core is ordered by a
        value, so the renamed text is the rendering of the renamed state once the
        network's messages (sorted by their text) are sorted again.
        """
        body = self._text(w) + "\n" + repr(sorted(w.left.items()))
        net = self._canon_net(w)
        texts = [(body, net)]
        if self.symmetry and len(w.values) > 1:
            names = [v.decode() for v in w.values]
            for perm in itertools.permutations(names):
                if list(perm) == names:
                    continue
                mapping = dict(zip(names, perm, strict=True))

                def sub(m: re.Match[str], mapping: dict[str, str] = mapping) -> str:
                    return "b'" + mapping.get(m.group(1), m.group(1)) + "'"

                texts.append((_VALUE.sub(sub, body), [_VALUE.sub(sub, t) for t in net]))
        best = b""
        for body, net in texts:
            net.sort()
            digest = hashlib.blake2b(
                (body + "\n" + "|".join(net)).encode(), digest_size=16
            ).digest()
            if not best or digest < best:
                best = digest
        return best


_VALUE = re.compile(r"b'(w\d+)'")
"""A proposed value as it appears in a rendered state."""


def explore(
    model: Model,
    *,
    max_states: int | None = None,
    max_depth: int | None = None,
    progress: Callable[[int, int, int], None] | None = None,
    subsumption: bool = True,
    visit: Callable[[World], None] | None = None,
    start: list[Action] | None = None,
) -> ModelResult:
    """Breadth-first search of every state of ``model`` (see the module docstring).

    ``start``: search from the state these actions lead to instead of the initial
    state (every one must be enabled in turn, and none may violate a check); depths
    and counts are then those of the search from there, and a counterexample begins
    with ``start``. So a counterexample of one check (the rebuild checks, found
    early) can be carried on to a violation of another (agreement, found from
    there), each part a shortest one.

    Stops at the first violation (with a shortest counterexample), once ``max_states``
    distinct states have been seen, or (``max_depth``) after every state reachable in
    at most that many actions: the search is then complete for that bound.

    Subsumption (``subsumption``, on by default): a successor ``c`` of ``w`` is not
    kept when ``w`` subsumes it (:meth:`Model.subsumed`): the same nodes, storage and
    records, every message of ``c``'s network in ``w``'s, and no budget larger. That
    is a lost message (always), and a delivery or duplicate that changed nothing but
    the network and the budgets (a stale message ignored). It is sound for every check,
    and keeps counterexamples shortest: every action enabled in ``c`` is enabled in
    ``w`` (its messages are there, its budgets suffice; node and client actions read
    only node state and budgets), and leads from ``w`` to a state that again subsumes
    the one it leads to from ``c``, with the same records, hence the same verdicts. So
    whatever ``c`` reaches in ``k`` actions, ``w``, one action closer to the initial
    state and already kept, reaches in ``k`` too. (For safety, a message never
    delivered is as good as a lost one.) ``visit`` is called with every state kept.
    """
    t0 = time.perf_counter()
    init = model.initial()
    for a in start or ():
        if a not in set(model.actions(init)):
            raise ValueError(f"start action not enabled: {format_action(a)}")
        nxt = _try(model, init, a)
        if isinstance(nxt, Violation):
            raise ValueError(f"start action {format_action(a)} violates {nxt.check}")
        init = nxt
    fp0 = model.fingerprint(init)
    if visit is not None:
        visit(init)
    parent: dict[bytes, tuple[bytes, Action] | None] = {fp0: None}
    queue: deque[tuple[World, bytes, int]] = deque([(init, fp0, 0)])
    transitions = 0
    subsumed = 0
    depth = 0
    complete = True
    depth_seen = 0
    while queue:
        w, fp, d = queue.popleft()
        depth = max(depth, d)
        if max_depth is not None and d >= max_depth:
            if any(True for _ in model.actions(w)):
                complete = False
            continue
        if progress is not None and d > depth_seen:
            depth_seen = d
            progress(len(parent), transitions, d)
        for a in list(model.actions(w)):
            transitions += 1
            c = _try(model, w, a)  # a core object that raises is a verdict too
            if isinstance(c, Violation):
                found = _found(model, parent, fp, a, c, transitions, depth + 1, t0, subsumed)
                if start and found.counterexample is not None:
                    found.counterexample.actions[:0] = start
                return found
            if subsumption and model.subsumed(c, w):
                subsumed += 1
                continue
            fp2 = model.fingerprint(c)
            if fp2 in parent:
                continue
            parent[fp2] = (fp, a)
            if visit is not None:
                visit(c)
            if max_states is not None and len(parent) >= max_states:
                complete = False
                queue.clear()
                break
            queue.append((c, fp2, d + 1))
    return ModelResult(
        len(parent), transitions, depth, time.perf_counter() - t0, complete, None, subsumed
    )


def _found(
    model: Model,
    parent: dict[bytes, tuple[bytes, Action] | None],
    fp: bytes,
    last: Action,
    v: Violation,
    transitions: int,
    depth: int,
    t0: float,
    subsumed: int = 0,
) -> ModelResult:
    path = [last]
    link = parent[fp]
    while link is not None:
        fp, a = link
        path.append(a)
        link = parent[fp]
    path.reverse()
    cex = Counterexample(model.scope, model.params(), path, v)
    seconds = time.perf_counter() - t0
    return ModelResult(len(parent), transitions, depth, seconds, True, cex, subsumed)


def replay(model: Model, actions: list[Action]) -> Iterator[tuple[Action, World, Violation | None]]:
    """Carry out ``actions`` from the initial state, yielding each action, the state
    after it and the violation it raised (the last one yielded, if any)."""
    w = model.initial()
    for a in actions:
        try:
            w = model.step(w, a)
        except Violation as v:
            yield a, w, v
            return
        except Exception as e:
            yield a, w, Violation("crash", f"{type(e).__name__}: {e}")
            return
        yield a, w, None


@dataclass(slots=True)
class WalkResult:
    """What :func:`random_walks` did."""

    walks: int
    steps: int
    seconds: float
    counterexample: Counterexample | None = None
    found_at_walk: int | None = None
    unshrunk_length: int | None = None


def random_walks(
    model: Model, *, walks: int, seed: int, max_length: int = 80, shrink: bool = True
) -> WalkResult:
    """Random runs through the scope, for scopes too deep for breadth-first search.

    Swarm testing: every walk draws its own weather, a random set of slow directed
    links (a message on one is delivered with a small weight only) and random weights
    for timeouts, crashes and client actions, then at every step picks an enabled
    action with those weights, from its own seeded generator. The first violation
    is shrunk (:func:`shrink_path`) to a counterexample from which no single action
    can be removed; it is minimal in that sense, not necessarily the shortest.
    """
    rng = random.Random(seed)
    t0 = time.perf_counter()
    steps = 0
    links = [(a, b) for a in model.ids for b in model.ids if a != b]
    for k in range(walks):
        slow = {link for link in links if rng.random() < 0.3}
        weight = {
            "deliver": 1.0,
            "dup": rng.choice((0.0, 0.05, 0.2)),
            "drop": rng.choice((0.0, 0.05, 0.2)),
            "timeout": rng.choice((0.02, 0.1, 0.5)),
            "crash": rng.choice((0.01, 0.05, 0.2)),
            "wipe": rng.choice((0.01, 0.05, 0.2)),
            "propose": rng.choice((0.05, 0.3, 1.0)),
            "read": rng.choice((0.05, 0.3, 1.0)),
        }
        w = model.initial()
        path: list[Action] = []
        for _ in range(max_length):
            enabled = list(model.actions(w))
            if not enabled:
                break
            weights = [
                weight.get(a[0], 0.3) * (0.02 if len(a) == 3 and (a[2].src, a[1]) in slow else 1.0)
                for a in enabled
            ]
            a = rng.choices(enabled, weights)[0]
            path.append(a)
            steps += 1
            v = _try(model, w, a)
            if isinstance(v, Violation):
                found = len(path)
                if shrink:
                    path, v = shrink_path(model, path, v)
                cex = Counterexample(model.scope, model.params(), path, v)
                return WalkResult(k + 1, steps, time.perf_counter() - t0, cex, k, found)
            w = v
    return WalkResult(walks, steps, time.perf_counter() - t0)


def _try(model: Model, w: World, a: Action) -> World | Violation:
    try:
        return model.step(w, a)
    except Violation as v:
        return v
    except Exception as e:
        return Violation("crash", f"{type(e).__name__}: {e}")


def _run_path(model: Model, path: list[Action]) -> Violation | None:
    """The violation ``path`` ends in, or None (also if an action is not enabled)."""
    w = model.initial()
    for n, a in enumerate(path):
        if a not in set(model.actions(w)):
            return None
        r = _try(model, w, a)
        if isinstance(r, Violation):
            return r if n == len(path) - 1 else None
        w = r
    return None


def shrink_path(
    model: Model, path: list[Action], violation: Violation
) -> tuple[list[Action], Violation]:
    """Remove actions from ``path`` while it still ends in a violation of the same
    check, until no single action can be removed (one-minimal)."""
    changed = True
    while changed:
        changed = False
        i = len(path) - 2
        while i >= 0:
            candidate = path[:i] + path[i + 1 :]
            v = _run_path(model, candidate)
            if v is not None and v.check == violation.check:
                path, violation = candidate, v
                changed = True
            i -= 1
    return path, violation


def describe_node(node: Any) -> str:
    """A one-line summary of a node's protocol state (for replays)."""
    acceptor = node.acceptor
    parts = [f"promised {acceptor.promised}"]
    accepted = ", ".join(
        f"{s}:{e.ballot}={e.value!r}" for s, e in sorted(acceptor.accepted.items())
    )
    parts.append(f"accepted [{accepted}]")
    role = getattr(node, "role", None)
    if role is not None:
        parts.insert(0, f"{role.value} ballot {node.ballot}")
        if node.rebuilding:
            parts.append("rebuilding")
        parts.append(f"first unchosen {node.first_unchosen}")
    else:
        parts.insert(0, f"{node.proposer.phase.value} ballot {node.proposer.ballot}")
        if node.chosen is not None:
            parts.append(f"learned {node.chosen!r}")
    return ", ".join(parts)


def scripted(model: Model, script: list[str]) -> tuple[list[Action], World, Violation | None]:
    """Carry out a hand-written scenario: each line is ``KIND NODE`` (timeout, crash,
    wipe, propose, read) or ``MESSAGE SRC DST`` (deliver the first such message in
    flight). Returns the actions, the last state and the violation the last action
    raised, if any; raises ValueError at a line whose action is not enabled."""
    w = model.initial()
    actions: list[Action] = []
    for line in script:
        words = line.split()
        enabled = list(model.actions(w))
        if len(words) == 2:
            a: Action = (words[0], int(words[1]))
            found = [a] if a in enabled else []
        else:
            kind, src, dst = words[0], int(words[1]), int(words[2])
            found = [
                e
                for e in enabled
                if e[0] == "deliver"
                and type(e[2]).__name__ == kind
                and e[2].src == src
                and e[1] == dst
            ]
        if not found:
            raise ValueError(f"not enabled: {line!r}")
        actions.append(found[0])
        r = _try(model, w, found[0])
        if isinstance(r, Violation):
            return actions, w, r
        w = r
    return actions, w, None
