"""A replicated service node: a Multi-Paxos replica, a state machine and its clients.

Theory of operation
-------------------
:class:`ServiceNode` is pure, like the replica it wraps, and offers the same driver
contract (``step / tick / ready / advance / next_deadline``), so the simulator and the
real server drive it identically. It adds what sits between clients and the log:

- **Client requests.** A ``ClientRequest`` at a node that does not lead is forwarded
  to the leader it knows (the reply comes back the same way), as etcd forwards
  proposals; with ``forward=False`` it is answered with a redirect naming that leader.
  A follower forwards only to a leader it can use: while it follows one (role
  follower, not running for election) and the driver has not reported the link to it
  down (``link_changed``). Otherwise it answers at once "no leader yet"
  (``ClientReply(ok=False, leader=0)``) instead of forwarding into silence, and the
  client tries another node after a short pause. Requests it forwarded are failed back
  the same way, at once, when it loses that leader: the link to it goes down, it
  stops following it (election timeout, a new ballot), or another leader takes over.
  What such a refusal tells the client, precisely: nothing about whether the command
  entered the log. A request refused before it was forwarded did not, but one
  forwarded to a leader that then died may sit in a slot the next leader re-proposes.
  So a refusal is never an outcome: the client retries, elsewhere, with the SAME
  ``(client, seq)``, and the session table applies it at most once either way.
  At the leader, the application's ``validate`` (if it has one) looks at the command
  once (garbage gets an error reply and never reaches the log) and its bytes join the
  batch of this pass. A duplicate of a request in flight here only updates where the
  reply goes. Any other retry goes through the log like a new command: exactly-once
  lives in one place, the session table of the ``ReplicatedApp``, which answers a retry
  with the stored result instead of applying it again.
- **Queries** (``ClientRequest.query``) do not go through the log: the replica releases
  them (under its lease, or once a quorum confirmed the leadership after the query
  arrived, and in both cases once every slot below the read index is applied), and the
  application's ``query`` answers them from local state. They need no session entry:
  they change nothing. The queries of one pass are handed to the replica as *one*
  read (``ready()``, before this pass's batch is proposed): one read-index check and
  one entry for the whole batch, released together and answered in one loop. Taking
  the index at the end of the pass rather than at each query's arrival is no weaker:
  the index only grows, and the lease (or the probe) is checked then, after every
  query of the batch arrived (docs/architecture.md, *Reads*).
- **Batching.** Everything that arrived since the last ``ready()`` becomes *one* slot
  value: a msgpack array of ``(client, seq, command)``, the command bytes as the
  client sent them. Batches grow with load by themselves; a lone client pays no wait.
- **Applying.** ``ready()`` applies the replica's newly chosen slots to the
  ``ReplicatedApp`` in slot order, exactly once, and answers every request this node
  is holding with the result bytes (``send_now``: a chosen value is already durable on
  a quorum).
- **Snapshots and compaction.** Every ``snapshot_every`` applied slots, or every
  ``snapshot_bytes`` bytes of applied slot values, whichever comes first, the node hands
  the driver a snapshot (``Ready.snapshot``); once the driver reports it durable
  (``snapshot_durable``), the replica forgets the chosen values and accepted entries
  below it. A snapshot that failed to write is simply taken again later.
- **InstallSnapshot.** A Fetch for slots this node compacted away, or for a gap of
  ``catchup_snapshot_slots`` slots or more, is answered with an announcement of a
  snapshot (a ``Snapshot`` chunk with no data) instead of the slots: replaying a long
  log costs the lagging node every command ever written in it, a snapshot costs the
  size of the state, so catch-up outpaces any write rate. The snapshot is the newest
  durable one, or, if that is ``catchup_snapshot_slots`` behind the applied state, one
  taken now from the applied state (kept in memory for serving; one per that many
  applied slots at most). The lagging node then pulls it in chunks
  (``SnapshotRequest(slot, offset)``), up to ``snapshot_window`` requests in flight once
  the first chunk told it the server's chunk size (one at a time, one round trip per
  chunk, moved 10 MB/s on loopback), keeping a chunk that overtook an earlier one,
  resuming from what arrived in order after a loss, sends no Fetch meanwhile, restores
  it, and catches up the log after it. The server keeps no state per transfer.
- **Membership.** A configuration entry in the log (``core/membership.py``) is the
  replica's business: it is applied to the application as a no-op. A snapshot carries
  the membership of the slots it covers (the configuration in force and the pending
  ones, the removed ids: ``wrap_snapshot``), so a node that catches up by snapshot knows
  which configuration governs the slots after it; a snapshot of a cluster whose
  membership never changed keeps the plain format.
- **Member operations** (``pyxos member``, ``/v1/members``) are client commands
  that start with ``MEMBER_MAGIC``: forwarded to the leader like any command, and
  there taken by the ``MemberDesk`` (``statemachine.members``), never the application.
- **Audit.** With ``audit_with(fn)`` (the simulator's divergence check), the node
  reports, after every slot it applies, ``fn(node, applied_slot, state_digest,
  results_digest)``: the digest of the sessions and the application's state (see
  ``statemachine.replicated``) and a digest of the results
  that slot produced; after a snapshot is restored, the same with ``results_digest``
  None. Replicas that reached the same ``applied_slot`` must report the same digests.
  Without an auditor nothing is hashed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from hashlib import blake2b
from typing import Any, cast

import msgspec

from pyxos.core.membership import MembershipState, is_config_entry
from pyxos.core.messages import (
    ClientReplies,
    ClientReply,
    ClientRequest,
    ClientRequests,
    Fetch,
    Message,
    Snapshot,
    SnapshotRequest,
)
from pyxos.core.ready import Ready, Send
from pyxos.core.replica import Replica, Role
from pyxos.statemachine.base import Application, Applied
from pyxos.statemachine.members import PROBE_CLIENT, MemberDesk
from pyxos.statemachine.replicated import (
    DEFAULT_MAX_SESSIONS,
    PROCESS_EXITS,
    ReplicatedApp,
    encode_batch,
)

__all__ = ["AuditFn", "ServiceNode", "results_digest", "unwrap_snapshot", "wrap_snapshot"]

AuditFn = Callable[[int, int, int, "int | None"], None]
"""``fn(node, applied_slot, state_digest, results_digest)``: see "Audit" above."""

SNAPSHOT_CHUNK = 1024 * 1024
"""Bytes of snapshot per Snapshot message."""
SNAPSHOT_WINDOW = 8
"""Chunk requests a node receiving a snapshot keeps in flight (``snapshot_window``)."""
SNAPSHOT_EVERY = 10_000
"""Default: take a snapshot (then compact the log) every this many applied slots."""
SNAPSHOT_BYTES = 16 * 1024 * 1024
"""Default: ... or once this many bytes of slot values were applied since the last one.
16 MiB, not 64: a restart replays up to this much log after loading the snapshot, and at
1 million keys of 100 B the 64 MiB budget took a follower 10.5 s to catch up after a
restart, 16 MiB 6.0 s (``pyxos bench recovery``; README, Performance)."""
CATCHUP_SNAPSHOT_SLOTS = 2048
"""A Fetch for a gap of this many slots or more is answered with a snapshot."""
FORWARD_TIMEOUT = 30.0
"""Seconds a forwarded request waits for the leader's reply before it is forgotten."""


