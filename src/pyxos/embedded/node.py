"""A pyxos node inside the user's own process: ``async with EmbeddedNode(...)``.

Theory of operation
-------------------
An :class:`EmbeddedNode` is a :class:`~pyxos.server.node.NodeServer`, the very runtime
``pyxos serve`` runs (same WAL, same group commit and fsync before any
acknowledgement, same peer protocol over TCP, same snapshots, same guarantees), started
on the caller's event loop with the caller's application instead of one loaded from a
config file. Its peers may be other embedded nodes or ``pyxos serve`` processes hosting
the same application.

The program's own calls never cross a socket to reach their node: they are
``ClientRequest`` messages fed to the server in-process (``NodeServer.submit``), and
their replies come back through a reply sink (``NodeServer.attach_sink``), exactly like
the HTTP API's. A follower forwards them to the leader and relays the replies, as it
does for remote clients (docs/architecture.md, *Server runtime*).

Sessions and retries (exactly once): every command carries a ``(client, seq)`` of a
:class:`Session`; the replication layer's session table applies each ``(client, seq)``
at most once and answers a retry with the recorded result. A refusal ("no leader
yet", or a forwarded request failed back because the leader was lost) is never an
outcome, since the command may still be chosen; the node retries with the SAME
``(client, seq)`` by the client engine's rule (``pyxos.client.engine``: the one retry
rule of every client; a jittered pause of a few milliseconds after a refusal), and
resubmits it when an attempt has had no answer for ``attempt_timeout`` seconds. When
``timeout`` runs out the outcome is unknown (``OutcomeUnknown``, the engine's): the
command may still be applied, once. ``node.command(data)`` takes a session from a
pool of idle ones (a session has one command in flight at a time) and puts it back
after, so concurrency costs one session per concurrent call, not one per call.

The hot path costs one future per command and nothing else that lives on: no
coroutine, no task, no timer. ``node.submit(data)`` (and ``node.command``, which
awaits it, and an object's ``method.submit(...)``) records the call in a dict keyed
by its session's client id and queues the request; the reply resolves the future
(decoding the result first when a ``decode`` was given). Attempts that had no answer
for ``attempt_timeout`` are found by one sweep per quarter of it (the dict is in
submission order, so the sweep stops at the first call still young). Only a call
that needs the engine's retries (a refusal, no answer, a timeout shorter than one
attempt) gets a task, which drives it by the engine's rule and then resolves the
same future. Per command the process keeps few objects alive between loop passes,
which matters at thousands of calls outstanding: Python's cyclic garbage collector
walks every container object that survives a collection, again and again as they age,
and a coroutine chain, a task and a timer per call made that walk cost as much as
the calls themselves.

Queries (``node.query(q)``) are linearizable reads the leader serves without the log;
they change nothing, so a retry is harmless and they need no session.

Ticks: with ``tick_interval`` set, the node that leads submits a tick command every
``tick_interval`` seconds, which advances the hosted objects' *log time* on every
replica (``pyxos.objects``: the lock expires by it). Ticks are commands like any other
(chosen, durable, applied in log order), so the log time stays deterministic; only how
fast it advances depends on the clock, which affects liveness (how soon an abandoned
lock expires), never safety. Two nodes that both believe they lead for a moment just
tick twice.

Bootstrapping: ``initialize`` (default on) is ``pyxos serve --init``: on an empty data
directory the node votes only once every peer answered that it never held state, and
rebuilds from its peers otherwise, so it is safe on every start (docs/architecture.md,
*The protocol*, Bootstrapping).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from pyxos.client.engine import (
    Attempt,
    Call,
    ClientError,
    CommandRejected,
    OutcomeUnknown,
    Route,
    drive,
)
from pyxos.core.messages import ClientReply, ClientRequest
from pyxos.objects.base import ObjectHost, Replicated, tick_command
from pyxos.server.config import Config
from pyxos.server.node import NodeFailed, NodeServer
from pyxos.statemachine.base import Application

__all__ = [
    "DEFAULT_CLUSTER",
    "CommandRejected",
    "EmbeddedNode",
    "NodeStopped",
    "OutcomeUnknown",
    "Session",
    "node_config",
]

logger = logging.getLogger("pyxos.embedded")

DEFAULT_CLUSTER: Final = "pyxos-embedded"
"""The cluster id ``node_config`` uses unless told otherwise."""


class NodeStopped(ClientError):
    """The node was stopped, or failed, while a call was in flight (outcome unknown)."""


def node_config(
    node_id: int,
    peers: Mapping[int, str],
    data_dir: str | Path,
    *,
    cluster_id: str = DEFAULT_CLUSTER,
    **settings: Any,
) -> Config:
    """The ``Config`` of one embedded node: ``peers`` maps every member's id, this one's
    included, to its ``"host:port"`` peer address; any other ``Config`` key may be
    given (``election_timeout``, ``snapshot_every``, ...). The client port defaults to
    0 (a free port: remote clients may still use it)."""
    raw: dict[str, Any] = {
        "cluster_id": cluster_id,
        "node_id": node_id,
        "peers": {str(k): v for k, v in peers.items()},
        "client_port": 0,
        "data_dir": str(data_dir),
    }
    raw.update(settings)
    return Config.from_mapping(raw)


def _no_answer(future: asyncio.Future[ClientReply | None]) -> None:
    if not future.done():
        future.set_result(None)


def _resolve(
    future: asyncio.Future[Any], decode: Callable[[bytes], Any] | None, reply: ClientReply
) -> None:
    """Resolve a call's future with its ``ok`` reply (unless its caller cancelled it)."""
    if future.done():
        return
    if reply.error is not None and not reply.result:
        future.set_exception(CommandRejected(reply.error))
        return
    if decode is None:
        future.set_result(reply.result)
        return
    try:
        value = decode(reply.result)
    except Exception as e:  # the command's own exception, raised in the caller
        future.set_exception(e)
        return
    future.set_result(value)


