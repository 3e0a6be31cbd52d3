"""Member operations: list, add, promote, remove, replace, asked of any node, done by the leader.

Theory of operation
-------------------
An operator's membership request travels as a client command (``ClientRequest``) whose
bytes start with :data:`MEMBER_MAGIC` (0xc1, the byte no msgpack value starts with, so
no application command looks like one), followed by a msgpack :class:`MemberOp`. It
therefore reaches the leader the way every client command does: a follower forwards it
(``statemachine.service``), a client retries it elsewhere with the same ``(client,
seq)``. The application never sees it: :class:`MemberDesk` takes it at the leader.

The desk is pure (the service node's clock and messages only) and does, per request:

1. **Checks that need no one else**: a well-formed request, the leader, one change at
   a time (``Replica.change_in_flight``), a node id that exists (promote, remove) or is
   new and was never used (add, replace: ``Membership.check`` refuses a removed id).
   A request that is already done (add of a learner with the same address, promote of
   a voter, remove of a removed node, replace already made) is answered as done, and
   a retry of a request this leader answered (same ``(client, seq)``) gets the same
   answer again (``answered``): a client that retries after a lost reply, here or at
   the next leader, gets an answer, not an error.
2. **A progress round**: the desk asks every member of the newest configuration (and
   the node the change is about) how far it has learned (``op="progress"``, answered
   by any node from its replica: ``first_unchosen``, ``removed``, ``rebuilding``) and
   waits for every answer or ``round_seconds`` (a second at least: a loaded node is
   slow, not down). The nodes that answered, and the
   leader, are the *live* ones: a change whose current or new configuration has no
   live phase-1 and phase-2 quorum (``Configuration.live_quorums``) is refused (it
   could not be chosen, or would leave the cluster unable to choose). A learner to be
   promoted must have learned every slot the leader had chosen when the round began;
   if it has not, further rounds follow until ``catchup_seconds`` have passed, then
   the promotion is refused ("not caught up").
3. **The change**: ``Replica.propose_configuration`` with the new configuration, the
   members' peer addresses filled in (``addresses``, the server's address book), and
   the answer once it is in force (chosen, and ``alpha`` slots later, which the leader
   fills with no-ops when idle): the new epoch and the slot it governs from, or why it
   was not effective. A leader that removed itself answers once the change is in
   force, as it hands over. A leader that loses its
   leadership first answers "retry" (``ok=False``), and the client asks the next
   leader, where step 1 finds the change either made or not.

``op="list"`` is answered by the leader at once from its timeline: the configuration
in force, the pending ones, the retired ids, the addresses it knows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from pyxos.core.membership import ConfigChangeError, Configuration
from pyxos.core.messages import ClientReply, ClientRequest
from pyxos.core.replica import Replica, Role

__all__ = [
    "MEMBER_MAGIC",
    "MEMBER_OPS",
    "PROBE_CLIENT",
    "MemberDesk",
    "MemberOp",
    "config_from_json",
    "config_json",
    "decode_member_op",
    "encode_member_op",
    "is_member_op",
]

MEMBER_MAGIC = b"\xc1pyxos-member\x00"
"""Prefix of a member operation sent as a client command (see the module notes)."""

MEMBER_OPS = ("list", "add", "promote", "remove", "replace", "progress")
"""The operations a :class:`MemberOp` may name."""

PROBE_CLIENT = -7
"""The client id of the leader's own progress questions (never a real client's)."""

ANSWERS_KEPT = 64
"""Answers to member requests a leader keeps for retries (see ``MemberDesk.answered``)."""


class MemberOp(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One member operation: ``op`` and its arguments."""

    op: str
    node: int = 0
    """The node the operation is about (``replace``: the one leaving)."""
    new: int = 0
    """``replace``: the new node id taking ``node``'s place."""
    address: str = ""
    """``add``/``replace``: the new node's peer address, ``host:port``."""
    q1: int = 0
    """``promote``/``remove``/``replace``: the new phase-1 quorum size (0: a majority
    of the new voters; ``q1 + q2`` must exceed their number)."""
    q2: int = 0
    """Likewise, the new phase-2 quorum size."""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(MemberOp)