class _Transfer:
    """A snapshot being received: which one, and how much of it has arrived."""

    __slots__ = (
        "ahead",
        "chunk",
        "chunks",
        "progress_at",
        "received",
        "requested",
        "retry_at",
        "slot",
        "source",
        "total",
    )

    def __init__(self, slot: int, total: int, source: int, retry_at: float) -> None:
        self.slot = slot
        self.total = total
        self.source = source
        self.chunks: list[bytes] = []
        """What arrived in order (joined once, at the end: no copy per chunk)."""
        self.received = 0
        """Bytes in ``chunks``."""
        self.ahead: dict[int, bytes] = {}
        """Chunks from ``source`` that arrived before an earlier one, by offset."""
        self.chunk = 0
        """The source's chunk size, once a chunk showed it (0: not yet)."""
        self.requested = 0
        """Offsets below this were asked for since the last resumption."""
        self.retry_at = retry_at
        self.progress_at = retry_at
        """When it started or last received a chunk."""

    def take(self, offset: int, data: bytes) -> bool:
        """Keep a chunk; True if it added bytes in order (then also those of the chunks
        that overtook it)."""
        if not offset <= self.received < offset + len(data):
            return False
        while True:
            self.chunks.append(data if offset == self.received else data[self.received - offset :])
            self.received = offset + len(data)
            while self.ahead:
                offset = min(self.ahead)
                if offset > self.received:
                    return True
                data = self.ahead.pop(offset)
                if offset + len(data) > self.received:
                    break
            else:
                return True


_raw_encoder = msgspec.msgpack.Encoder()

SNAPSHOT_MAGIC = b"\xc1pyxos-snapshot\x00"
"""Prefix of a snapshot that carries membership (0xc1: never the first byte of msgpack,
so an application's plain snapshot is told apart)."""


class _Wrapped(msgspec.Struct, array_like=True):
    membership: MembershipState
    app: bytes | memoryview


class _WrappedView(msgspec.Struct, array_like=True):
    """``_Wrapped`` as decoded: the application's bytes a view of the input, not a copy."""

    membership: MembershipState
    app: memoryview


_wrapped_decoder = msgspec.msgpack.Decoder(_WrappedView)


