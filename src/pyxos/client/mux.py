"""Many client sessions multiplexed over a few connections (the fast client).

Theory of operation
-------------------
``AsyncClient`` is one session that owns its connections: fine for one caller, costly
for a load of many (docs/architecture.md, "Speed": per-connection socket writes were the
leader's largest cost, and a Task plus a timer per command is the client's). A
``ClientPool`` holds at most ``connections`` connections per node and hands out
``Session`` objects. A session is exactly what an ``AsyncClient`` is to the store: its
own ``client_id`` and ``seq``, one command outstanding at a time, the same retry rules
(a retry reuses the SAME ``(client_id, seq)``, so it applies at most once; redirects are
followed; ``OutcomeUnknown`` when the overall ``timeout`` runs out; ``CommandRejected``
for a command the service refused). What sessions share is the wire: session number
``i`` always uses connection slot ``i % connections`` of whichever node it talks to,
so the first attempts of every session of a slot made in one event-loop pass leave in
one frame (``ClientRequests``, client protocol 2: ``_post_batched``, at most about
``BATCH_BYTES`` of commands each), and the leader answers the commands of one pass
with one ``ClientReplies`` frame per connection: one decode and one encode per side,
not one per command. Retries go one frame each (``_post``): they are rare.

Routing replies: the node answers ``ClientReply(client, seq)`` on the connection that
carried the request, and ``(client, seq)`` is unique among the pool's outstanding
requests (a session has one command in flight, and client ids are the sessions' own),
so the pool keeps one table ``(client, seq) -> _Pending`` and resolves the pending
request's Future straight from ``data_received``. No Task and no ``wait_for`` per
command: a reply resolves the Future, and one periodic scan per pool (armed only while
something is pending) resolves the overdue ones with ``None`` ("no answer"). A lost
connection resolves every request pending on it with ``None`` at once. A successful
reply is accepted from any connection (the result of ``(client, seq)`` is the same
wherever it comes from); a refusal (``ok=False``, a redirect) only from the connection
the current attempt used, so a late refusal from a node already left behind cannot
send a session back there.

Finding the leader is shared too: the pool holds one ``Route`` of the client engine
(``pyxos.client.engine``). Every reply names its sender (``src``), which teaches it
which address is which node, and the leader named by the last successful reply becomes
its ``target``, where every session's next command starts. A session that gets no
answer or a refusal is handed to the engine (``drive``), which moves it on by the same
rules as ``AsyncClient`` (to the named leader if its address is known; after "no
leader yet", to the next node after a jittered pause of a few milliseconds; after
silence from every node, a longer pause); its first success moves every session over.

Connecting is the slow path and may use Tasks: one connect Task per (node, slot),
shared by every session waiting for that slot, bounded by ``connect_timeout``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from pyxos.client.aio import (
    DEFAULT_CLUSTER,
    Closeable,
    History,
    KVOperations,
    check_client_id,
    describe,
    new_client_id,
    route_of,
    tls_context,
)
from pyxos.client.engine import Call, ClientError, drive, turned_away
from pyxos.core.messages import ClientReplies, ClientReply, ClientRequest, ClientRequests, Message
from pyxos.net.codec import CLIENT_PROTOCOL_VERSION, Hello, encode_message
from pyxos.net.link import FramedProtocol
from pyxos.statemachine.kv import Command

__all__ = ["ClientPool", "Session"]


_Pending = tuple[asyncio.Future[ClientReply | None], FramedProtocol, float]
"""One sent attempt waiting for its reply: ``(future, conn, deadline)``, the Future
resolved with the reply (or None), the connection the attempt was sent on (a refusal
counts only from it), and the loop time after which it counts as unanswered. A plain
tuple: made once per command, where a class's ``__init__`` is one more call."""


BATCH_BYTES = 64 * 1024
"""About how many bytes of commands one batched request frame carries at most (far
below any node's ``client_max_frame_bytes``); a larger command goes alone."""

_REQUEST_OVERHEAD = 32
"""Bytes a request adds to its command in a batch (the tag, ids, msgpack headers),
rounded up."""


class _Outbox:
    """The requests of one connection waiting for the end of the pass."""

    __slots__ = ("requests", "size")

    def __init__(self) -> None:
        self.requests: list[ClientRequest] = []
        self.size = 0


