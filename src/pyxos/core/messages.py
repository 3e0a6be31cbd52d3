"""Every protocol message of pyxos, as frozen, typed structs.

Theory of operation
-------------------
One module holds every message so that the wire codec can decode a frame strictly into
exactly one of these types (a tagged union) and the core can dispatch with ``match``.
Messages are ``msgspec.Struct`` values: frozen, slotted, encoded as compact msgpack
arrays whose first element is the type tag. Every message names its sender (``src``);
the destination is the driver's business (``Send.to``), so one encoded broadcast serves
every recipient. Values (commands, batches of commands) are opaque ``bytes`` to the
core: a follower never decodes a batch it only has to store.

Single-decree (Basic) Paxos and Multi-Paxos share the textbook messages; a single
decree is slot 0.

- ``Prepare(b, slot)``: phase 1a, for every slot >= ``slot``.
- ``Promise(b, accepted)``: phase 1b; ``accepted`` lists the acceptor's accepted
  entries from the prepared slot on (``Entry(slot, ballot, value)``).
- ``Accept(b, slot, values, chosen)``: phase 2a for the consecutive slots
  ``slot, slot+1, ...``; ``chosen`` piggybacks the leader's commit point.
- ``Accepted(b, slot, count)``: phase 2b for ``count`` consecutive slots.
- ``Nack(b, promised)``: ``b`` was refused because the acceptor promised ``promised``.
- ``Decided(slot, values, end)``: the chosen values of consecutive slots (learning,
  catch-up); ``end`` is where the whole reply to the Fetch ends.
- ``Commit(b, chosen)``: leader heartbeat; every slot below ``chosen`` was chosen, and
  a follower whose entry at such a slot was accepted in ballot ``b`` holds its value.
- ``ReadAck(b, read)``: an acceptor confirms a leader's read probe (read-index).
- ``Fetch(slot, end)``: ask a peer for the chosen values of ``[slot, end)``.
- ``PreVote(b, first_unchosen)`` / ``PreVoteReply(b, granted)``: before a node raises
  any promise to run for leader, it asks whether a quorum has lost its leader too
  (pre-vote), so a node that was partitioned away cannot depose a healthy leader when
  it returns, and whether it is far behind them (then it must not lead).
- ``RebuildQuery(nonce)`` / ``RebuildInfo(nonce)``: a node that lost its acceptor
  state (corrupt or wiped disk), or is bootstrapping, asks every peer for its promised
  ballot and the last slot it accepted, and whether it ever held any state at all.
  Before it answers, the peer durably fences every ballot the asker owns (fence
  ``nonce``); the answer echoes the nonce, so an answer to an earlier incarnation's
  query is not counted.
- ``FenceLift(nonce, bound)``: the rebuilt node lifts fence ``nonce``: only its
  ballots up to ``bound`` stay refused. ``Fenced(nonces)``: a refusal because those
  fences are still up (the owner lifts them).
- ``Removed(node, epoch, reason)``: the answer to any message from a node that a
  configuration change removed (configuration ``epoch`` is in force at the sender):
  it stops voting and running for good (see "Membership" in ``core/replica.py``).
- ``TransferRequest(b, index)`` / ``TransferReady(b, first_unchosen)`` /
  ``TimeoutNow(b, target)``: leader transfer. The leader of ``b`` asks the target
  whether it has learned every slot below ``index``; the target answers once it has;
  the leader then gives up its lease and tells every peer that the target is to
  campaign at once (the target skips the pre-vote; the others drop the lease they
  granted to ballot ``b``). See ``core/replica.py``, *Leader transfer*.
- ``ClientRequest`` / ``ClientReply``: a client's command and its result.
- ``ClientRequests`` / ``ClientReplies``: many of them in one message (one frame on a
  client connection of client protocol 2, ``net.codec``): a client multiplexing many
  sessions over one connection sends those of one event-loop pass together, and a
  leader answers the commands of one slot for one connection together, so each side
  decodes and encodes one frame, not one per command. Never sent between peers (the
  server's router sends a peer the replies one by one) nor made in the simulator.
"""

from __future__ import annotations

import msgspec

from pyxos.core.ballot import Ballot

__all__ = [
    "Accept",
    "Accepted",
    "ClientReplies",
    "ClientReply",
    "ClientRequest",
    "ClientRequests",
    "Commit",
    "Decided",
    "Entry",
    "Fence",
    "FenceLift",
    "Fenced",
    "Fetch",
    "Message",
    "Nack",
    "PreVote",
    "PreVoteReply",
    "Prepare",
    "Promise",
    "ReadAck",
    "RebuildInfo",
    "RebuildQuery",
    "Removed",
    "Snapshot",
    "SnapshotRequest",
    "TimeoutNow",
    "TransferReady",
    "TransferRequest",
]


