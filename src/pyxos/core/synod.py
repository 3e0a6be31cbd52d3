"""Basic (single-decree) Paxos: the textbook roles, pure.

Theory of operation
-------------------
Every :class:`SynodNode` plays all three roles of "Paxos Made Simple" for one value:

- **Proposer.** To propose, pick a ballot above every ballot seen (and above this
  node's own durable promise, so a restarted proposer never reuses a ballot) and send
  Prepare to the acceptors. With Promises from a phase-1 quorum, send Accept with the
  value of the highest-ballot accepted proposal among them, or its own value if none
  reported one. A Nack carries the higher ballot; the proposer abandons its round and
  retries above it after a randomized, growing backoff (duelling proposers), and also
  retries when a round times out.
- **Acceptor.** :class:`~pyxos.core.acceptor.Acceptor` applies the promise and accept
  rules. Its Promise, Accepted and Nack replies leave only after its state is durable.
  The proposer's own Prepare also leaves only after this node's promise of that ballot
  is durable: the promise is what makes the ballot unique across a crash.
- **Learner.** Acceptors send Accepted to every learner. A learner learns value ``v``
  when a phase-2 quorum accepted the same ballot ``b`` *and* it holds the value
  proposed in ``b`` (it saw the Accept, or proposed it). A learner that knows the
  chosen value tells any proposer that still runs rounds (Decided), and a learner that
  knows nothing asks its peers now and then (Fetch), so every node learns once the
  network delivers messages again, whether it proposes or not.

Time arrives through ``tick(now)``; randomness through an injected generator
(:class:`~pyxos.core.ready.Rng`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from pyxos.core.acceptor import Acceptor
from pyxos.core.ballot import ZERO, Ballot
from pyxos.core.messages import (
    Accept,
    Accepted,
    Decided,
    Entry,
    Fetch,
    Message,
    Nack,
    Prepare,
    Promise,
)
from pyxos.core.quorum import QuorumSystem
from pyxos.core.ready import Ready, Rng, Send

__all__ = ["Learner", "Phase", "Proposer", "SynodNode", "SynodTiming"]


class Phase(enum.Enum):
    """Where a proposer's current round stands."""

    IDLE = "idle"
    PREPARING = "preparing"
    ACCEPTING = "accepting"


class Proposer:
    """Runs rounds of single-decree Paxos for one value."""

    def __init__(self, node_id: int, quorum: QuorumSystem) -> None:
        self.node_id = node_id
        self.quorum = quorum
        self.ballot: Ballot = ZERO
        """The ballot of the current (or last) round."""
        self.phase = Phase.IDLE
        self.highest_seen: Ballot = ZERO
        """Highest ballot heard of; the next round is above it."""
        self.promises: dict[int, tuple[Entry, ...]] = {}
        """acceptor -> entries reported in its Promise for ``ballot``."""
        self.value: bytes = b""
        """The value this proposer wants chosen if no other value is constrained."""

    def begin(self, value: bytes, floor: Ballot = ZERO) -> Prepare:
        """Start a round with a ballot above ``floor`` and every ballot seen."""
        self.value = value
        self.ballot = max(self.highest_seen, floor).next_for(self.node_id)
        self.highest_seen = self.ballot
        self.phase = Phase.PREPARING
        self.promises = {}
        return Prepare(self.node_id, self.ballot, 0)

    def on_promise(self, msg: Promise) -> Accept | None:
        """Record a promise; with a phase-1 quorum, the Accept to send."""
        if self.phase is not Phase.PREPARING or msg.ballot != self.ballot:
            return None
        self.promises[msg.src] = msg.accepted
        if not self.quorum.is_phase1_quorum(self.promises.keys()):
            return None
        self.phase = Phase.ACCEPTING
        return Accept(self.node_id, self.ballot, 0, (self.choose_value(),))

    def choose_value(self) -> bytes:
        """The value of the highest-ballot accepted proposal reported, else our own."""
        best: Entry | None = None
        for entries in self.promises.values():
            for entry in entries:
                if entry.slot == 0 and (best is None or entry.ballot > best.ballot):
                    best = entry
        return self.value if best is None else best.value

    def on_nack(self, msg: Nack) -> bool:
        """Note the higher ballot; True if it ended the current round."""
        if msg.promised > self.highest_seen:
            self.highest_seen = msg.promised
        if msg.ballot == self.ballot and self.phase is not Phase.IDLE:
            self.phase = Phase.IDLE
            return True
        return False