def encode_member_op(op: MemberOp) -> bytes:
    """The client command that asks for ``op``."""
    return MEMBER_MAGIC + _encoder.encode(op)


def is_member_op(command: bytes) -> bool:
    """True if ``command`` is a member operation (not an application command)."""
    return command[:1] == b"\xc1" and command.startswith(MEMBER_MAGIC)


def decode_member_op(command: bytes) -> MemberOp:
    """The operation ``command`` asks for; ``ValueError`` saying what is wrong."""
    try:
        op = _decoder.decode(command[len(MEMBER_MAGIC) :])
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ValueError(f"malformed member operation: {e}") from None
    if op.op not in MEMBER_OPS:
        raise ValueError(f"unknown member operation {op.op!r} (one of {', '.join(MEMBER_OPS)})")
    if op.op in ("add", "promote", "remove", "replace") and op.node < 1:
        raise ValueError(f"{op.op}: a node id >= 1 is needed")
    if op.op == "replace" and (op.new < 1 or op.new == op.node):
        raise ValueError("replace: a new node id >= 1, other than the one replaced, is needed")
    if op.op in ("add", "replace") and op.address and not _plausible_address(op.address):
        raise ValueError(f"{op.op}: address {op.address!r} is not host:port")
    if op.q1 < 0 or op.q2 < 0:
        raise ValueError(f"{op.op}: quorum sizes must be >= 0 (0: a majority)")
    return op


def _plausible_address(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isdigit() and 1 <= int(port) <= 65535 and len(text) < 300)


def config_json(config: Configuration) -> dict[str, Any]:
    """A configuration as JSON."""
    return {
        "epoch": config.epoch,
        "voters": list(config.voters),
        "learners": list(config.learners),
        "q1": config.q1,
        "q2": config.q2,
        "alpha": config.alpha,
        "addresses": {str(n): a for n, a in config.addresses},
    }


def config_from_json(doc: Any) -> Configuration:
    """The configuration ``config_json`` wrote; ``ValueError`` if it is not one."""
    try:
        return Configuration(
            int(doc["epoch"]),
            tuple(int(n) for n in doc["voters"]),
            tuple(int(n) for n in doc.get("learners", ())),
            int(doc.get("q1", 0)),
            int(doc.get("q2", 0)),
            int(doc["alpha"]),
            tuple((int(n), str(a)) for n, a in dict(doc.get("addresses", {})).items()),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"not a configuration: {e}") from None


@dataclass
class _Request:
    """A change being worked on at the leader."""

    client: int
    seq: int
    reply_to: int
    op: MemberOp
    started: float
    round_started: float = 0.0
    round_index: int = 0
    """Our first unchosen slot when the current progress round began."""
    asked: set[int] = field(default_factory=set)
    answers: dict[int, dict[str, Any]] = field(default_factory=dict)
    probe: int = 0
    epoch: int = 0
    """The epoch proposed (0: not proposed yet)."""