class Session(KVOperations):
    """One logical client of a ``ClientPool``: ``get / put / delete / cas / list``.

    Same semantics as ``AsyncClient`` (its own ``client_id`` and ``seq``, one command at
    a time, retries with the same ``(client_id, seq)``, ``OutcomeUnknown``,
    ``CommandRejected``), over the pool's shared connections. Made by
    ``ClientPool.session``; closed with the pool.
    """

    def __init__(
        self, pool: ClientPool, client_id: int, slot: int, history: History | None
    ) -> None:
        self.pool = pool
        """The pool whose connections this session uses."""
        self.client_id = client_id
        """This session's id: with ``seq``, what makes a retry apply once."""
        self.seq = 0
        """The seq of the last command issued (the next one gets ``seq + 1``)."""
        self.history = history
        """Called with one JSON-ready dict per get/put/delete/cas, as ``AsyncClient``'s
        ``history``; commands the service refused are not recorded."""
        self.retries = 0
        """Attempts beyond the first, over the session's life."""
        self.answered_by = 0
        """The node id that answered the last command (0: none yet)."""
        self.leader = 0
        """The leader as the last answer named it (0: none yet)."""
        self._slot = slot

    @property
    def closed(self) -> bool:
        """Whether the pool was closed (the session then refuses new commands)."""
        return self.pool.closed

    async def _call(
        self, seq: int, payload: bytes, command: Command | None, query: bool = False
    ) -> ClientReply:
        """The first attempt, at the pool's target over an open connection; the engine
        (``drive``) takes over if there is none or it got no answer. (The first attempt
        is here rather than in the engine to keep one coroutine frame and the ``Call``
        off every command's await chain.)"""
        pool = self.pool
        loop = pool._loop
        if loop is None:
            loop = pool._loop = asyncio.get_running_loop()
        key = (self.client_id, seq)
        request = ClientRequest(0, self.client_id, seq, payload, query)
        now = loop.time()
        deadline = now + pool.timeout
        route = pool.route
        index = route.target
        conn = pool._conns.get((index, self._slot))
        reply: ClientReply | None = None
        tried = conn is not None and conn.is_open
        if conn is not None and tried:
            # ``pool._post_batched`` in line for a command of the usual size (once per
            # command): its Future and pending entry, the request in this pass's batch.
            until = now + pool.attempt_timeout
            size = len(payload) + _REQUEST_OVERHEAD
            box = pool._outbox.get(conn)
            if box is None or box.size + size > BATCH_BYTES:
                future = pool._post_batched(
                    key, request, conn, deadline if deadline < until else until
                )
            else:
                future = loop.create_future()
                pool._pending[key] = (future, conn, deadline if deadline < until else until)
                box.requests.append(request)
                box.size += size
                if pool._scan is None:
                    pool._scan = loop.call_later(pool._scan_interval, pool._expire)
            try:
                reply = await future
            except BaseException:
                pool._forget(key, future)
                raise
        if reply is None or not reply.ok:
            frame = encode_message(request)
            reply = await pool._retry(self, command, key, frame, deadline, index, reply, tried)
            self.answered_by = reply.src
            self.leader = route.leader
            return reply
        # ``route.answered(reply)`` in line (once per command): who answered, who
        # leads, and (a follower relayed it) the leader itself as the next target.
        self.answered_by = route.answered_by = src = reply.src
        self.leader = route.leader = leader = reply.leader or src
        direct = route.index_of.get(leader)
        if direct is not None:
            route.target = direct
        return reply