def wrap_snapshot(membership: MembershipState | None, app: bytes | memoryview) -> bytes:
    """A snapshot's bytes: the application's state, with the membership if it changed."""
    if membership is None:
        return bytes(app)
    return SNAPSHOT_MAGIC + _raw_encoder.encode(_Wrapped(membership, app))


def unwrap_snapshot(
    data: bytes | memoryview,
) -> tuple[MembershipState | None, bytes | memoryview]:
    """The membership (None: the founding one) and the application's bytes of a
    snapshot; ``ValueError`` if the membership part is damaged. The application's
    bytes are ``data`` or a view into it, never a copy (a snapshot may be 1 GB)."""
    if data[: len(SNAPSHOT_MAGIC)] != SNAPSHOT_MAGIC:
        return None, data
    try:
        wrapped = _wrapped_decoder.decode(memoryview(data)[len(SNAPSHOT_MAGIC) :])
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ValueError(f"not a pyxos snapshot: {e}") from None
    return wrapped.membership, wrapped.app


def results_digest(applied: Sequence[Applied]) -> int:
    """A 64-bit digest of the results one slot produced, in order (the audit's)."""
    data = _raw_encoder.encode(list(applied))
    return int.from_bytes(blake2b(data, digest_size=8, person=b"kv-results").digest(), "little")


def _send_grouped(me: int, grouped: dict[int, list[ClientReply]], sends: list[Send]) -> None:
    """One message per destination: its reply, or its replies as one ``ClientReplies``."""
    for dst, replies in grouped.items():
        sends.append(Send((dst,), replies[0] if len(replies) == 1 else ClientReplies(me, replies)))


