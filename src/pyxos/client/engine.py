"""The client engine: one logical client's command, from its first attempt to its outcome.

Theory of operation
-------------------
Every way into the cluster is a *logical client* of the state machine: a ``client_id``
and a ``seq`` that grows by one per command, one command outstanding at a time. The
store remembers each client's last ``seq`` and its result, so a command retried with
the SAME ``(client, seq)`` is applied at most once, however many nodes and leaders it
passes through (docs/architecture.md, "The protocol": exactly once). This module is
the one place that decides what happens to a command that did not get its answer at
the first try; three thin asyncio transports drive it:

- ``AsyncClient`` (``client/aio.py``): one connection per node, one logical client;
- ``ClientPool`` sessions (``client/mux.py``): many logical clients over few
  connections, sharing one :class:`Route`;
- the HTTP API (``server/http.py``): an in-process client of its own node, which has a
  single "address" (the node's ``submit``) and forwards to the leader itself.

What the engine holds, and what it decides, without any I/O of its own:

- :class:`Route`, per address book (a client, a pool, a node's HTTP API): which node
  id is which address (learnt from every reply's ``src``), where the next command
  starts (the leader named by the last successful reply), and counters.
- :func:`next_attempt`, the retry rule: a refusal naming a leader whose address is
  known goes straight there; "no leader yet" (``leader=0``) goes to the next node
  after a jittered pause of about 5 ms doubling to 50 ms; silence (a timeout, a refused
  connection, a lost one) goes to the next node, pausing 20 ms more per round once
  every node stayed silent, up to 200 ms.
- :class:`Call`, one command's retries: its deadline, what its attempts met, the
  leader the last refusal named, and the verdict when time runs out. A refusal is
  never an outcome: the command may have reached the old leader's log and still be
  chosen, so the retry carries the same ``(client, seq)`` and the call ends only with
  an answer or, at the deadline, :class:`OutcomeUnknown`. The one exception is a call
  marked read-only with ``refused_until``: a read has no effect, so once refusals go
  on past that time it ends with :class:`NoLeader` (the HTTP API's 503).
- A refusal that carries a reason (``ok=False`` with ``error``) is a node turning the
  request away at its door, before anything of it reached a log: its disk is full
  (``server.diskfull``), or its client port is at its connection cap (the notice it
  sends before closing such a connection is made such a refusal: ``turned_away``).
  The command goes on to the next node like after "no leader yet", and the call
  remembers the reason. If every address turned it away and no attempt of the call
  could have been taken (each met such a refusal), the command certainly had no
  effect: the call ends at once with :class:`NodeUnavailable`, which says why (a
  client pinned to one full node learns that its disk is full, rather than waiting
  for an unknown outcome). Otherwise the deadline's ``OutcomeUnknown`` quotes the
  reasons.
- :func:`drive`, the loop every transport runs after a first attempt that did not
  succeed: decide, pause, check the deadline, attempt again. A transport gives only an
  ``attempt(index, deadline)`` coroutine: send the request to node ``index`` and return
  its reply, or None if none came by ``deadline`` (or the connection failed).

The first attempt stays in each transport, so that the hot path (the leader answers at
once) costs no ``Call`` and no extra coroutine frame. The outcome for a history
(docs/architecture.md, "Histories") follows from how a call ends: a reply is ``ok``
(or refused by the service, then no event), ``OutcomeUnknown`` or any exception
raised while waiting (cancellation included) is ``unknown``.

Commands are opaque here: the engine sees ``ClientRequest``/``ClientReply`` and bytes,
never a KV ``Command``, so a transport can send any application's command bytes.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import overload

from pyxos.core.messages import ClientReply

__all__ = [
    "Attempt",
    "Call",
    "ClientError",
    "CommandRejected",
    "NoLeader",
    "NodeUnavailable",
    "OutcomeUnknown",
    "RetryState",
    "Route",
    "drive",
    "next_attempt",
    "turned_away",
]

_jitter = random.Random()


class ClientError(Exception):
    """Base class of the errors the client raises."""


class OutcomeUnknown(ClientError):
    """No answer in time: the command may or may not have taken effect.

    ``leader``: the node the last refusal named (0: none, or no refusal)."""

    def __init__(self, message: str, leader: int = 0) -> None:
        super().__init__(message)
        self.leader = leader


class CommandRejected(ClientError):
    """The service refused the command (invalid, or a stale seq); it had no effect."""


class NoLeader(ClientError):
    """A read-only call refused for want of a leader until its ``refused_until``: it
    had no effect (``leader``: the node the last refusal named, 0 if none)."""

    def __init__(self, leader: int) -> None:
        super().__init__(f"no leader to serve the read (last named: {leader})")
        self.leader = leader


class NodeUnavailable(ClientError):
    """Every node the command was sent to turned it away before it reached a log,
    saying why (its disk is full): the command had no effect.

    ``reasons``: each node's reason, by address index."""

    def __init__(self, what: str, reasons: dict[int, str]) -> None:
        super().__init__(f"{what} had no effect: " + "; ".join(reasons.values()))
        self.reasons = reasons