class Entry(msgspec.Struct, frozen=True, array_like=True):
    """An accepted (or chosen) value at one slot, with the ballot it was accepted in."""

    slot: int
    ballot: Ballot
    value: bytes


class Fence(msgspec.Struct, frozen=True, array_like=True):
    """One change to the fences this acceptor holds against ``owner``'s ballots.

    ``bound=None`` puts up fence ``nonce``: every ballot ``owner`` owns is refused (the
    answer to ``owner``'s rebuild query ``nonce`` leaves only once this is durable).
    A ballot ``bound`` lifts fence ``nonce``: from then on only ``owner``'s ballots up to
    ``bound`` are refused. See "Rebuilding" in ``core/replica.py``.
    """

    owner: int
    nonce: int
    bound: Ballot | None = None


class Prepare(msgspec.Struct, frozen=True, array_like=True, tag="prepare"):
    """Phase 1a: "promise me ``ballot`` for every slot >= ``slot``"."""

    src: int
    ballot: Ballot
    slot: int = 0


class Promise(msgspec.Struct, frozen=True, array_like=True, tag="promise"):
    """Phase 1b: the acceptor promised ``ballot`` and reports what it has accepted.

    ``log_start`` is the first slot whose accepted entry the acceptor still holds:
    below it, the entries were chosen, applied and compacted into a snapshot, so a new
    leader must not re-propose those slots from this promise (it fetches them).
    """

    src: int
    ballot: Ballot
    accepted: tuple[Entry, ...] = ()
    log_start: int = 0


class Accept(msgspec.Struct, frozen=True, array_like=True, tag="accept"):
    """Phase 2a: accept ``values[i]`` at slot ``slot + i`` in ``ballot``."""

    src: int
    ballot: Ballot
    slot: int
    values: tuple[bytes, ...]
    chosen: int = 0


class Accepted(msgspec.Struct, frozen=True, array_like=True, tag="accepted"):
    """Phase 2b: the acceptor accepted ``ballot`` at ``count`` slots from ``slot``."""

    src: int
    ballot: Ballot
    slot: int
    count: int = 1


class Nack(msgspec.Struct, frozen=True, array_like=True, tag="nack"):
    """``ballot`` was refused: the acceptor has promised the higher ``promised``."""

    src: int
    ballot: Ballot
    promised: Ballot
    leader: int = 0


class Decided(msgspec.Struct, frozen=True, array_like=True, tag="decided"):
    """``values[i]`` was chosen at slot ``slot + i``.

    ``end``: where the whole reply to a Fetch this message belongs to ends (a reply may
    be several Decided messages), so the asker can ask for what follows at once.
    """

    src: int
    slot: int
    values: tuple[bytes, ...]
    end: int = 0


class Commit(msgspec.Struct, frozen=True, array_like=True, tag="commit"):
    """Leader heartbeat: every slot below ``chosen`` is chosen (see module notes).

    A nonzero ``read`` asks each acceptor to confirm (``ReadAck``) that it has promised
    nothing above ``ballot``: the read-index check of linearizable reads.
    """

    src: int
    ballot: Ballot
    chosen: int
    read: int = 0


class ReadAck(msgspec.Struct, frozen=True, array_like=True, tag="read-ack"):
    """The acceptor had promised nothing above ``ballot`` when read probe ``read`` came."""

    src: int
    ballot: Ballot
    read: int


class Fetch(msgspec.Struct, frozen=True, array_like=True, tag="fetch"):
    """Catch-up: send me the chosen values of slots ``[slot, end)``."""

    src: int
    slot: int
    end: int


class SnapshotRequest(msgspec.Struct, frozen=True, array_like=True, tag="snapreq"):
    """Catch-up past compaction: send the snapshot from byte ``offset`` on."""

    src: int
    slot: int
    offset: int = 0


class Snapshot(msgspec.Struct, frozen=True, array_like=True, tag="snapshot"):
    """One chunk of a state-machine snapshot taken after applying slots < ``slot``."""

    src: int
    slot: int
    offset: int
    data: bytes
    total: int


class PreVote(msgspec.Struct, frozen=True, array_like=True, tag="prevote"):
    """Would you support a phase 1 at ``ballot``? (Changes no acceptor state.)

    ``first_unchosen``: the asker's first unchosen slot; a peer that has learned far
    more refuses, so a node far behind does not lead (its phase 1 would re-propose
    its whole gap).
    """

    src: int
    ballot: Ballot
    first_unchosen: int = 0


class PreVoteReply(msgspec.Struct, frozen=True, array_like=True, tag="prevote-reply"):
    """The answer to a PreVote: granted unless a live leader was heard from recently."""

    src: int
    ballot: Ballot
    granted: bool
    leader: int = 0