class Learner:
    """Learns the chosen value from a quorum of Accepted for one ballot."""

    def __init__(self, quorum: QuorumSystem) -> None:
        self.quorum = quorum
        self.chosen: bytes | None = None
        """The learned value. Invariant: once set, never changes."""
        self.chosen_ballot: Ballot = ZERO
        self.votes: dict[Ballot, set[int]] = {}
        """ballot -> acceptors that reported accepting it."""
        self.values: dict[Ballot, bytes] = {}
        """ballot -> the value proposed in it, when this node has seen it."""

    def on_value(self, ballot: Ballot, value: bytes) -> bool:
        """This node saw ``value`` proposed in ``ballot``; True if that made it learn."""
        self.values.setdefault(ballot, value)
        return self._try_learn(ballot)

    def on_accepted(self, src: int, ballot: Ballot) -> bool:
        """Acceptor ``src`` accepted ``ballot``; True if that made this learner learn."""
        self.votes.setdefault(ballot, set()).add(src)
        return self._try_learn(ballot)

    def on_decided(self, value: bytes) -> bool:
        """Another learner reports the chosen value; True if it is news."""
        if self.chosen is not None:
            return False
        self.chosen = value
        return True

    def _try_learn(self, ballot: Ballot) -> bool:
        if self.chosen is not None or ballot not in self.values:
            return False
        if not self.quorum.is_phase2_quorum(self.votes.get(ballot, ())):
            return False
        self.chosen = self.values[ballot]
        self.chosen_ballot = ballot
        return True


@dataclass(frozen=True, slots=True)
class SynodTiming:
    """Timeouts of a synod proposer, in seconds."""

    round_timeout: float = 0.05
    backoff_min: float = 0.002
    backoff_max: float = 0.2