class Route:
    """Where the commands of one address book go: a client's, a pool's, or an HTTP
    API's (one "address": its own node).

    ``nodes`` is the number of addresses; ``index_of`` maps node ids to address
    indices, given up front or learnt from replies (``learn``).
    """

    __slots__ = ("answered_by", "index_of", "leader", "no_leader_replies", "nodes", "target")

    def __init__(self, nodes: int, index_of: dict[int, int] | None = None) -> None:
        if nodes < 1:
            raise ValueError("a client needs at least one node address")
        self.nodes = nodes
        """How many addresses there are (indices ``0 .. nodes - 1``)."""
        self.index_of: dict[int, int] = index_of if index_of is not None else {}
        """Node id -> address index. Invariant: values are in ``range(nodes)``."""
        self.target = 0
        """The address index where the next command starts: the leader named by the
        last successful reply, when its address is known."""
        self.leader = 0
        """The leader as the last successful answer named it (0: none yet)."""
        self.answered_by = 0
        """The node that sent the last successful answer (0: none yet): the leader, or
        a follower that forwarded the command and relayed the leader's reply."""
        self.no_leader_replies = 0
        """Answers "no leader yet" (``ok=False, leader=0``) received, over its life."""

    def learn(self, src: int, index: int) -> None:
        """A reply from node ``src`` came from address ``index``."""
        if src >= 1 and src not in self.index_of:
            self.index_of[src] = index

    def answered(self, reply: ClientReply) -> None:
        """Learn from a successful ``reply``: who answered, who leads, where to start."""
        self.answered_by = reply.src
        self.leader = leader = reply.leader or reply.src
        # A follower relayed it: go to the leader itself next time.
        direct = self.index_of.get(leader)
        if direct is not None:
            self.target = direct


class RetryState:
    """What one command's retries have met so far (see ``next_attempt``)."""

    __slots__ = ("misses", "refusals")

    def __init__(self) -> None:
        self.misses = 0
        """Attempts in a row that got no answer at all (timeout, connection failed)."""
        self.refusals = 0
        """Attempts in a row that a node refused (no leader yet, or a redirect)."""


def next_attempt(
    index: int,
    reply: ClientReply | None,
    index_of: dict[int, int],
    nodes: int,
    state: RetryState,
    rng: random.Random = _jitter,
) -> tuple[int, float]:
    """Where a command goes after an attempt at node ``index`` that did not succeed,
    and how long to pause first: ``(node index, seconds)``. The retry rule of every
    transport (see the module notes).

    - A refusal naming a leader whose address is known: straight there (a redirect).
    - "No leader yet" (``leader=0``; an election is running, or the node lost its
      leader): the next node, after a short jittered pause that doubles per refusal in
      a row, from about 5 ms up to 50 ms, so clients poll the cluster quickly through an
      election without all retrying in step.
    - No answer at all: the next node; once every node was tried without an answer,
      a pause of 20 ms more per round, up to 200 ms.
    """
    if reply is None:
        state.misses += 1
        state.refusals = 0
        pause = 0.0
        if state.misses >= nodes:
            # Gone round the nodes without an answer: wait a little before the next round.
            pause = min(0.02 * (state.misses - nodes + 1), 0.2)
        return (index + 1) % nodes, pause
    state.misses = 0
    state.refusals += 1
    leader = index_of.get(reply.leader) if reply.leader else None
    if leader is not None and leader != index and state.refusals <= nodes:
        return leader, 0.0
    # No leader yet, a leader we cannot reach, or redirects going round in circles.
    backoff = min(0.005 * 2 ** min(state.refusals - 1, 4), 0.05)
    return (index + 1) % nodes, backoff * rng.uniform(0.5, 1.0)