class RebuildQuery(msgspec.Struct, frozen=True, array_like=True, tag="rebuild-query"):
    """From a node rebuilding lost acceptor state: report your promise and last slot,
    once every ballot I own is durably fenced (fence ``nonce``, one per incarnation)."""

    src: int
    nonce: int = 0


class RebuildInfo(msgspec.Struct, frozen=True, array_like=True, tag="rebuild-info"):
    """A peer's promised ballot and the highest slot it ever accepted (or its log start);
    ``rebuilding``: the peer lost its own state too (or is bootstrapping), and its
    figures bound nothing; ``fresh``: the peer has never held any state (it is
    bootstrapping, or a member that has promised, accepted and learned nothing);
    ``nonce``: the query's, whose fence was durable before these figures were taken;
    ``fences``: the fences the peer holds against every node's ballots, and one
    against its own earlier incarnations' ballots (a rebuilding asker adopts them:
    its own lost disk may have held some)."""

    src: int
    promised: Ballot
    last_slot: int
    rebuilding: bool = False
    fresh: bool = False
    nonce: int = 0
    fences: tuple[Fence, ...] = ()


class FenceLift(msgspec.Struct, frozen=True, array_like=True, tag="fence-lift"):
    """The sender's rebuild is over (or it votes again): lift fence ``nonce``; keep
    refusing the sender's ballots up to ``bound`` (its old incarnations' ballots), and
    no others."""

    src: int
    nonce: int
    bound: Ballot


class Fenced(msgspec.Struct, frozen=True, array_like=True, tag="fenced"):
    """A ballot of yours was refused: fences ``nonces`` against you are still up."""

    src: int
    nonces: tuple[int, ...]


class Removed(msgspec.Struct, frozen=True, array_like=True, tag="removed"):
    """Refused: ``node`` was removed from the cluster (configuration ``epoch`` is in
    force at the sender, and does not name it); ``reason`` says so in words."""

    src: int
    node: int
    epoch: int
    reason: str = ""


class TransferRequest(msgspec.Struct, frozen=True, array_like=True, tag="transfer-request"):
    """The leader of ``ballot`` asks the target of a leader transfer to say when it has
    learned every slot below ``index`` (all of them chosen)."""

    src: int
    ballot: Ballot
    index: int


class TransferReady(msgspec.Struct, frozen=True, array_like=True, tag="transfer-ready"):
    """The target of a transfer has learned every slot below ``first_unchosen``."""

    src: int
    ballot: Ballot
    first_unchosen: int


class TimeoutNow(msgspec.Struct, frozen=True, array_like=True, tag="timeout-now"):
    """The leader of ``ballot`` has given up its lease for good in that ballot:
    ``target`` campaigns at once, and every acceptor drops the lease it granted to
    ``ballot``."""

    src: int
    ballot: Ballot
    target: int


class ClientRequest(msgspec.Struct, frozen=True, array_like=True, tag="req"):
    """A client's command: ``(client, seq)`` makes retries idempotent.

    ``command`` is the application's command bytes, or, with ``query``, a read-only
    question answered without the log (lease or read-index).
    """

    src: int
    client: int
    seq: int
    command: bytes
    query: bool = False


class ClientReply(msgspec.Struct, frozen=True, array_like=True, tag="rep"):
    """The result of ``(client, seq)``, or a redirect when ``ok`` is false.

    ``leader`` is the replying node's best guess of the leader (0 when unknown).
    ``error`` (with ``ok``) says the command or query was refused or failed: it did not
    pass the application's ``validate``, or raised; ``result`` then holds the
    application's own encoding of the refusal, if it has one. ``error`` without ``ok``:
    the node turned the request away before any of it reached a log, for that reason
    (its disk is full); a refusal without ``error`` may follow a request that was taken.
    """

    src: int
    client: int
    seq: int
    ok: bool
    result: bytes = b""
    leader: int = 0
    error: str | None = None


class ClientRequests(msgspec.Struct, frozen=True, array_like=True, tag="reqs"):
    """Requests of one client connection in one frame (their ``src`` is ignored: the
    node that receives them sets it to the connection's)."""

    src: int
    requests: list[ClientRequest]


class ClientReplies(msgspec.Struct, frozen=True, array_like=True, tag="reps"):
    """Replies for one destination in one message (in the order they were made)."""

    src: int
    replies: list[ClientReply]


Message = (
    Prepare
    | Promise
    | Accept
    | Accepted
    | Nack
    | Decided
    | Commit
    | Fetch
    | SnapshotRequest
    | Snapshot
    | PreVote
    | PreVoteReply
    | RebuildQuery
    | RebuildInfo
    | FenceLift
    | Fenced
    | Removed
    | ReadAck
    | TransferRequest
    | TransferReady
    | TimeoutNow
    | ClientRequest
    | ClientReply
    | ClientRequests
    | ClientReplies
)
"""Every message a pyxos process sends or receives."""