class MemberDesk:
    """Member operations at one node (see the module notes)."""

    def __init__(
        self,
        replica: Replica,
        *,
        round_seconds: float | None = None,
        catchup_seconds: float = 3.0,
        applied: Callable[[], int] = lambda: 0,
    ) -> None:
        self.replica = replica
        self.round_seconds = (
            round_seconds
            if round_seconds is not None
            else max(1.0, 2 * replica.config.election_timeout[1])
        )
        """How long a progress round waits for the members' answers at most (it ends as
        soon as all have answered): long enough for a loaded node to answer, since a
        node that does not is taken for down."""
        self.catchup_seconds = catchup_seconds
        """How long a promotion waits for its learner to catch up before refusing."""
        self.applied = applied
        """This node's applied slot (for progress answers)."""
        self.addresses: Callable[[], Mapping[int, str]] = dict
        """The peer addresses this node knows (the server's address book): filled into
        every configuration the desk proposes."""
        self.requests: dict[tuple[int, int], _Request] = {}
        self.answered: dict[tuple[int, int], tuple[dict[str, Any] | None, str | None]] = {}
        """The answers to the last ``ANSWERS_KEPT`` requests, by ``(client, seq)``: a
        client that retries (its answer was lost) gets the same answer again."""
        self.heard: set[int] = set()
        """Nodes this node has had a link up to (``ServiceNode.link_changed``): they
        have run, so an id among them that joins again is not new (it rebuilds)."""
        self._probe = 0
        self.changes = 0
        """Changes proposed (counter)."""
        self.refused = 0
        """Requests refused (counter)."""

    # -- inputs ---------------------------------------------------------------------------

    def take(self, msg: ClientRequest) -> bool:
        """Handle ``msg`` if it is a member operation this node must answer (True); a
        follower leaves the others to be forwarded (False)."""
        if not is_member_op(msg.command):
            return False
        try:
            op = decode_member_op(msg.command)
        except ValueError as e:
            self._answer(msg.src, msg.client, msg.seq, error=str(e))
            return True
        if op.op == "progress":
            self._answer(msg.src, msg.client, msg.seq, result=self._progress())
            return True
        if not self.replica.is_leader:
            return False  # forwarded to the leader (or refused: no leader yet)
        key = (msg.client, msg.seq)
        if key in self.requests:
            self.requests[key].reply_to = msg.src
            return True
        if key in self.answered:  # a retry of a request answered here: the same answer
            result, error = self.answered[key]
            self._answer(msg.src, msg.client, msg.seq, result=result, error=error)
            return True
        if op.op == "list":
            self._answer(msg.src, msg.client, msg.seq, result=self.describe(op.node))
            return True
        request = _Request(msg.client, msg.seq, msg.src, op, self.replica.now)
        done, why = self._precheck(op)
        if done is not None or why is not None:
            self._finish(request, result=done, error=why)
            return True
        self.requests[key] = request
        self._start_round(request)
        return True

    def on_reply(self, msg: ClientReply) -> None:
        """An answer to one of our progress questions."""
        for request in self.requests.values():
            if request.probe == msg.seq and msg.src in request.asked:
                try:
                    doc = json.loads(msg.result) if msg.ok and not msg.error else None
                except ValueError:
                    doc = None
                if isinstance(doc, dict):
                    request.answers[msg.src] = doc
                return

    def poll(self) -> None:
        """Move every request on (rounds, proposals, answers); call once per pass."""
        if not self.requests:
            return
        replica = self.replica
        now = replica.now
        for request in list(self.requests.values()):
            if request.epoch and replica.configuration.epoch >= request.epoch:
                self._chosen(request)  # in force here (a leader that removed itself too)
                continue
            if not replica.is_leader:
                self._finish(request, retry=True)  # the client asks the next leader
                continue
            if request.epoch:
                if not replica.change_in_flight():
                    self._chosen(request)  # chosen but not effective: says why
                continue
            everyone = request.asked <= set(request.answers)
            if everyone or now - request.round_started >= self.round_seconds:
                self._decide(request)

    # -- describing -----------------------------------------------------------------------

    def describe(self, joining: int = 0) -> dict[str, Any]:
        """The membership as this node knows it (``op="list"``); with ``joining``, what
        a node of that id needs to join (``server.peerbook``): the oldest configuration
        this node knows (the joiner's founding one), and whether it is a member this
        node has never heard from."""
        replica = self.replica
        m = replica.membership
        book = dict(self.addresses())
        for config in m.configs:
            book.update(config.addresses)
        current = replica.configuration
        extra: dict[str, Any] = {}
        if joining:
            extra = {
                "founding": config_json(m.configs[0]),
                "joining": {
                    "node": joining,
                    "member": joining in m.latest.nodes,
                    "voter": joining in m.latest.voters,
                    "removed": joining in m.retired,
                    "heard": joining in self.heard,
                },
            }
        return {
            "node": replica.node_id,
            "leader": replica.leader if replica.role is not Role.LEADER else replica.node_id,
            "epoch": current.epoch,
            "voters": list(current.voters),
            "learners": list(current.learners),
            "q1": current.q1,
            "q2": current.q2,
            "configurations": [
                {"from_slot": start, **config_json(c)} for start, c in replica.configurations()
            ],
            "change_in_flight": replica.change_in_flight(),
            "removed": sorted(m.retired),
            "addresses": {str(n): a for n, a in sorted(book.items())},
            "first_unchosen": replica.first_unchosen,
            **extra,
        }

    def _progress(self) -> dict[str, Any]:
        replica = self.replica
        return {
            "node": replica.node_id,
            "first_unchosen": replica.first_unchosen,
            "applied": self.applied(),
            "removed": replica.removed,
            "rebuilding": replica.rebuilding,
            "epoch": replica.configuration.epoch,
        }

    # -- the steps ------------------------------------------------------------------------

    def _precheck(self, op: MemberOp) -> tuple[dict[str, Any] | None, str | None]:
        """(an answer if the request is already done, a refusal if it must be)."""
        replica = self.replica
        m = replica.membership
        latest = m.latest
        node = op.node
        if op.op == "add":
            if node in latest.learners and (
                not op.address or latest.address_of(node) in (None, op.address)
            ):
                return self._done(f"node {node} is already a learner"), None
            if node in latest.voters:
                return None, f"node {node} is already a voter"
            if node in m.retired:
                return None, f"node {node} was removed; a removed id is never reused"
        elif op.op == "promote":
            if node in latest.voters:
                return self._done(f"node {node} is already a voter"), None
            if node not in latest.learners:
                return None, f"node {node} is not a learner (add it first: member add)"
        elif op.op == "remove":
            if node in m.retired or (node not in latest.nodes and node in _named(m.configs)):
                return self._done(f"node {node} is already removed"), None
            if node not in latest.nodes:
                return None, f"node {node} is not a member (members: {list(latest.nodes)})"
        elif op.op == "replace":
            if op.new in latest.voters and node not in latest.nodes:
                return self._done(f"node {node} was already replaced by node {op.new}"), None
            if node not in latest.voters:
                return None, f"node {node} is not a voter (voters: {list(latest.voters)})"
            if op.new in latest.nodes:
                return None, f"node {op.new} is already a member"
            if op.new in m.retired:
                return None, f"node {op.new} was removed; a removed id is never reused"
        if op.op in ("add", "replace") and op.address:
            owner = self._address_owner(op.address, leaving=node if op.op == "replace" else 0)
            if owner is not None:
                return None, (
                    f"address {op.address} is node {owner}'s, a member: a new node needs an "
                    "address of its own (replace that node to reuse its address)"
                )
        if replica.change_in_flight():
            return None, (
                "another membership change is in flight: one change at a time "
                f"(epoch {latest.epoch} in force from slot {m.starts[-1]}); try again shortly"
            )
        try:
            self._next_config(op)
        except ConfigChangeError as e:
            return None, str(e)
        return None, None

    def _address_owner(self, address: str, *, leaving: int) -> int | None:
        """The member (other than ``leaving``, a voter being replaced) whose peer address
        is ``address``, if one is: two members dialed at one address would never both
        be reached (the handshake names one of them)."""
        latest = self.replica.membership.latest
        book = dict(self.addresses())
        book.update(latest.addresses)
        for node in latest.nodes:
            if node != leaving and book.get(node) == address:
                return node
        return None

    def _next_config(self, op: MemberOp) -> Configuration:
        latest = self.replica.membership.latest
        if op.op == "add":
            config = latest.add_learner(op.node, op.address)
        elif op.op == "promote":
            config = latest.promote(op.node, q1=op.q1, q2=op.q2)
        elif op.op == "remove":
            config = latest.remove(op.node, q1=op.q1, q2=op.q2)
        else:
            config = latest.replace(op.node, op.new, q1=op.q1, q2=op.q2, address=op.address)
        why = self.replica.membership.check(config)
        if why is not None:
            raise ConfigChangeError(why)
        return config.with_addresses(self.addresses())

    def _start_round(self, request: _Request) -> None:
        replica = self.replica
        self._probe += 1
        request.probe = self._probe
        request.round_started = replica.now
        request.round_index = replica.first_unchosen
        request.answers = {}
        targets = set(replica.membership.latest.nodes) | {request.op.node, request.op.new}
        targets -= {0, replica.node_id}
        request.asked = targets
        question = encode_member_op(MemberOp(op="progress"))
        probe = ClientRequest(replica.node_id, PROBE_CLIENT, request.probe, question)
        if targets:
            replica.post(tuple(sorted(targets)), probe)

    def _decide(self, request: _Request) -> None:
        replica = self.replica
        op = request.op
        done, why = self._precheck(op)  # the world may have moved during the round
        if done is not None or why is not None:
            self._finish(request, result=done, error=why)
            return
        # A node rebuilding its state (a wiped disk) answers, but votes in nothing yet.
        live = {replica.node_id} | {
            n
            for n, doc in request.answers.items()
            if not doc.get("removed") and not doc.get("rebuilding")
        }
        if op.op == "promote":
            doc = request.answers.get(op.node)
            behind = None
            if doc is None:
                behind = f"node {op.node} did not answer (not running, or unreachable)"
            elif int(doc.get("first_unchosen", 0)) < request.round_index:
                behind = (
                    f"node {op.node} is not caught up: it has learned the slots below "
                    f"{doc.get('first_unchosen')}, the leader had chosen those below "
                    f"{request.round_index}"
                )
            if behind is not None:
                if replica.now - request.started < self.catchup_seconds:
                    self._start_round(request)
                    return
                self._finish(request, error=f"{behind}; not promoted")
                return
        config = self._next_config(op)
        latest = replica.membership.latest
        for which, c in (("current", latest), ("new", config)):
            if not c.live_quorums(live):
                dead = sorted(set(c.voters) - live)
                self._finish(
                    request,
                    error=(
                        f"refused: the {which} configuration (voters {list(c.voters)}, "
                        f"q1={c.q1}, q2={c.q2}) would have no live quorum; the leader "
                        f"hears from {sorted(live)}, not from {dead}"
                    ),
                )
                return
        try:
            request.epoch = replica.propose_configuration(config)
        except ConfigChangeError as e:
            self._finish(request, error=str(e))
            return
        self.changes += 1

    def _chosen(self, request: _Request) -> None:
        m = self.replica.membership
        if m.latest.epoch >= request.epoch:
            start = m.starts[-1] if m.latest.epoch == request.epoch else None
            self._finish(
                request,
                result={
                    "done": f"{request.op.op} {_describe(request.op)}: epoch {request.epoch}",
                    "epoch": request.epoch,
                    "from_slot": start,
                    "configuration": config_json(m.latest),
                },
            )
            return
        why = m.refused[-1][1] if m.refused else "not effective"
        self._finish(request, error=f"the change was chosen but not effective: {why}")

    def _done(self, what: str) -> dict[str, Any]:
        latest = self.replica.membership.latest
        return {"done": what, "epoch": latest.epoch, "configuration": config_json(latest)}

    # -- answers --------------------------------------------------------------------------

    def _finish(
        self,
        request: _Request,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        retry: bool = False,
    ) -> None:
        self.requests.pop((request.client, request.seq), None)
        if retry:
            leader = self.replica.leader if self.replica.leader != self.replica.node_id else 0
            reply = ClientReply(
                self.replica.node_id, request.client, request.seq, False, b"", leader
            )
            self.replica.post((request.reply_to,), reply)
            return
        self.answered[(request.client, request.seq)] = (result, error)
        while len(self.answered) > ANSWERS_KEPT:
            del self.answered[next(iter(self.answered))]
        self._answer(request.reply_to, request.client, request.seq, result=result, error=error)

    def _answer(
        self,
        dst: int,
        client: int,
        seq: int,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        replica = self.replica
        if error is not None:
            self.refused += 1
            body = json.dumps({"error": error}).encode()
        else:
            body = json.dumps(result or {}).encode()
        leader = replica.node_id if replica.is_leader else replica.leader
        replica.post((dst,), ClientReply(replica.node_id, client, seq, True, body, leader, error))


def _named(configs: list[Configuration]) -> set[int]:
    out: set[int] = set()
    for c in configs:
        out.update(c.nodes)
    return out


def _describe(op: MemberOp) -> str:
    if op.op == "replace":
        return f"node {op.node} by node {op.new}"
    return f"node {op.node}"
