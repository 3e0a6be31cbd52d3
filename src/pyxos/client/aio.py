"""The asyncio client of the replicated KV store (binary protocol).

Theory of operation
-------------------
A client is one *logical client* of the state machine: a ``client_id`` (a random 63-bit
number unless given) and a sequence number ``seq`` that grows by one per command. The
store remembers the last ``seq`` it applied per client and its result, so a command
retried with the SAME ``(client_id, seq)`` is applied at most once, however many
nodes and leaders it passes through. That is why a client runs one command at a time
(``execute`` takes a turn): run several clients to have several commands in flight.

What happens to a command that is not answered at the first try (leader discovery,
redirects, "no leader yet", backoff, the deadline and ``OutcomeUnknown``) is the client
engine's (``pyxos.client.engine``), shared with ``ClientPool`` sessions and the HTTP
API; this module is its transport for one client with one connection per node, and
the key-value operations (``KVOperations``) written once for every transport.

Finding the leader: the client knows a list of node addresses. It sends a command to
the node it believes leads (at first, the first address). A follower that knows the
leader forwards the command there and relays the answer, which names the leader, so
the client goes straight to it next time. Every reply names the node that sent it
(``src``), so the client learns which address is which node as it goes (or is told
up front, with a ``{node_id: "host:port"}`` mapping).

Outcomes: when the overall ``timeout`` runs out the command may or may not have been
applied (it may sit in a slot that will still be chosen), so the client raises
:class:`OutcomeUnknown`, never a plain failure. A command the service refuses outright
(invalid key or value, a stale seq) raises :class:`CommandRejected`; its effect is
known: none. So is that of :class:`NodeUnavailable`: every node it was sent to turned
it away before it reached a log and said why (its disk is full). Neither is recorded
in ``history``. A key-value operation sent to nodes that serve another application
raises :class:`NotKeyValue`, saying so. Any later command of this client is answered
normally. ``history``
receives every get/put/delete/cas in the history format of docs/architecture.md
("Histories"), with an unknown outcome for a command that timed out or was cancelled.

The wire: the same framing as between nodes (``pyxos.net.codec``), a ``Hello`` with
role ``"client"`` and node 0, then ``ClientRequest`` frames, each carrying the
msgpack-encoded ``Command``; replies are ``ClientReply`` frames. One connection per
node address, opened lazily and kept.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self

import msgspec

from pyxos.client.engine import (
    Call,
    ClientError,
    CommandRejected,
    NodeUnavailable,
    OutcomeUnknown,
    Route,
    drive,
    turned_away,
)
from pyxos.core.messages import ClientReply, ClientRequest, Message
from pyxos.net.codec import PROTOCOL_VERSION, Hello, encode_message
from pyxos.net.link import FramedProtocol
from pyxos.net.tls import TlsFiles, client_context
from pyxos.statemachine.kv import (
    DEFAULT_LIST_LIMIT,
    QUERY_OPS,
    Command,
    Result,
    decode_result,
)

__all__ = [
    "DEFAULT_CLUSTER",
    "AsyncClient",
    "ClientError",
    "Closeable",
    "CommandRejected",
    "History",
    "KVOperations",
    "ListPage",
    "NodeUnavailable",
    "NotKeyValue",
    "OutcomeUnknown",
    "check_client_id",
    "describe",
    "new_client_id",
    "parse_address",
    "route_of",
    "tls_context",
]

DEFAULT_CLUSTER = "pyxos"
"""The cluster id a client announces unless told otherwise (it must match the nodes')."""

History = Callable[[dict[str, Any]], None]
"""Receives one history record (docs/architecture.md, "Histories") per get/put/delete/cas."""

_command_encoder = msgspec.msgpack.Encoder()

# What ``KVOperations._run`` returns of a command's ``Result``.
_RESULT, _VALUE, _OK, _NOTHING = 0, 1, 2, 3
_HISTORY_OPS = frozenset({"get", "put", "delete", "cas"})


def new_client_id() -> int:
    """A random client id in ``[1, 2**63)``."""
    return secrets.randbits(63) or 1


def tls_context(
    ca: str | Path | None, cert: str | Path | None = None, key: str | Path | None = None
) -> ssl.SSLContext | None:
    """The SSL context of a client: trusts ``ca`` (the cluster's CA), presents ``cert``
    and ``key`` if given; None (plain TCP) without ``ca``."""
    if ca is None:
        if cert is not None or key is not None:
            raise ValueError("a client certificate needs the CA too (--ca)")
        return None
    files = TlsFiles(
        Path(ca), Path(cert) if cert is not None else None, Path(key) if key is not None else None
    )
    return client_context(files)


def parse_address(text: str) -> tuple[str, int]:
    """Split ``"host:port"`` (``"[::1]:7101"`` for IPv6) into ``(host, port)``."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected 'host:port', got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class ListPage(NamedTuple):
    """One page of a ``list``: its entries, and where the next page starts."""

    entries: list[tuple[str, str]]
    """``(key, value)`` pairs, sorted by key."""
    more: bool
    """Whether keys with the prefix follow this page."""
    next: str | None
    """The key to pass as ``after`` for the next page (None when there is no more)."""


def route_of(addresses: Sequence[str] | Mapping[int, str]) -> tuple[list[tuple[str, int]], Route]:
    """The ``(host, port)`` of each address, and the engine's ``Route`` over them: a
    ``{node_id: "host:port"}`` mapping tells up front which node is at which index; a
    plain list leaves that to the replies."""
    if isinstance(addresses, Mapping):
        items = sorted(addresses.items())
        hosts = [parse_address(a) for _, a in items]
        index_of = {node: i for i, (node, _) in enumerate(items)}
    else:
        hosts = [parse_address(a) for a in addresses]
        index_of = {}
    if not hosts:
        raise ValueError("a client needs at least one node address")
    return hosts, Route(len(hosts), index_of)


def check_client_id(client_id: int | None) -> None:
    """Raise ``ValueError`` unless ``client_id`` is None or in ``[1, 2**63)``."""
    if client_id is not None and not 0 < client_id < 2**63:
        raise ValueError(f"client_id must be in [1, 2**63), not {client_id}")


def describe(client: int, seq: int, command: Command | None) -> str:
    """How an ``OutcomeUnknown`` names the command ``(client, seq)``: by its KV ``op``
    and ``key``, or (``command`` None: opaque bytes) as "command"."""
    what = "command" if command is None else f"{command.op} {command.key!r}"
    return f"{what} (client {client}, seq {seq})"


class Closeable:
    """``async with`` for anything with an ``async close()``."""

    async def close(self) -> None:
        """Close every connection."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class KVOperations:
    """The key-value operations of one logical client, written once for every
    transport: ``execute`` numbers the command, runs it through the subclass's
    ``_call`` (the engine's retries over its connections) and records it in
    ``history``; ``get``, ``put``, ``delete``, ``cas`` and ``list`` are built on it."""

    client_id: int
    """This logical client's id: with ``seq``, what makes a retry apply once."""
    seq: int
    """The seq of the last command issued (the next one gets ``seq + 1``)."""
    history: History | None
    """Called with one JSON-ready dict per get/put/delete/cas, in the history format of
    docs/architecture.md ("Histories"); ``return`` and ``ok`` are None when the outcome
    is unknown; commands the service refused are not recorded. ``call`` and ``return``
    are ``time.monotonic_ns()``."""
    # One command at a time: ``_busy`` while a command holds the turn; ``_turns`` the
    # commands waiting for it, in order (None until there ever was a wait). A plain flag
    # rather than an ``asyncio.Lock``: uncontended (the usual case) taking and giving
    # back the turn costs no call at all (the lock's acquire, release and wake-up were
    # three calls per command, 5% of a load generator's CPU).
    _busy: bool = False
    _turns: collections.deque[asyncio.Future[None]] | None = None

    @property
    def closed(self) -> bool:
        """Whether this client refuses new commands (it, or its pool, was closed)."""
        raise NotImplementedError

    async def _take_turn(self) -> None:
        """Wait until the command in flight (and every one queued before) is done; on
        return this caller holds the turn (``_busy``). The contended path."""
        turns = self._turns
        if turns is None:
            turns = self._turns = collections.deque()
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        turns.append(turn)
        try:
            await turn
        except BaseException:
            if turn.done() and not turn.cancelled():
                self._give_turn()  # handed the turn, then cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    turns.remove(turn)
            raise

    def _give_turn(self) -> None:
        """End this caller's turn: hand it to the first live waiter, else free it."""
        turns = self._turns
        while turns:
            turn = turns.popleft()
            if not turn.done():
                turn.set_result(None)  # ``_busy`` stays set: the waiter holds it now
                return
        self._busy = False

    async def _call(
        self, seq: int, payload: bytes, command: Command | None, query: bool = False
    ) -> ClientReply:
        """Send the request ``(client_id, seq, payload)`` (a query if ``query``: lease or
        read-index, never the log) until a node answers it (the
        caller took ``seq`` holding the turn); that reply, or the engine's
        ``OutcomeUnknown`` (the transport's part). ``payload`` is opaque to the
        transport and the engine (any application's command bytes); ``command``, the KV
        command it encodes if any, only names it in errors."""
        raise NotImplementedError

    async def command(self, command: bytes) -> bytes:
        """Send the application's ``command`` bytes through the log; return its result
        bytes once it is chosen, durable and applied, exactly once however often it is
        retried. Works with any application (``pyxos serve --app``).

        Raises ``CommandRejected`` if the application refused it (``validate``) or its
        ``apply`` raised, ``OutcomeUnknown`` if no answer came within the timeout.
        """
        return await self._opaque(command, query=False)

    async def query(self, q: bytes) -> bytes:
        """Ask the application the read-only question ``q`` (linearizable, without the
        log); return its answer bytes. Raises as ``command`` does."""
        return await self._opaque(q, query=True)

    async def _opaque(self, data: bytes, *, query: bool) -> bytes:
        if self.closed:
            raise ClientError("the client is closed")
        if self._busy:
            await self._take_turn()
        else:
            self._busy = True
        try:
            self.seq = seq = self.seq + 1
            reply = await self._call(seq, data, None, query)
        finally:
            if self._turns:
                self._give_turn()
            else:
                self._busy = False
        if reply.error is not None:
            raise CommandRejected(reply.error)
        return reply.result

    def execute(
        self,
        op: str,
        key: str,
        value: str | None = None,
        expected: str | None = None,
        *,
        limit: int = 0,
        after: str | None = None,
    ) -> Coroutine[Any, Any, Result]:
        """Run one command with a fresh seq and retries; return its ``Result`` (a
        coroutine: ``await client.execute(...)``).

        Raises ``OutcomeUnknown`` after the ``timeout`` without an answer,
        ``CommandRejected`` if the service refused the command, ``NodeUnavailable`` if
        every node it went to turned it away saying why (its disk is full), and
        ``ClientError`` if the client is closed.
        """
        return self._run(op, key, value, expected, limit, after, _RESULT)

    async def _run(
        self,
        op: str,
        key: str,
        value: str | None,
        expected: str | None,
        limit: int,
        after: str | None,
        shape: int,
    ) -> Any:
        """``execute``, returning what ``shape`` says of the ``Result`` (``_RESULT``,
        ``_VALUE``, ``_OK`` or ``_NOTHING``). ``get``/``put``/``delete``/``cas`` are
        plain functions that return this coroutine: one coroutine frame per command
        fewer to enter and leave at every resumption (docs/architecture.md, "Speed")."""
        if self.closed:
            raise ClientError("the client is closed")
        if self._busy:
            await self._take_turn()
        else:
            self._busy = True  # uncontended (the usual case): no call, no suspension
        try:
            self.seq = seq = self.seq + 1
            command = Command(self.client_id, seq, op, key, value, expected, limit, after)
            history = self.history
            call = time.monotonic_ns() if history is not None else 0
            try:
                reply = await self._call(
                    seq, _command_encoder.encode(command), command, op in QUERY_OPS
                )
                try:
                    result = _decode_result(reply.result)
                except msgspec.DecodeError:
                    result = _kv_result(reply, command)
            except NodeUnavailable:
                raise  # turned away before any log: no effect, so no event of the history
            except NotKeyValue as e:
                # The node serves another application. If it refused the command, the
                # command had no effect (no event); otherwise who knows what it did.
                if history is not None and not e.refused:
                    _record(history, command, call, None, None)
                raise
            except BaseException:
                # Timed out, cancelled, closed under it or an undecodable answer: the
                # command may or may not have taken effect. The history holds every
                # call, so it is recorded with an unknown outcome.
                if history is not None:
                    _record(history, command, call, None, None)
                raise
            if history is not None:
                _record(history, command, call, time.monotonic_ns(), result)
        finally:
            if self._turns:
                self._give_turn()
            else:
                self._busy = False
        if result.error is not None:
            raise CommandRejected(result.error)
        if shape == _VALUE:
            return result.value
        if shape == _NOTHING:
            return None
        if shape == _OK:
            return result.ok
        return result

    def get(self, key: str) -> Coroutine[Any, Any, str | None]:
        """The value of ``key`` (``None`` if absent), linearizable (read-index at the
        leader). A coroutine: ``await client.get(key)``."""
        return self._run("get", key, None, None, 0, None, _VALUE)

    def put(self, key: str, value: str) -> Coroutine[Any, Any, None]:
        """Set ``key`` to ``value``. A coroutine: ``await client.put(key, value)``."""
        return self._run("put", key, value, None, 0, None, _NOTHING)

    def delete(self, key: str) -> Coroutine[Any, Any, str | None]:
        """Remove ``key``; return the value it had (``None`` if it was absent). A
        coroutine: ``await client.delete(key)``."""
        return self._run("delete", key, None, None, 0, None, _VALUE)

    def cas(self, key: str, expected: str | None, value: str) -> Coroutine[Any, Any, bool]:
        """Set ``key`` to ``value`` if it is ``expected`` (``None``: absent); True if
        set. A coroutine: ``await client.cas(key, expected, value)``."""
        return self._run("cas", key, value, expected, 0, None, _OK)

    async def list_page(
        self, prefix: str = "", *, limit: int = DEFAULT_LIST_LIMIT, after: str | None = None
    ) -> ListPage:
        """One page of the keys starting with ``prefix``, after the key ``after`` (None:
        from the first): at most ``limit`` entries (1 to ``MAX_LIST_ENTRIES``), fewer
        if their values are large. Linearizable, like ``get``."""
        if not limit >= 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        result = await self.execute("list", prefix, limit=limit, after=after)
        entries = list(result.values or [])
        more = result.more and bool(entries)
        return ListPage(entries, more, entries[-1][0] if more else None)

    async def iter_list(
        self, prefix: str = "", *, page_size: int = DEFAULT_LIST_LIMIT, after: str | None = None
    ) -> AsyncIterator[tuple[str, str]]:
        """Every ``(key, value)`` whose key starts with ``prefix``, in key order, fetched
        page by page (``page_size`` entries per request). Each page is linearizable on
        its own; together they are not one snapshot (as with etcd's paginated range)."""
        while True:
            page = await self.list_page(prefix, limit=page_size, after=after)
            for entry in page.entries:
                yield entry
            if not page.more:
                return
            after = page.next

    async def list(self, prefix: str = "") -> builtins.list[tuple[str, str]]:
        """Every ``(key, value)`` whose key starts with ``prefix``, sorted by key: all
        pages of ``iter_list`` (see there)."""
        return [entry async for entry in self.iter_list(prefix)]


class NotKeyValue(ClientError):
    """A key-value operation got an answer that is not a key-value result: the nodes
    serve another application (``pyxos serve --app``). Its own commands and queries go
    through ``command()`` and ``query()`` (``pyxos app command|query``).

    ``refused``: the application refused the command (it had no effect); otherwise
    it answered, and what the command did to it is its own business."""

    def __init__(self, message: str, *, refused: bool) -> None:
        super().__init__(message)
        self.refused = refused


_decode_result = msgspec.msgpack.Decoder(Result).decode
"""``decode_result`` without its call (once per command)."""


def _kv_result(reply: ClientReply, command: Command) -> Result:
    """The KV ``Result`` of ``reply``; ``NotKeyValue`` if it holds none (the key-value
    store always answers with one, refusals included)."""
    try:
        return decode_result(reply.result)
    except msgspec.DecodeError:
        pass
    what = f"{command.op} {command.key!r}"
    hint = (
        "the nodes serve another application than the key-value store (pyxos serve "
        "--app); send it its own commands with command()/query() (pyxos app command|query)"
    )
    if reply.error is not None:
        raise NotKeyValue(f"{what} was refused: {reply.error}; {hint}", refused=True)
    shown = reply.result[:40]
    more = "..." if len(reply.result) > 40 else ""
    raise NotKeyValue(
        f"{what} was answered with {shown!r}{more}, which is not a key-value result; {hint}",
        refused=False,
    )


def _record(
    history: History, command: Command, call: int, ret: int | None, result: Result | None
) -> None:
    """Hand one operation to ``history`` (docs/architecture.md, "Histories")."""
    if command.op not in _HISTORY_OPS:
        return
    if result is not None and result.error is not None:
        # Refused by the service: it definitely had no effect, so it is no event of
        # the history (recording it as ok=false would read as a failed cas compare).
        return
    history(
        {
            "client": command.client,
            "op": command.op,
            "key": command.key,
            "value": command.value,
            "expected": command.expected,
            "call": call,
            "return": ret,
            "output": result.value if result is not None and command.op == "get" else None,
            "ok": None if result is None else result.ok,
        }
    )


class AsyncClient(KVOperations, Closeable):
    """A KV client over the binary protocol: ``get / put / delete / cas / list``.

    ``addresses`` lists the nodes' client addresses ``"host:port"``, or maps node ids to
    them. ``timeout`` bounds a whole command (then ``OutcomeUnknown``),
    ``attempt_timeout`` one try at one node. ``cluster`` must be the nodes'
    ``cluster_id``. ``history``, if given, receives every get/put/delete/cas as a
    history record for the linearizability checker. Use ``async with`` or ``close()``.

    TLS (nodes with ``tls_*`` configured): ``ca`` is the cluster's CA certificate, which
    the nodes' certificates must verify against; ``cert``/``key`` present a client
    certificate. ``token``: the bearer token the nodes require (``tokens`` configured).
    """

    def __init__(
        self,
        addresses: Sequence[str] | Mapping[int, str],
        client_id: int | None = None,
        *,
        cluster: str = DEFAULT_CLUSTER,
        timeout: float = 5.0,
        attempt_timeout: float = 1.0,
        connect_timeout: float = 1.0,
        history: History | None = None,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        token: str | None = None,
    ) -> None:
        self._addresses, self.route = route_of(addresses)
        self._tls = tls_context(ca, cert, key)
        check_client_id(client_id)
        self.client_id = client_id if client_id is not None else new_client_id()
        self.seq = 0
        self.cluster = cluster
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self.connect_timeout = connect_timeout
        self.retries = 0
        """Attempts beyond the first, over the client's life (for tests and metrics)."""
        self.history = history
        self._hello = Hello(
            version=PROTOCOL_VERSION, cluster=cluster, node=0, role="client", token=token or ""
        )
        self._conns: dict[int, FramedProtocol] = {}
        # Node index -> the notice its last connection was refused with (see
        # ``engine.turned_away``); cleared when the next connection to it is dialled.
        self._notices: dict[int, ClientReply] = {}
        self._attempt: _Attempt | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._closed

    @property
    def leader(self) -> int:
        """The leader as the last answer named it (0: none yet)."""
        return self.route.leader

    @property
    def answered_by(self) -> int:
        """The node id that answered the last command (0: none yet): the leader, or a
        follower that forwarded the command to the leader and relayed its reply."""
        return self.route.answered_by

    @property
    def no_leader_replies(self) -> int:
        """Answers "no leader yet" (``ok=False, leader=0``) received, over the client's life."""
        return self.route.no_leader_replies

    # -- the transport: one connection per node ----------------------------------------

    async def _call(
        self, seq: int, payload: bytes, command: Command | None, query: bool = False
    ) -> ClientReply:
        """The first attempt, at the route's target; the engine (``drive``) takes over
        if it got no answer or a refusal. (The first attempt is here rather than in the
        engine to keep the ``Call`` and a coroutine frame off the usual path.)"""
        loop = asyncio.get_running_loop()
        frame = encode_message(ClientRequest(0, self.client_id, seq, payload, query))
        deadline = loop.time() + self.timeout
        route = self.route
        index = route.target
        reply = await self._try(index, seq, frame, self.timeout)
        if reply is not None and reply.ok:
            route.answered(reply)
            return reply

        async def attempt(index: int, deadline: float) -> ClientReply | None:
            return await self._try(index, seq, frame, deadline - loop.time())

        call = Call(route, deadline, self.timeout, describe(self.client_id, seq, command))
        try:
            return await drive(call, attempt, index, reply, True)
        finally:
            self.retries += call.retries

    async def _try(
        self, index: int, seq: int, frame: bytes, remaining: float
    ) -> ClientReply | None:
        """Send to node ``index`` and wait for its reply; None if none came."""
        loop = asyncio.get_running_loop()
        conn = self._conns.get(index)
        if conn is None or not conn.is_open:
            try:
                conn = await asyncio.wait_for(
                    self._connect(index), min(remaining, self.connect_timeout)
                )
            except (OSError, TimeoutError):
                return None
        future: asyncio.Future[ClientReply] = loop.create_future()
        self._attempt = _Attempt(seq, index, future)
        try:
            if not conn.send(frame):
                return turned_away(self._notices.get(index), self.client_id, seq)
            return await asyncio.wait_for(future, min(remaining, self.attempt_timeout))
        except (TimeoutError, ConnectionError):
            # A node that refused the connection said why first (see ``_on_replies``).
            return turned_away(self._notices.get(index), self.client_id, seq)
        finally:
            self._attempt = None

    async def _connect(self, index: int) -> FramedProtocol:
        conn = self._conns.get(index)
        if conn is not None and conn.is_open:
            return conn
        host, port = self._addresses[index]
        loop = asyncio.get_running_loop()
        self._notices.pop(index, None)

        def on_messages(_: int, msgs: builtins.list[Message]) -> None:
            self._on_replies(index, msgs)

        def on_lost(lost: FramedProtocol, exc: Exception | None) -> None:
            if self._conns.get(index) is lost:
                del self._conns[index]
            attempt = self._attempt
            if attempt is not None and attempt.index == index and not attempt.future.done():
                attempt.future.set_exception(ConnectionError(f"connection to {host}:{port} lost"))

        _, conn = await loop.create_connection(
            lambda: FramedProtocol(
                on_messages,
                hello=self._hello,
                label=f"client link to {host}:{port}",
                on_lost=on_lost,
            ),
            host,
            port,
            ssl=self._tls,
            server_hostname=host if self._tls is not None else None,
        )
        self._conns[index] = conn
        return conn

    def _on_replies(self, index: int, msgs: builtins.list[Message]) -> None:
        attempt = self._attempt
        for msg in msgs:
            if not isinstance(msg, ClientReply):
                continue
            self.route.learn(msg.src, index)
            if (
                attempt is not None
                and msg.client == self.client_id
                and msg.seq == attempt.seq
                and not attempt.future.done()
            ):
                attempt.future.set_result(msg)
            elif msg.client == 0 and msg.error is not None:
                # The node refused the connection and says why; it closes it next.
                self._notices[index] = msg
                if attempt is not None and attempt.index == index and not attempt.future.done():
                    attempt.future.set_result(turned_away(msg, self.client_id, attempt.seq))

    # -- lifecycle --------------------------------------------------------------------

    async def close(self) -> None:
        """Close every connection."""
        self._closed = True
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.shutdown(0.5)


class _Attempt:
    """The reply one sent request is waiting for."""

    __slots__ = ("future", "index", "seq")

    def __init__(self, seq: int, index: int, future: asyncio.Future[ClientReply]) -> None:
        self.seq = seq
        self.index = index
        self.future = future