class Session:
    """One client session: a ``client`` id and the ``seq`` of its last command.

    One command at a time (the session table remembers the last seq per client);
    ``retry()`` submits the last command again with the same ``(client, seq)``, which
    the cluster applies at most once whatever happened to the first attempt.
    """

    def __init__(self, node: EmbeddedNode, client: int | None = None) -> None:
        self.node = node
        """The node this session submits through."""
        self.client = client if client is not None else secrets.randbits(63) | 1
        """The session's client id (random 63-bit unless given)."""
        self.seq = 0
        """The seq of the last command submitted (0: none yet)."""
        self.last: bytes | None = None
        """The last command's bytes (for ``retry``)."""
        # The command in flight on the node's hot path: the session is its record, so
        # a call keeps no object alive but its future (see the module notes).
        self._future: asyncio.Future[Any] | None = None
        self._request: ClientRequest | None = None
        self._decode: Callable[[bytes], Any] | None = None
        self._started = 0.0
        self._limit = 0.0
        self._pooled = False

    async def command(self, data: bytes, *, timeout: float | None = None) -> bytes:
        """Submit ``data`` as this session's next command; its result once applied."""
        self.seq += 1
        self.last = data
        result: bytes = await self.node._start(self, data, timeout, None, False)
        return result

    async def retry(self, *, timeout: float | None = None) -> bytes:
        """Submit the last command again, same ``(client, seq)``: applied at most once."""
        if self.last is None:
            raise RuntimeError("nothing to retry: this session has sent no command")
        result: bytes = await self.node._start(self, self.last, timeout, None, False)
        return result