class SynodNode:
    """One node of single-decree Paxos: proposer, acceptor and learner."""

    def __init__(
        self,
        node_id: int,
        quorum: QuorumSystem,
        rng: Rng,
        *,
        value: bytes | None = None,
        start_at: float = 0.0,
        promised: Ballot = ZERO,
        accepted: Iterable[Entry] = (),
        timing: SynodTiming = SynodTiming(),
    ) -> None:
        self._node_id = node_id
        self.quorum = quorum
        self.members = quorum.members
        self.rng = rng
        self.timing = timing
        self.acceptor = Acceptor(promised, accepted)
        self.proposer = Proposer(node_id, quorum)
        self.learner = Learner(quorum)
        self.value = value
        """What this node proposes (None: it only accepts and learns)."""
        self.now = 0.0
        self.retry_at: float | None = start_at if value is not None else None
        """When the proposer next starts a round (None: it has nothing to do)."""
        self.fetch_at: float | None = start_at + timing.round_timeout
        """When a learner that knows nothing next asks its peers for the chosen value."""
        self.backoff = timing.backoff_min
        self.rounds_started = 0
        self._ready = Ready()

    @property
    def node_id(self) -> int:
        """This node's id."""
        return self._node_id

    @property
    def chosen(self) -> bytes | None:
        """The value this node has learned, if any."""
        return self.learner.chosen

    # -- inputs ----------------------------------------------------------------------

    def step(self, msg: Message) -> None:
        """Feed one received message."""
        match msg:
            case Prepare():
                self._on_prepare(msg)
            case Accept():
                self._on_accept(msg)
            case Promise():
                accept = self.proposer.on_promise(msg)
                if accept is not None:
                    self._send_now(self.members, accept)
            case Accepted():
                if self.learner.on_accepted(msg.src, msg.ballot):
                    self._on_learned()
            case Nack():
                if self.proposer.on_nack(msg) and self.chosen is None:
                    self._schedule_retry()
            case Decided():
                if msg.values and self.learner.on_decided(msg.values[0]):
                    self._on_learned()
            case Fetch():
                self._tell_chosen(msg.src)
            case _:
                pass  # not a synod message: dropped

    def propose(self, value: bytes) -> None:
        """Ask this node to run a round for ``value`` at its next tick.

        A node that already learned still runs the round (once): Paxos guarantees that
        any round started after a value is chosen proposes that same value, and the
        simulator uses this to stress agreement.
        """
        self.value = value
        self.retry_at = self.now

    def tick(self, now: float) -> None:
        """Advance time; start a new round when the retry time has come."""
        self.now = now
        if self.retry_at is not None and now >= self.retry_at:
            self._begin_round()
        if self.fetch_at is not None and now >= self.fetch_at:
            others = tuple(m for m in self.members if m != self.node_id)
            self._send_now(others, Fetch(self.node_id, 0, 1))
            self.fetch_at = now + self.timing.round_timeout

    def ready(self) -> Ready:
        """What the driver must do now."""
        self._ready.persist.absorb(self.acceptor.take_pending())
        return self._ready

    def advance(self) -> None:
        """The driver carried out the last ``ready()``."""
        self._ready = Ready()

    def next_deadline(self) -> float | None:
        """When ``tick`` must next be called."""
        if self.retry_at is None or self.fetch_at is None:
            return self.retry_at if self.fetch_at is None else self.fetch_at
        return min(self.retry_at, self.fetch_at)

    # -- roles -----------------------------------------------------------------------

    def _begin_round(self) -> None:
        assert self.value is not None
        prepare = self.proposer.begin(self.value, floor=self.acceptor.promised)
        self.rounds_started += 1
        # Promise our own ballot first: durable before the Prepare leaves, so a restart
        # can never pick this ballot again (the next one is above our promise).
        entries = self.acceptor.on_prepare(prepare.ballot, 0)
        assert entries is not None, "a fresh ballot is above our own promise"
        others = tuple(m for m in self.members if m != self.node_id)
        self._send_after_sync(others, prepare)
        if self.node_id in self.members:
            promise = Promise(self.node_id, prepare.ballot, tuple(entries))
            accept = self.proposer.on_promise(promise)
            if accept is not None:
                self._send_now(self.members, accept)
        if self.chosen is None:
            self.retry_at = self.now + self.timing.round_timeout + self._jitter()
        else:
            self.retry_at = None

    def _schedule_retry(self) -> None:
        self.retry_at = self.now + self._jitter()
        self.backoff = min(self.backoff * 2, self.timing.backoff_max)

    def _jitter(self) -> float:
        return self.rng.uniform(self.timing.backoff_min, self.backoff)

    def _on_prepare(self, msg: Prepare) -> None:
        entries = self.acceptor.on_prepare(msg.ballot, msg.slot)
        if entries is None:
            self._send_after_sync(
                (msg.src,), Nack(self.node_id, msg.ballot, self.acceptor.promised)
            )
        else:
            self._send_after_sync((msg.src,), Promise(self.node_id, msg.ballot, tuple(entries)))
        self._tell_chosen(msg.src)

    def _on_accept(self, msg: Accept) -> None:
        if not msg.values:
            return
        if self.learner.on_value(msg.ballot, msg.values[0]):
            self._on_learned()
        if self.acceptor.on_accept(msg.ballot, msg.slot, msg.values[:1]):
            self._send_after_sync(self.members, Accepted(self.node_id, msg.ballot, msg.slot))
        else:
            self._send_after_sync(
                (msg.src,), Nack(self.node_id, msg.ballot, self.acceptor.promised)
            )
        self._tell_chosen(msg.src)

    def _on_learned(self) -> None:
        assert self.learner.chosen is not None
        self._ready.committed.append(Entry(0, self.learner.chosen_ballot, self.learner.chosen))
        others = tuple(m for m in self.members if m != self.node_id)
        self._send_now(others, Decided(self.node_id, 0, (self.learner.chosen,)))
        self.retry_at = None
        self.fetch_at = None

    def _tell_chosen(self, dst: int) -> None:
        if self.learner.chosen is not None and dst != self.node_id:
            self._send_now((dst,), Decided(self.node_id, 0, (self.learner.chosen,)))

    def _send_now(self, to: tuple[int, ...], msg: Message) -> None:
        self._ready.send_now.append(Send(to, msg))

    def _send_after_sync(self, to: tuple[int, ...], msg: Message) -> None:
        self._ready.send_after_sync.append(Send(to, msg))