class Call:
    """One command's retries, from the first attempt that did not succeed to its end.

    ``deadline`` (loop time) bounds the whole command; ``what`` names it in the
    ``OutcomeUnknown`` message. ``refused_until`` (read-only calls only: they have no
    effect) ends the call with ``NoLeader`` when a refusal comes at or after it, or
    when the deadline passes right after a refusal.
    """

    __slots__ = (
        "deadline",
        "leader",
        "maybe_taken",
        "reasons",
        "refused",
        "refused_until",
        "retries",
        "rng",
        "route",
        "state",
        "timeout",
        "what",
    )

    def __init__(
        self,
        route: Route,
        deadline: float,
        timeout: float,
        what: str,
        *,
        refused_until: float | None = None,
        rng: random.Random = _jitter,
    ) -> None:
        self.route = route
        self.deadline = deadline
        self.timeout = timeout
        self.what = what
        self.refused_until = refused_until
        self.rng = rng
        self.state = RetryState()
        self.retries = 0
        """Attempts made beyond the first."""
        self.leader = 0
        """The leader the last refusal named (0: none, or no refusal yet)."""
        self.refused = False
        """Whether the last attempt was refused (rather than unanswered)."""
        self.reasons: dict[int, str] = {}
        """Address index -> why that node turned the command away at its door."""
        self.maybe_taken = False
        """Whether an attempt may have reached a log: it met silence or a refusal
        without a reason (a leader that lost its leadership refuses what it took)."""

    def after(self, index: int, reply: ClientReply | None, now: float) -> tuple[int, float]:
        """The attempt at node ``index`` got ``reply`` (None: no answer), which is not a
        success: ``(next node index, pause)``; raises ``NoLeader`` for a read-only call
        refused past ``refused_until``, and ``NodeUnavailable`` once every address
        turned it away at its door without any attempt having possibly been taken."""
        self.refused = reply is not None
        route = self.route
        if reply is not None and reply.error is not None:
            self.reasons[index] = reply.error
            if not self.maybe_taken and len(self.reasons) >= route.nodes:
                raise NodeUnavailable(self.what, self.reasons)
        else:
            self.maybe_taken = True
        if reply is not None:
            self.leader = reply.leader
            if reply.leader == 0 and reply.error is None:
                route.no_leader_replies += 1
            if self.refused_until is not None and now >= self.refused_until:
                raise NoLeader(reply.leader)
        return next_attempt(index, reply, route.index_of, route.nodes, self.state, self.rng)

    def check(self, now: float) -> None:
        """Before an attempt: raise the verdict if the deadline has passed."""
        if now < self.deadline:
            return
        if self.refused and self.refused_until is not None:
            raise NoLeader(self.leader)
        last = f" (turned away: {'; '.join(self.reasons.values())})" if self.reasons else ""
        raise OutcomeUnknown(
            f"no answer for {self.what} within {self.timeout} s: it may or may not have "
            f"taken effect{last}",
            self.leader,
        )


@overload
def turned_away(notice: ClientReply, client: int, seq: int) -> ClientReply: ...
@overload
def turned_away(notice: ClientReply | None, client: int, seq: int) -> ClientReply | None: ...
def turned_away(notice: ClientReply | None, client: int, seq: int) -> ClientReply | None:
    """What a connection ``notice`` means for the request ``(client, seq)`` sent on
    that connection: the node's refusal of it with the notice's reason; None if there
    is no notice. A notice is a ``ClientReply`` for client 0 turned away with a reason
    (``error``): a node that refused the connection says why (its client port is full)
    before closing it, having read nothing, so nothing sent on it was taken."""
    if notice is None:
        return None
    return ClientReply(notice.src, client, seq, False, b"", notice.leader, notice.error)


Attempt = Callable[[int, float], Awaitable[ClientReply | None]]
"""A transport's one try: send to node ``index``, return the reply or None if none came
by the loop time ``deadline`` (or the connection failed)."""


async def drive(
    call: Call, attempt: Attempt, index: int, reply: ClientReply | None, tried: bool
) -> ClientReply:
    """Attempt after attempt until a node answers ``ok``; return that reply (and teach
    the route), or raise the call's verdict (``OutcomeUnknown``, ``NoLeader``).

    ``reply`` is what the transport's own first attempt at node ``index`` got, if
    ``tried``; otherwise that attempt is yet to be made, here.
    """
    loop = asyncio.get_running_loop()
    while True:
        if tried:
            if reply is not None and reply.ok:
                call.route.answered(reply)
                return reply
            index, pause = call.after(index, reply, loop.time())
            if pause > 0:
                # Never past the deadline.
                await asyncio.sleep(max(0.0, min(pause, call.deadline - loop.time())))
        call.check(loop.time())
        if tried:
            call.retries += 1
        tried = True
        reply = await attempt(index, call.deadline)