class ServiceNode:
    """A replica plus the state machine it feeds and the client requests it serves."""

    def __init__(
        self,
        replica: Replica,
        app: Application | ReplicatedApp[Any],
        *,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        max_batch: int = 4096,
        snapshot_every: int = SNAPSHOT_EVERY,
        snapshot_bytes: int = SNAPSHOT_BYTES,
        snapshot_chunk: int = SNAPSHOT_CHUNK,
        snapshot_window: int = SNAPSHOT_WINDOW,
        on_applied: Callable[[int, int], None] | None = None,
        forward: bool = True,
        on_batch: Callable[[int], None] | None = None,
        catchup_snapshot_slots: int = CATCHUP_SNAPSHOT_SLOTS,
        batch_replies: bool = False,
    ) -> None:
        self.replica = replica
        self.batch_replies = batch_replies
        """Answer the commands applied in one pass, and the queries released in one
        pass, with one ``ClientReplies`` per destination (the server: its router writes
        each as one frame) instead of a ``ClientReply`` each (the simulator, whose
        clients each have one command in flight)."""
        state = (
            app if isinstance(app, ReplicatedApp) else ReplicatedApp(app, max_sessions=max_sessions)
        )
        self.state: ReplicatedApp[Any] = state
        """The applied state: the application, the client sessions, the applied slot."""
        self.app: Any = state.app
        """The application (typed ``Any``: its own type, e.g. ``KVStore``, for local reads)."""
        self.max_batch = max_batch
        self.waiting: dict[tuple[int, int], int] = {}
        """(client, seq) -> where to send its reply. Only requests this node proposed
        (or was asked about while they were in flight) are here."""
        self.batch: list[tuple[int, int, bytes]] = []
        self.queries: list[tuple[int, ClientRequest]] = []
        """The queries that arrived this pass, each with where its answer goes: one
        ``replica.read`` in ``ready()``."""
        self.on_applied = on_applied
        self.on_batch = on_batch
        """Called with the number of commands of every batch proposed (metrics)."""
        self.requests = 0
        self.rejected = 0
        self.forward = forward
        self.forwarded: dict[tuple[int, int], tuple[int, float, int]] = {}
        """(client, seq) -> (who asked us, when, the leader we forwarded it to)."""
        self.unreachable: set[int] = set()
        """Peers the driver reported our link to as down (``link_changed``): no
        forwarding to them. The simulator reports nothing (its links never close)."""
        self.refused_no_leader = 0
        """Client requests answered "no leader yet" (including forwarded ones failed
        back when the leader was lost), for tests and metrics."""
        self._forwarding_to = 0
        """The usable leader as of the last ``ready()``: a change fails back forwards."""
        if snapshot_every < 1 or snapshot_chunk < 1 or snapshot_bytes < 1 or snapshot_window < 1:
            raise ValueError(
                "snapshot_every, snapshot_bytes, snapshot_chunk and snapshot_window must be >= 1"
            )
        self.snapshot_window = snapshot_window
        """Chunk requests kept in flight while receiving a snapshot."""
        self.snapshot_every = snapshot_every
        self.snapshot_bytes = snapshot_bytes
        """Also snapshot once this many bytes of slot values were applied since the last."""
        self.log_bytes_since_snapshot = 0
        self.snapshot_chunk = snapshot_chunk
        self.snapshot: tuple[int, bytes | memoryview] | None = None
        """The latest durable snapshot (slot, bytes): what InstallSnapshot serves."""
        self.transfer: _Transfer | None = None
        self.snapshots_installed = 0
        self.audit: AuditFn | None = None
        """Told the digests after every applied slot and restored snapshot (simulator)."""
        if catchup_snapshot_slots < 0:
            raise ValueError("catchup_snapshot_slots must be >= 0 (0: only past compaction)")
        self.catchup_snapshot_slots = catchup_snapshot_slots
        """A Fetch for a gap of this many slots or more gets a snapshot (0: only for
        slots compacted away)."""
        self.serving: tuple[int, bytes] | None = None
        """A snapshot taken from the applied state to serve a lagging node (not durable:
        it need not be, it only holds chosen slots)."""
        self.snapshots_served = 0
        self.members = MemberDesk(replica, applied=lambda: self.state.applied_slot)
        """Member operations (``statemachine.members``): asked of any node, done here
        when this node leads."""
        if state.applied_slot > replica.first_unchosen:
            replica.skip_to(state.applied_slot)

    def audit_with(self, fn: AuditFn) -> None:
        """Report digests to ``fn`` from now on (see "Audit"), starting with the state
        this node holds now if it has applied or restored anything."""
        self.audit = fn
        self.state.track_digest()
        if self.state.applied_slot > 0:
            fn(self.node_id, self.state.applied_slot, self.state.state_digest(), None)

    def restore_snapshot(self, slot: int, data: bytes | memoryview) -> None:
        """Start from a durable snapshot (at startup, before any input). ``data`` may be
        a read-only view (of the mapped snapshot file): it is kept, to serve lagging
        nodes, and never written to."""
        membership, app = unwrap_snapshot(data)
        self.state.restore(app)
        self.snapshot = (slot, data)
        self._durable_slot = slot
        if membership is not None:
            self.replica.install_membership(membership)
        self.replica.skip_to(slot)
        self.replica.compact(slot)
        if self.audit is not None:
            self.audit(self.node_id, self.state.applied_slot, self.state.state_digest(), None)

    def snapshot_durable(self, slot: int) -> None:
        """The driver made the snapshot of ``slot`` durable: compact below it."""
        if self._rebuild_snap_pending is not None and slot >= self._rebuild_snap_pending:
            self._rebuild_snap_pending = None
        self._durable_slot = max(self._durable_slot, slot)
        if self._last_taken is not None and self._last_taken[0] == slot:
            self.snapshot = self._last_taken
        self.replica.compact(slot)
        if self.replica.rebuilding and self.replica.rebuild_caught_up:
            self.replica.finish_rebuild(slot)

    def snapshot_failed(self, slot: int) -> None:
        """The driver could not write the snapshot of ``slot`` (or dropped it for a newer
        one that failed): a rebuild takes its closing snapshot again."""
        if self._rebuild_snap_pending is not None and slot >= self._rebuild_snap_pending:
            self._rebuild_snap_pending = None

    @property
    def node_id(self) -> int:
        """This node's id."""
        return self.replica.node_id

    @property
    def stale_ballot(self) -> dict[str, int]:
        """The replica's count of older-ballot messages received, per message type."""
        return self.replica.stale_ballot

    def step(self, msg: Message) -> None:
        """Feed one message: client requests here, protocol messages to the replica."""
        match msg:
            case ClientRequest():
                # The batch path with a batch of one: the simulator's clients exercise
                # the very code the server's client port feeds (``step_requests``).
                self.step_requests(msg.src, (msg,))
            case ClientReply() if msg.client == PROBE_CLIENT:
                self.members.on_reply(msg)
            case ClientReply():
                self._relay(msg)
            case ClientRequests():
                self.step_requests(msg.src, msg.requests)
            case ClientReplies():
                for reply in msg.replies:
                    self.step(reply)
            case Fetch() if self._snapshot_instead(msg):
                self._announce_snapshot(msg.src)
            case Snapshot():
                self._on_snapshot(msg)
            case SnapshotRequest():
                self._on_snapshot_request(msg)
            case _:
                self.replica.step(msg)

    def step_requests(self, src: int, requests: Sequence[ClientRequest]) -> None:
        """Feed client requests that all came from ``src`` (a client connection), as if
        each were stepped with its ``src`` set to it, in one call: the binary port's
        batch (docs/architecture.md, "Speed"). A leader takes a write in line (validate,
        then join this pass's batch) and a query too (join this pass's queries);
        anything else (a member operation, a node that does not lead) goes the
        single-message way."""
        replica = self.replica
        leading = replica.is_leader
        validate = self.state.validate
        waiting = self.waiting
        batch = self.batch
        queries = self.queries
        taken = 0
        for msg in requests:
            command = msg.command
            if leading and msg.query and command[:1] != b"\xc1":
                taken += 1
                queries.append((src, msg))  # read as one batch in ready()
                continue
            if not leading or msg.query or command[:1] == b"\xc1":
                self._on_request(msg if msg.src == src else msgspec.structs.replace(msg, src=src))
                leading = replica.is_leader
                continue
            taken += 1
            if validate is not None:
                try:
                    error = validate(command)
                except PROCESS_EXITS:
                    raise
                except BaseException as e:  # the application's bug is a refusal
                    error = f"validate raised {type(e).__name__}: {e}"
                if error is not None:
                    self._refuse(src, msg, error)
                    continue
            key = (msg.client, msg.seq)
            if key not in waiting:
                batch.append((msg.client, msg.seq, command))
            waiting[key] = src
        self.requests += taken

    @property
    def reads_pending(self) -> int:
        """Queries not answered yet: this pass's, and the batches the replica holds."""
        held = self.replica.pending_reads
        return len(self.queries) + sum(len(cast(list[Any], t)) for _, _, t in held)

    def link_changed(self, peer: int, up: bool) -> None:
        """The driver's link to ``peer`` came up or went down.

        While it is down nothing is forwarded to ``peer`` (the frames would be dropped),
        and requests already forwarded to it are failed back to their clients at once.
        """
        if up:
            self.unreachable.discard(peer)
            self.members.heard.add(peer)
            return
        self.unreachable.add(peer)
        self._fail_forwarded(lambda target: target == peer)

    def usable_leader(self) -> int:
        """The leader this node would hand a request to right now (0: none).

        Itself while it leads; the leader it follows while it follows one and the link
        to it is up; otherwise 0 ("no leader yet"), even if the replica still remembers
        one: a node running for election, or cut off from the old leader, cannot hand
        it anything. Nor can a removed node: the leader it remembers may be long gone
        (two removed nodes that named each other kept clients bouncing between them).
        """
        replica = self.replica
        role = replica.role
        if role is Role.LEADER:
            return replica.node_id
        if replica.removed is not None:
            return 0
        leader = replica.leader
        if role is not Role.FOLLOWER or leader == replica.node_id or leader in self.unreachable:
            return 0
        return leader

    def tick(self, now: float) -> None:
        """Advance time."""
        self.replica.tick(now)
        if self.forwarded:
            self._expire_forwarded(now)
        t = self.transfer
        if t is not None and self.replica.first_unchosen >= t.slot:
            self.transfer = None  # the log got us past it: drop the transfer
        elif t is not None and now >= t.retry_at:
            # Resume a stalled transfer from where it stopped (a request or a chunk
            # was lost): ask again for the window after what arrived in order.
            t.requested = t.received
            self._request_chunk(t)

    def ready(self) -> Ready:
        """Propose this pass's batch, then apply what is chosen and add the replies."""
        replica = self.replica
        if self.forwarded or self._forwarding_to:
            usable = self.usable_leader()
            if usable != self._forwarding_to:
                # Lost the leader we forwarded to (or another took over): its answers
                # may never come. Fail those requests back now; the clients retry.
                self._forwarding_to = usable
                self._fail_forwarded(lambda target: target != usable)
        if self.queries:
            # Before this pass's writes are proposed: a probed read's index (next_slot)
            # need not wait for them (they arrived with it, acknowledged to nobody).
            queries, self.queries = self.queries, []
            if not replica.read(queries):
                for dst, q in queries:
                    self._reply(dst, q, False)
        if self.batch:
            while self.batch:
                chunk, self.batch = self.batch[: self.max_batch], self.batch[self.max_batch :]
                if self.on_batch is not None:
                    self.on_batch(len(chunk))
                if not replica.propose(encode_batch(chunk)):
                    self._redirect_pending()
                    self.batch.clear()
        if self.waiting and not replica.is_leader:
            # Leadership lost: what we proposed may or may not be chosen by the next
            # leader. Tell the clients to retry there (same seq: applied once).
            self._redirect_pending()
        if self.members.requests:
            self.members.poll()
        if (
            replica.rebuilding
            and replica.rebuild_caught_up
            and self._rebuild_snap_pending is None
            and 0 < self._durable_slot >= replica.first_unchosen
        ):
            # A durable snapshot already covers every slot learned (the one installed
            # from a peer, on an idle cluster): the rebuild ends on it, as it would on
            # the closing snapshot, without taking and writing the same state again
            # (at 1 GB, seconds of encoding and a second 1 GB write).
            replica.finish_rebuild(self._durable_slot)
        r = replica.ready()
        if r.committed:
            self._apply(r)
        if r.reads:
            self._serve_reads(r)
        # A snapshot whose write failed is never reported durable: take a new one
        # once another ``snapshot_every`` slots have been applied since it was taken.
        since = self._last_taken[0] if self._last_taken is not None else self._snapshot_slot()
        due_slots = (
            self.state.applied_slot - max(since, self._snapshot_slot()) >= self.snapshot_every
        )
        if due_slots or self.log_bytes_since_snapshot >= self.snapshot_bytes:
            self._take_snapshot()
        elif (
            replica.rebuilding
            and replica.rebuild_caught_up
            and self._rebuild_snap_pending is None
            and replica.now >= self._rebuild_snap_due
        ):
            # A rebuild ends with a durable snapshot; taken again if its write failed,
            # never while one is being written: with 1 GB of state a take and a write
            # last seconds, and retaking every few heartbeats meanwhile kept a rebuild
            # encoding the whole state over and over (bench/profiles/FINDINGS.md).
            self._rebuild_snap_due = replica.now + replica.config.heartbeat_interval * 5
            self._take_snapshot()
            self._rebuild_snap_pending = self.state.applied_slot
        if self._snapshot_out is not None:
            r.snapshot, self._snapshot_out = self._snapshot_out, None
        return r

    def advance(self) -> None:
        """The driver carried out the last ``ready()``."""
        self.replica.advance()

    def next_deadline(self) -> float | None:
        """When ``tick`` must next be called."""
        return self.replica.next_deadline()

    # -- snapshots ---------------------------------------------------------------------

    _last_taken: tuple[int, bytes] | None = None
    _snapshot_out: tuple[int, bytes] | None = None
    _rebuild_snap_due = float("-inf")
    _rebuild_snap_pending: int | None = None
    _durable_slot = 0
    """The slot of the newest snapshot known durable (restored at startup, or reported
    by ``snapshot_durable``)."""
    """The slot of the rebuild's closing snapshot while it is being written."""

    def _snapshot_slot(self) -> int:
        return self.snapshot[0] if self.snapshot is not None else 0

    def _take_snapshot(self) -> None:
        self.log_bytes_since_snapshot = 0
        taken = (self.state.applied_slot, self._snapshot_bytes())
        self._last_taken = taken
        self._snapshot_out = taken

    def _snapshot_bytes(self) -> bytes:
        """The applied state, wrapped with the membership of its slots if it changed."""
        slot = self.state.applied_slot
        membership = self.replica.membership
        if membership.latest.epoch == 0 and not membership.retired:
            return self.state.snapshot()
        return wrap_snapshot(self.replica.membership_state(slot), self.state.snapshot())

    def _snapshot_instead(self, msg: Fetch) -> bool:
        """Answer this Fetch with a snapshot: its slots were compacted away, or the gap
        is so long that the state is cheaper to send than the log."""
        if msg.slot < self.replica.log_start:
            return True
        gap = self.catchup_snapshot_slots
        return gap > 0 and self.state.applied_slot - msg.slot >= gap

    def _newest_snapshot(self) -> tuple[int, bytes | memoryview] | None:
        candidates = [s for s in (self.snapshot, self.serving) if s is not None]
        return max(candidates, key=lambda s: s[0], default=None)

    def _announce_snapshot(self, dst: int) -> None:
        newest = self._newest_snapshot()
        applied = self.state.applied_slot
        gap = self.catchup_snapshot_slots
        if gap > 0 and applied > 0 and (newest is None or applied - newest[0] >= gap):
            # Ours is far behind the applied state: take one now, from that state.
            newest = self.serving = (applied, self._snapshot_bytes())
            self.snapshots_served += 1
        if newest is None:
            return
        slot, data = newest
        self.replica.post((dst,), Snapshot(self.node_id, slot, 0, b"", len(data)))

    def _on_snapshot_request(self, msg: SnapshotRequest) -> None:
        found = [s for s in (self.snapshot, self.serving) if s is not None and s[0] == msg.slot]
        if not found:
            self._announce_snapshot(msg.src)  # ours moved on: start over with it
            return
        slot, data = found[0]
        chunk = bytes(data[msg.offset : msg.offset + self.snapshot_chunk])
        self.replica.post((msg.src,), Snapshot(self.node_id, slot, msg.offset, chunk, len(data)))

    def _on_snapshot(self, msg: Snapshot) -> None:
        replica = self.replica
        if msg.slot <= replica.first_unchosen:
            return  # we already have everything it covers
        t = self.transfer
        fresh = False
        if t is None or t.slot != msg.slot or t.total != msg.total:
            if t is not None and msg.data:
                # A chunk of another transfer: one we left (still in flight, several
                # were asked for at once) or the newer one's, whose announcement comes
                # too. Only an announcement switches: a stale chunk that restarted an
                # old transfer, whose source then announced the new one again, made
                # a storm of requests (seed 20 of sim kv --snapshot-chunk 16).
                return
            if (
                t is not None
                and t.slot > msg.slot
                and msg.src != t.source
                and replica.now - t.progress_at < replica.config.heartbeat_interval * 20
            ):
                return  # a newer transfer is under way
            # No transfer, or a newer snapshot; or the source of ours answered with
            # another (it no longer holds ours: restarted, wiped, its serving copy
            # gone), or ours has stalled: a snapshot that exists beats one that does
            # not (seed 58 of `sim app --app lock`, tests/test_sim_catchup_snapshot.py).
            t = self.transfer = _Transfer(msg.slot, msg.total, msg.src, replica.now)
            fresh = True
        data = msg.data
        if data and msg.offset + len(data) < t.total:
            t.chunk = len(data)  # a full chunk: the source's chunk size
        if not data:
            if msg.offset != t.received or t.requested > t.received:
                return  # a stale announcement, or one repeated while we ask
        elif t.take(msg.offset, data):
            t.progress_at = replica.now
        else:
            window_end = t.received + self.snapshot_window * max(t.chunk, 1)
            if msg.offset > t.received and msg.src == t.source and msg.offset < window_end:
                t.ahead[msg.offset] = data  # overtook an earlier chunk: keep it
            if not fresh:
                return  # a duplicate, or ahead: nothing new to ask for
        if t.received >= t.total:
            self._install(t)
            return
        t.source = msg.src
        self._request_chunk(t)

    def _request_chunk(self, t: _Transfer) -> None:
        """Ask the source for the chunks after what arrived in order, up to
        ``snapshot_window`` in flight (one until a chunk showed the source's size)."""
        replica = self.replica
        t.retry_at = replica.now + replica.config.heartbeat_interval * 2
        # The snapshot covers the gap: no Fetch while it arrives (it would only be
        # answered with the same announcement).
        replica.defer_fetch(t.retry_at)
        if t.requested < t.received:
            t.requested = t.received
        if t.chunk == 0:
            if t.requested == t.received:
                replica.post((t.source,), SnapshotRequest(self.node_id, t.slot, t.received))
                t.requested = t.received + 1
            return
        end = min(t.total, t.received + self.snapshot_window * t.chunk)
        while t.requested < end:
            if t.requested not in t.ahead:
                replica.post((t.source,), SnapshotRequest(self.node_id, t.slot, t.requested))
            t.requested += t.chunk

    def _install(self, t: _Transfer) -> None:
        data = t.chunks[0] if len(t.chunks) == 1 else b"".join(t.chunks)
        t.chunks.clear()
        self.transfer = None
        membership, app = unwrap_snapshot(data)
        self.state.restore(app)
        if membership is not None:
            self.replica.install_membership(membership)
        self.replica.skip_to(t.slot)
        self.snapshots_installed += 1
        if self.audit is not None:
            self.audit(self.node_id, self.state.applied_slot, self.state.state_digest(), None)
        # Serve it to others at once (the replica no longer serves slots below it),
        # and keep it durably too, so a restart does not need the transfer again.
        self.snapshot = (t.slot, data)
        self._last_taken = (t.slot, data)
        self._snapshot_out = (t.slot, data)
        if self.replica.rebuilding:
            # Being written: a rebuild that catches up meanwhile waits for it (and ends
            # on it if it covers everything) rather than take another of the same state.
            self._rebuild_snap_pending = t.slot

    # -- internals -------------------------------------------------------------------

    def _reply(self, dst: int, msg: ClientRequest, ok: bool, result: bytes = b"") -> None:
        reply = ClientReply(self.node_id, msg.client, msg.seq, ok, result, self.usable_leader())
        self.replica.post((dst,), reply)

    def _on_request(self, msg: ClientRequest) -> None:
        self.requests += 1
        replica = self.replica
        if msg.command[:1] == b"\xc1" and self.members.take(msg):
            return  # a member operation (statemachine.members), never the application's
        if not replica.is_leader:
            leader = self.usable_leader()
            if leader == 0:
                self.refused_no_leader += 1
            elif self.forward and msg.src not in replica.members:
                # Forward once (never a request another node forwarded: no loops).
                self.forwarded[(msg.client, msg.seq)] = (msg.src, replica.now, leader)
                forwarded = ClientRequest(self.node_id, msg.client, msg.seq, msg.command, msg.query)
                replica.post((leader,), forwarded)
                return
            self._reply(msg.src, msg, False)
            return
        if msg.query:
            self.queries.append((msg.src, msg))  # read as one batch in ready()
            return
        validate = self.state.validate
        if validate is not None:
            try:
                error = validate(msg.command)
            except PROCESS_EXITS:
                raise
            except BaseException as e:  # the application's bug is a refusal
                error = f"validate raised {type(e).__name__}: {e}"
            if error is not None:
                self._refuse(msg.src, msg, error)
                return
        key = (msg.client, msg.seq)
        if key not in self.waiting:
            self.batch.append((msg.client, msg.seq, msg.command))
        self.waiting[key] = msg.src

    def _refuse(self, dst: int, msg: ClientRequest, error: object) -> None:
        """Answer ``msg`` (at ``dst``) with the refusal its ``validate`` gave."""
        if not isinstance(error, str):
            # True meant "valid" to its author: a refusal that says so, not a
            # ClientReply whose error field no peer or client can decode.
            error = (
                f"validate returned {type(error).__name__} {error!r:.40}, not a str "
                "reason or None (docs/architecture.md, The application contract)"
            )
        self.rejected += 1
        refused = self.state.failure(msg.client, msg.seq, error)
        reply = ClientReply(
            self.node_id, msg.client, msg.seq, True, refused.result, self.usable_leader(), error
        )
        self.replica.post((dst,), reply)

    def _relay(self, msg: ClientReply) -> None:
        entry = self.forwarded.pop((msg.client, msg.seq), None)
        if entry is not None:
            # A refusal names the leader as the refuser knows it (0: none yet).
            leader = msg.leader if not msg.ok else self.usable_leader()
            relayed = ClientReply(
                self.node_id, msg.client, msg.seq, msg.ok, msg.result, leader, msg.error
            )
            self.replica.post((entry[0],), relayed)

    def _fail_forwarded(self, lost: Callable[[int], bool]) -> None:
        """Answer "no leader / retry" to every forwarded request whose leader is
        ``lost`` (see the module notes for what that answer does and does not say)."""
        gone = [key for key, (_, _, target) in self.forwarded.items() if lost(target)]
        leader = self.usable_leader()
        for key in gone:
            asker = self.forwarded.pop(key)[0]
            if leader == 0:
                self.refused_no_leader += 1
            reply = ClientReply(self.node_id, key[0], key[1], False, b"", leader)
            self.replica.post((asker,), reply)

    def _expire_forwarded(self, now: float) -> None:
        stale = [k for k, (_, t, _) in self.forwarded.items() if now - t > FORWARD_TIMEOUT]
        for key in stale:
            del self.forwarded[key]

    def _serve_reads(self, r: Ready) -> None:
        """Answer the released read batches (each a list of ``(dst, query)``) in one
        loop: the application answers a batch in one call (``query_batch``), and with
        ``batch_replies`` the answers for one destination leave as one
        ``ClientReplies``."""
        me = self.node_id
        leader = self.usable_leader()
        query_batch = self.state.query_batch
        sends = r.send_now
        grouped: dict[int, list[ClientReply]] | None = {} if self.batch_replies else None
        for token, ok in r.reads:
            batch = cast(list[tuple[int, ClientRequest]], token)
            if ok:
                results, errors = query_batch([q.command for _, q in batch])
            else:
                results, errors = [b""] * len(batch), {}
            for i, ((dst, q), result) in enumerate(zip(batch, results, strict=True)):
                error = errors.get(i) if errors else None
                reply = ClientReply(me, q.client, q.seq, ok, result, leader, error)
                if grouped is None:
                    sends.append(Send((dst,), reply))
                elif (replies := grouped.get(dst)) is None:
                    grouped[dst] = [reply]
                else:
                    replies.append(reply)
        if grouped:
            _send_grouped(me, grouped, sends)  # one ClientReplies per connection

    def _redirect_pending(self) -> None:
        leader = self.usable_leader()
        for (client, seq), dst in self.waiting.items():
            reply = ClientReply(self.node_id, client, seq, False, b"", leader)
            self.replica.post((dst,), reply)
        self.waiting.clear()

    def _apply(self, r: Ready) -> None:
        state = self.state
        waiting = self.waiting
        me = self.node_id
        leader = self.usable_leader()
        sends = r.send_now
        audit = self.audit
        grouped: dict[int, list[ClientReply]] | None = {} if self.batch_replies else None
        for entry in r.committed:
            if entry.slot < state.applied_slot:
                continue  # covered by a restored snapshot
            value = entry.value
            if value[:1] == b"\xc1" and is_config_entry(value):
                value = b""  # the replica's business (membership), a no-op here
            self.log_bytes_since_snapshot += len(value)
            results = state.apply(entry.slot, value)
            # A follower holds no request (waiting is empty): no lookup per command.
            for applied in results if waiting else ():
                dst = waiting.pop((applied.client, applied.seq), None)
                if dst is not None:
                    reply = ClientReply(
                        me, applied.client, applied.seq, True, applied.result, leader, applied.error
                    )
                    if grouped is None:
                        sends.append(Send((dst,), reply))
                    elif (replies := grouped.get(dst)) is None:
                        grouped[dst] = [reply]
                    else:
                        replies.append(reply)
            if audit is not None:
                audit(me, state.applied_slot, state.state_digest(), results_digest(results))
            if self.on_applied is not None:
                self.on_applied(me, entry.slot)
        if grouped:
            _send_grouped(me, grouped, sends)