class EmbeddedNode:
    """A pyxos node running in this process (see the module notes).

    ``objects`` (name -> :class:`~pyxos.objects.Replicated`) are hosted and attached:
    their ``@replicated`` and ``@query`` methods go through this node. Or pass any
    ``app`` implementing the application contract and use ``command``/``query``.
    Every member of a cluster must host the same names and classes (or the same app).
    """

    def __init__(
        self,
        config: Config,
        objects: Mapping[str, Replicated] | None = None,
        *,
        app: Application | None = None,
        initialize: bool = True,
        timeout: float = 30.0,
        attempt_timeout: float = 2.0,
        tick_interval: float | None = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        if (objects is None) == (app is None):
            raise TypeError("EmbeddedNode needs objects or an app (not both)")
        self.host: ObjectHost | None = ObjectHost(objects) if objects is not None else None
        """The object host (None when the node runs a plain ``app``)."""
        self.app: Application = self.host if self.host is not None else app  # type: ignore[assignment]
        """The application this node replicates."""
        self.config = config
        """The node's configuration (``node_config`` makes one)."""
        self.timeout = timeout
        """Seconds a call may take in all before ``OutcomeUnknown``."""
        self.attempt_timeout = attempt_timeout
        """Seconds without an answer before the same request is submitted again."""
        self.tick_interval = tick_interval
        """Seconds between log-time ticks while this node leads (None: no ticks)."""
        self.rng = rng if rng is not None else random.Random()
        self.server = NodeServer(config, initialize=initialize, rng=self.rng, app=self.app)
        """The node runtime (the same as ``pyxos serve``)."""
        self._sink = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        # The hot path's calls by client id (one in flight per session), oldest first.
        self._calls: dict[int, Session] = {}
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._recovering: set[asyncio.Task[None]] = set()
        # The engine's attempts (retries, queries) by (client, seq).
        self._pending: dict[tuple[int, int], asyncio.Future[ClientReply | None]] = {}
        self._idle: list[Session] = []
        self._outbox: list[ClientRequest] = []
        self._route = Route(1)  # the client engine's address book: one "address", this node
        self._query_client = secrets.randbits(63) | 1
        self._query_seq = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._failed: BaseException | None = None
        self._started = False
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the WAL, start listening and dialing the peers; attach the objects."""
        self._loop = asyncio.get_running_loop()
        await self.server.startup()
        self._sink = self.server.attach_sink(self._on_reply)
        self._started = True
        if self.host is not None:
            self.host.bind(self)
        self._tasks.append(asyncio.ensure_future(self._watch()))
        if self.tick_interval is not None and self.host is not None:
            self._tasks.append(asyncio.ensure_future(self._ticker(self.tick_interval)))

    async def stop(self) -> None:
        """Stop the node (calls in flight raise ``NodeStopped``); detach the objects."""
        if self._stopping:
            return
        self._stopping = True
        if self.host is not None:
            self.host.unbind()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._fail_pending(NodeStopped(f"node {self.node_id} stopped"))
        for task in list(self._recovering):
            task.cancel()
        for task in list(self._recovering):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._started:
            self.server.detach_sink(self._sink)
        await self.server.shutdown()

    async def __aenter__(self) -> EmbeddedNode:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def node_id(self) -> int:
        """This node's id."""
        return self.config.node_id

    @property
    def is_leader(self) -> bool:
        """Whether this node leads right now."""
        return self.server.is_leader

    @property
    def leader(self) -> int:
        """The leader this node believes in (0: none known)."""
        return self.server.leader

    async def wait_for_leader(self, timeout: float = 10.0) -> int:
        """Wait until this node knows a leader; return its id (``TimeoutError``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.server.leader == 0:
            if loop.time() >= deadline:
                raise TimeoutError(f"node {self.node_id} knows no leader after {timeout} s")
            await asyncio.sleep(0.01)
        return self.server.leader

    # -- calls -----------------------------------------------------------------------------

    def session(self, client: int | None = None) -> Session:
        """A new session of this node (its own ``(client, seq)`` sequence)."""
        return Session(self, client)

    async def command(self, data: bytes, *, timeout: float | None = None) -> bytes:
        """Submit one command through an idle session; its result once applied."""
        result: bytes = await self.submit(data, timeout=timeout)
        return result

    def submit(
        self,
        data: bytes,
        *,
        timeout: float | None = None,
        decode: Callable[[bytes], Any] | None = None,
    ) -> asyncio.Future[Any]:
        """Submit one command through an idle session without waiting: a future of
        its result (``decode(result)`` if ``decode`` is given; what ``decode`` raises,
        the future raises), or of ``CommandRejected``, ``OutcomeUnknown`` or
        ``NodeStopped``. Call it on the node's event loop. Everything submitted in one
        loop pass reaches the leader together; a done-callback per future and no
        coroutine per call is the cheapest way to keep many calls outstanding (see
        the module notes). Cancelling the future abandons the wait, not the command.
        """
        session = self._idle.pop() if self._idle else Session(self)
        session.seq += 1
        return self._start(session, data, timeout, decode, True)

    def _start(
        self,
        session: Session,
        data: bytes,
        timeout: float | None,
        decode: Callable[[bytes], Any] | None,
        pooled: bool,
    ) -> asyncio.Future[Any]:
        """Send ``session``'s current seq with ``data``; the future of its outcome."""
        loop = self._loop
        if loop is None or not self._started or self._stopping or self._failed is not None:
            if pooled:
                self._idle.append(session)
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            why = f"failed: {self._failed}" if self._failed is not None else "is not running"
            future.set_exception(NodeStopped(f"node {self.node_id} {why}"))
            return future
        future = loop.create_future()
        now = loop.time()
        limit = self.timeout if timeout is None else timeout
        client = session.client
        request = ClientRequest(self._sink, client, session.seq, data, False)
        calls = self._calls
        standin = client in calls
        if standin:
            # A session with a call in flight already (misuse): a stand-in record.
            session = Session(self, client)
            session.seq = request.seq
            pooled = False
        session._future = future
        session._request = request
        session._decode = decode
        session._started = now
        session._limit = limit
        session._pooled = pooled
        if standin or limit < self.attempt_timeout:
            # The stand-in, or a deadline shorter than one attempt: the engine drives
            # it from the first attempt.
            self._recover(session, None, False)
            return future
        calls[client] = session
        if self._sweep_timer is None:
            self._sweep_timer = loop.call_later(self.attempt_timeout / 4, self._sweep)
        self._submit(request)
        return future

    def _sweep(self) -> None:
        """Hand every hot-path call without an answer for ``attempt_timeout`` to the
        engine (its retries); again in a quarter of that while calls are in flight."""
        self._sweep_timer = None
        loop = self._loop
        calls = self._calls
        if loop is None or not calls:
            return
        cutoff = loop.time() - self.attempt_timeout
        old = []
        for session in calls.values():  # oldest first
            if session._started > cutoff:
                break
            old.append(session)
        for session in old:
            del calls[session.client]
            future = session._future
            if future is None or future.done():  # cancelled by its caller: no retries
                self._release(session)
            else:
                self._recover(session, None, True)
        if calls:
            self._sweep_timer = loop.call_later(self.attempt_timeout / 4, self._sweep)

    def _release(self, session: Session) -> None:
        """The call of ``session`` is over: forget it, put the session back if pooled."""
        session._future = None
        session._request = None
        session._decode = None
        if session._pooled:
            session.last = None
            self._idle.append(session)

    def _settle(self, session: Session, reply: ClientReply) -> None:
        """Resolve the future of ``session``'s call with an ``ok`` reply."""
        future, decode = session._future, session._decode
        self._release(session)
        if future is not None:
            _resolve(future, decode, reply)

    def _recover(self, session: Session, reply: ClientReply | None, tried: bool) -> None:
        """Drive ``session``'s call by the engine's retry rule in a task (the cold path)."""
        task = asyncio.ensure_future(self._drive_call(session, reply, tried))
        self._recovering.add(task)
        task.add_done_callback(self._recovering.discard)

    async def _drive_call(self, session: Session, reply: ClientReply | None, tried: bool) -> None:
        future, decode, request = session._future, session._decode, session._request
        assert future is not None and request is not None
        deadline = session._started + session._limit
        key = (request.client, request.seq)
        attempt = self._attempt(request, key)
        try:
            if not tried or reply is None or not reply.ok:
                what = f"command (client {request.client}, seq {request.seq})"
                engine_call = Call(self._route, deadline, session._limit, what)
                reply = await drive(engine_call, attempt, 0, reply, tried)
        except asyncio.CancelledError:
            self._release(session)
            if not future.done():
                future.set_exception(NodeStopped(f"node {self.node_id} stopped"))
            return
        except Exception as e:  # OutcomeUnknown, NodeStopped: the caller's to handle
            self._release(session)
            if not future.done():
                future.set_exception(e)
            return
        finally:
            self._pending.pop(key, None)
        self._release(session)
        _resolve(future, decode, reply)

    def _attempt(self, request: ClientRequest, key: tuple[int, int]) -> Attempt:
        """One attempt of the engine's: submit ``request``, wait for its reply until
        ``until`` or ``attempt_timeout`` (None: no answer)."""
        pending = self._pending
        attempt_timeout = self.attempt_timeout

        async def attempt(_: int, until: float) -> ClientReply | None:
            if self._stopping or self._failed is not None:
                raise NodeStopped(f"node {self.node_id} stopped")
            loop = asyncio.get_running_loop()
            future: asyncio.Future[ClientReply | None] = loop.create_future()
            pending[key] = future
            self._submit(request)
            # No answer by then: None (cheaper than wait_for, which wraps a task).
            timer = loop.call_later(
                max(0.0, min(until - loop.time(), attempt_timeout)), _no_answer, future
            )
            try:
                return await future
            finally:
                timer.cancel()

        return attempt

    async def query(self, data: bytes, *, timeout: float | None = None) -> bytes:
        """Run the read-only ``data`` linearizably (no log entry); its result."""
        self._query_seq += 1
        return await self._run(self._query_client, self._query_seq, data, True, timeout)

    async def _run(
        self, client: int, seq: int, data: bytes, is_query: bool, timeout: float | None
    ) -> bytes:
        """A call driven by the engine from its first attempt (queries)."""
        if self._failed is not None:
            raise NodeStopped(f"node {self.node_id} failed: {self._failed}")
        if not self._started or self._stopping:
            raise NodeStopped(f"node {self.node_id} is not running")
        loop = asyncio.get_running_loop()
        limit = self.timeout if timeout is None else timeout
        deadline = loop.time() + limit
        key = (client, seq)
        request = ClientRequest(self._sink, client, seq, data, is_query)
        pending = self._pending
        attempt = self._attempt(request, key)

        try:
            # The first attempt here (the hot path: no Call); retries by the engine's rule.
            reply = await attempt(0, deadline)
            if reply is None or not reply.ok:
                what = f"{'query' if is_query else 'command'} (client {client}, seq {seq})"
                call = Call(self._route, deadline, limit, what)
                reply = await drive(call, attempt, 0, reply, True)
        finally:
            pending.pop(key, None)
        if reply.error is not None and not reply.result:
            raise CommandRejected(reply.error)
        return reply.result

    def _submit(self, request: ClientRequest) -> None:
        """Queue ``request``; everything queued in one loop pass goes in together."""
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(request)

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        self.server.submit(outbox)

    def _on_reply(self, reply: ClientReply) -> None:
        calls = self._calls
        session = calls.get(reply.client)
        if (
            session is not None
            and session._request is not None
            and session._request.seq == reply.seq
        ):
            del calls[reply.client]
            if reply.ok:
                self._settle(session, reply)
            else:  # a refusal: the engine's retries
                self._recover(session, reply, True)
            return
        future = self._pending.get((reply.client, reply.seq))
        if future is not None and not future.done():
            future.set_result(reply)

    def _fail_pending(self, error: BaseException) -> None:
        calls = list(self._calls.values())
        self._calls.clear()
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        for session in calls:
            future = session._future
            self._release(session)
            if future is not None and not future.done():
                future.set_exception(error)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()

    async def _watch(self) -> None:
        """Fail every pending call if the node stops on a fatal error."""
        try:
            await self.server.serve_forever()
        except NodeFailed as e:
            self._failed = e
            logger.error("embedded node %d failed: %s", self.node_id, e)
            self._fail_pending(NodeStopped(str(e)))

    async def _ticker(self, interval: float) -> None:
        session = Session(self)
        tick = tick_command()
        while True:
            await asyncio.sleep(interval)
            if not self.server.is_leader:
                continue
            with contextlib.suppress(OutcomeUnknown, CommandRejected):
                await session.command(tick, timeout=max(interval, self.attempt_timeout))