class ClientPool(Closeable):
    """A few connections per node, shared by many ``Session`` objects.

    ``addresses`` lists the nodes' client addresses ``"host:port"``, or maps node ids to
    them. ``connections`` is the number of connections per node the sessions are spread
    over. ``timeout`` bounds a whole command (then ``OutcomeUnknown``),
    ``attempt_timeout`` one try at one node, ``connect_timeout`` one connect. ``history``
    is every new session's default history hook. Use ``async with`` or ``close()``.
    ``ca``/``cert``/``key``/``token``: TLS and authentication, as for ``AsyncClient``.
    """

    def __init__(
        self,
        addresses: Sequence[str] | Mapping[int, str],
        *,
        cluster: str = DEFAULT_CLUSTER,
        connections: int = 4,
        timeout: float = 5.0,
        attempt_timeout: float = 1.0,
        connect_timeout: float = 1.0,
        history: History | None = None,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        token: str | None = None,
    ) -> None:
        self._tls = tls_context(ca, cert, key)
        self._addresses, self.route = route_of(addresses)
        """Where every session's next command starts, and which node is which address
        (the engine's ``Route``, shared by the pool's sessions)."""
        if connections < 1:
            raise ValueError(f"connections must be >= 1, not {connections}")
        if timeout <= 0 or attempt_timeout <= 0 or connect_timeout <= 0:
            raise ValueError("timeouts must be > 0")
        self.cluster = cluster
        self.connections = connections
        """Connections per node that the sessions are spread over."""
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self.connect_timeout = connect_timeout
        self.history = history
        self.connects = 0
        """Connections opened over the pool's life (for tests and metrics)."""
        self._hello = Hello(
            version=CLIENT_PROTOCOL_VERSION,
            cluster=cluster,
            node=0,
            role="client",
            token=token or "",
        )
        # (node index, slot) -> open connection. Invariant: only open connections (a
        # lost one is removed by its on_lost); at most ``connections`` per node.
        self._conns: dict[tuple[int, int], FramedProtocol] = {}
        self._connecting: dict[tuple[int, int], asyncio.Task[FramedProtocol | None]] = {}
        # (client, seq) -> the attempt waiting for its reply. Whoever resolves an entry's
        # Future removes the entry first; a Future may be done only if its session was
        # cancelled while waiting (it then removes the entry itself).
        self._pending: dict[tuple[int, int], _Pending] = {}
        # Connection -> the first attempts of this pass not yet sent (``_post_batched``);
        # a flush is scheduled iff _outbox_scheduled, and one is whenever it is non-empty.
        self._outbox: dict[FramedProtocol, _Outbox] = {}
        self._outbox_scheduled = False
        # (node index, slot) -> the notice its last connection was refused with (see
        # ``engine.turned_away``); cleared when the next one is dialled.
        self._notices: dict[tuple[int, int], ClientReply] = {}
        self._client_ids: set[int] = set()
        self._sessions = 0
        self._scan: asyncio.TimerHandle | None = None
        self._scan_interval = max(0.001, min(0.05, attempt_timeout / 10, timeout / 10))
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        """Whether ``close`` was called (sessions then refuse new commands)."""

    # -- sessions -----------------------------------------------------------------------

    def session(self, client_id: int | None = None, *, history: History | None = None) -> Session:
        """A new logical client on this pool (a random ``client_id`` unless given).

        ``history`` overrides the pool's default hook for this session. Two live
        sessions of one pool may not share a client id (replies are routed by it).
        """
        if self.closed:
            raise ClientError("the client pool is closed")
        check_client_id(client_id)
        cid = client_id if client_id is not None else new_client_id()
        while client_id is None and cid in self._client_ids:
            cid = new_client_id()
        if cid in self._client_ids:
            raise ValueError(f"client id {cid} is already a session of this pool")
        self._client_ids.add(cid)
        slot = self._sessions % self.connections
        self._sessions += 1
        return Session(self, cid, slot, history if history is not None else self.history)

    @property
    def leader(self) -> int:
        """The leader as the last successful answer named it (0: none yet)."""
        return self.route.leader

    @property
    def no_leader_replies(self) -> int:
        """Answers "no leader yet" (``ok=False, leader=0``) received by any session."""
        return self.route.no_leader_replies

    @property
    def open_connections(self) -> int:
        """Connections open right now, over all nodes."""
        return len(self._conns)

    @property
    def pending(self) -> int:
        """Attempts sent and not yet answered (or given up)."""
        return len(self._pending)

    # -- one command: retries and redirects ---------------------------------------------

    def _register(
        self, key: tuple[int, int], conn: FramedProtocol, deadline: float
    ) -> asyncio.Future[ClientReply | None]:
        """The Future of an attempt of ``key`` on ``conn``, registered until ``deadline``
        (the expiry scan started if none is due)."""
        loop = self._loop
        assert loop is not None
        future: asyncio.Future[ClientReply | None] = loop.create_future()
        self._pending[key] = (future, conn, deadline)
        if self._scan is None:
            self._scan = loop.call_later(self._scan_interval, self._expire)
        return future

    def _post(
        self, key: tuple[int, int], frame: bytes, conn: FramedProtocol, deadline: float
    ) -> asyncio.Future[ClientReply | None] | None:
        """Send one attempt and register its Future; None if ``conn`` dropped the frame."""
        future = self._register(key, conn, deadline)
        if conn.send(frame):
            return future
        del self._pending[key]
        return None

    def _post_batched(
        self, key: tuple[int, int], request: ClientRequest, conn: FramedProtocol, deadline: float
    ) -> asyncio.Future[ClientReply | None]:
        """Send one first attempt in this pass's batch for ``conn`` (one frame of
        every such request, at the end of the pass: ``_flush_outbox``), and register
        its Future; a frame the connection drops resolves it with None."""
        future = self._register(key, conn, deadline)
        size = len(request.command) + _REQUEST_OVERHEAD
        if size > BATCH_BYTES:  # a large command goes alone, at once
            self._send_batch(conn, [request])
            return future
        box = self._outbox.get(conn)
        if box is None:
            box = self._outbox[conn] = _Outbox()
            if not self._outbox_scheduled:
                self._outbox_scheduled = True
                future.get_loop().call_soon(self._flush_outbox)
        elif box.size + size > BATCH_BYTES:
            self._send_batch(conn, box.requests)
            box.requests, box.size = [], 0
        box.requests.append(request)
        box.size += size
        return future

    def _flush_outbox(self) -> None:
        """Send every connection's batch of this pass, one frame each."""
        self._outbox_scheduled = False
        boxes, self._outbox = self._outbox, {}
        for conn, box in boxes.items():
            if box.requests:
                self._send_batch(conn, box.requests)

    def _send_batch(self, conn: FramedProtocol, requests: builtins.list[ClientRequest]) -> None:
        """One frame of ``requests`` on ``conn`` (a ``ClientRequests`` if more than
        one); if the connection drops it, their attempts are resolved with None."""
        msg = requests[0] if len(requests) == 1 else ClientRequests(0, requests)
        if conn.send(encode_message(msg)):
            return
        pending = self._pending
        for r in requests:
            waiting = pending.get((r.client, r.seq))
            if waiting is not None and waiting[1] is conn:
                del pending[(r.client, r.seq)]
                if not waiting[0].done():
                    waiting[0].set_result(None)

    def _forget(self, key: tuple[int, int], future: asyncio.Future[ClientReply | None]) -> None:
        """Drop the entry of an attempt whose waiter gave up (it was cancelled)."""
        pending = self._pending.get(key)
        if pending is not None and pending[0] is future:
            del self._pending[key]

    async def _retry(
        self,
        session: Session,
        command: Command | None,
        key: tuple[int, int],
        frame: bytes,
        deadline: float,
        index: int,
        reply: ClientReply | None,
        tried: bool,
    ) -> ClientReply:
        """The engine's retries after the session's first attempt (see ``drive``), over
        the session's connection slot of each node."""
        loop = self._loop
        assert loop is not None
        slot = session._slot

        async def attempt(index: int, deadline: float) -> ClientReply | None:
            if self.closed:
                raise ClientError("the client pool is closed")
            now = loop.time()
            conn = self._conns.get((index, slot))
            if conn is None or not conn.is_open:
                conn = await self._connect(index, slot, deadline - now)
                if conn is None:  # refused at the cap, saying why, or no answer
                    return turned_away(self._notices.get((index, slot)), *key)
            future = self._post(key, frame, conn, min(deadline, now + self.attempt_timeout))
            if future is None:
                return turned_away(self._notices.get((index, slot)), *key)
            try:
                return await future
            except BaseException:
                self._forget(key, future)
                raise

        what = describe(key[0], key[1], command)
        call = Call(self.route, deadline, self.timeout, what)
        try:
            return await drive(call, attempt, index, reply, tried)
        finally:
            session.retries += call.retries

    def _expire(self) -> None:
        """The periodic scan: resolve overdue attempts with None; re-arm while needed."""
        self._scan = None
        pending = self._pending
        if not pending or self._loop is None:
            return
        now = self._loop.time()
        overdue = [key for key, p in pending.items() if p[2] <= now]
        for key in overdue:
            future = pending.pop(key)[0]
            if not future.done():
                future.set_result(None)
        if pending:
            self._scan = self._loop.call_later(self._scan_interval, self._expire)

    # -- connections --------------------------------------------------------------------

    async def _connect(self, index: int, slot: int, remaining: float) -> FramedProtocol | None:
        """The open connection of (node ``index``, ``slot``), opened if need be; None if
        it could not be opened within ``remaining`` (and ``connect_timeout``) seconds."""
        where = (index, slot)
        task = self._connecting.get(where)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._open(index, slot))
            self._connecting[where] = task
        try:
            return await asyncio.wait_for(
                asyncio.shield(task), min(remaining, self.connect_timeout)
            )
        except TimeoutError:
            return None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and (current is None or not current.cancelling()):
                return None  # the pool closed under us: _retry then says so
            raise

    async def _open(self, index: int, slot: int) -> FramedProtocol | None:
        """Dial (node ``index``, ``slot``); the connection, or None on failure."""
        where = (index, slot)
        host, port = self._addresses[index]
        loop = asyncio.get_running_loop()
        self._notices.pop(where, None)

        def on_lost(lost: FramedProtocol, exc: Exception | None) -> None:
            if self._conns.get(where) is lost:
                del self._conns[where]
            pending = self._pending
            gone = [key for key, p in pending.items() if p[1] is lost]
            for key in gone:
                future = pending.pop(key)[0]
                if not future.done():
                    future.set_result(None)

        def factory() -> FramedProtocol:
            def on_messages(_: int, msgs: builtins.list[Message]) -> None:
                self._on_replies(index, protocol, msgs, where)

            protocol = FramedProtocol(
                on_messages,
                hello=self._hello,
                label=f"client pool link {slot} to {host}:{port}",
                on_lost=on_lost,
            )
            return protocol

        conn: FramedProtocol
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    factory,
                    host,
                    port,
                    ssl=self._tls,
                    server_hostname=host if self._tls is not None else None,
                ),
                self.connect_timeout,
            )
        except (OSError, TimeoutError):
            return None
        finally:
            if self._connecting.get(where) is asyncio.current_task():
                del self._connecting[where]
        if self.closed or not conn.is_open:
            conn.abort()
            return None
        self._conns[where] = conn
        self.connects += 1
        return conn

    def _on_replies(
        self,
        index: int,
        conn: FramedProtocol,
        msgs: builtins.list[Message],
        where: tuple[int, int],
    ) -> None:
        """Resolve the attempts these replies answer (see the module notes)."""
        pending = self._pending
        known = self.route.index_of
        replies: Sequence[ClientReply]
        for message in msgs:
            if type(message) is ClientReplies:
                replies = message.replies
            elif isinstance(message, ClientReply):
                replies = (message,)
            else:
                continue
            for msg in replies:
                if msg.src not in known:
                    self.route.learn(msg.src, index)
                key = (msg.client, msg.seq)
                waiting = pending.get(key)
                if waiting is None and msg.client == 0 and msg.error is not None:
                    self._refused(where, conn, msg)
                    continue
                if waiting is None or (not msg.ok and waiting[1] is not conn):
                    continue
                del pending[key]
                future = waiting[0]
                if not future.done():  # else its session was cancelled meanwhile
                    future.set_result(msg)

    def _refused(self, where: tuple[int, int], conn: FramedProtocol, notice: ClientReply) -> None:
        """The node refused ``conn`` with ``notice`` (it closes it next): every attempt
        sent on it is turned away with the notice's reason (``engine.turned_away``)."""
        self._notices[where] = notice
        pending = self._pending
        for key in [key for key, p in pending.items() if p[1] is conn]:
            future = pending.pop(key)[0]
            if not future.done():
                future.set_result(turned_away(notice, *key))

    # -- lifecycle ----------------------------------------------------------------------

    async def close(self) -> None:
        """Close every connection; sessions refuse new commands afterwards."""
        self.closed = True
        if self._scan is not None:
            self._scan.cancel()
            self._scan = None
        tasks = list(self._connecting.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        pending, self._pending = self._pending, {}
        for waiting in pending.values():
            if not waiting[0].done():
                waiting[0].set_result(None)
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.shutdown(0.5)
