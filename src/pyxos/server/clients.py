"""The client port: binary client connections, tokens, and in-process clients.

Theory of operation
-------------------
Clients speak the binary protocol on their own port: the same framing as the peers, a
``Hello`` with role ``"client"``, then ``ClientRequest`` frames. Each connection gets
an id >= ``CLIENT_ID_BASE`` (never a node id); the request's ``src`` is overwritten
with it, so the ``ServiceNode`` addresses the ``ClientReply`` to that connection and
the driver writes it back there. A follower forwards its clients' requests to the
leader and relays the replies (the ``ServiceNode`` does it; requests and replies then
travel between peers like any message). Bad bytes close only that connection (the codec and
``FramedProtocol`` take care of it); a reply for a connection that is gone is dropped,
and the client retries with the same ``(client, seq)``.

Every listening port (client, peer, HTTP) enforces the config's limits on what its
connections may make the node hold (``pyxos.net.limits``): ``max_connections`` open at
once, ``max_buffered_bytes`` of unfinished frames together, ``frame_timeout`` seconds
per frame; a client frame is refused on its header beyond ``client_max_frame_bytes``.
Whatever an attacker sends, the buffered bytes of the three ports stay under three
times ``max_buffered_bytes``, and the client port keeps serving the others.

A client connection that sends no frame for ``client_idle_timeout`` seconds after its
``Hello`` is closed (``idle_timeouts``): without it, connections that said ``Hello``
and nothing more held their slots for ever, and ``max_connections`` of them locked
every new client out. The client reconnects on its next command, with the same
``(client, seq)`` if it was retrying, so nothing is lost or applied twice. At the
cap a new connection is refused (``connections_refused``), as PostgreSQL, Redis and
ZooKeeper do, rather than let in by evicting an idle one: eviction would let a flood
of new connections close established clients' connections too. Like Redis's "max
number of clients reached", the refused connection first gets a notice saying why
(``listen``; not under TLS, whose handshake comes first), which a client reports if
no other node takes the command (``client.engine.NodeUnavailable``).

In-process clients (the HTTP API) register a reply sink (``attach_sink``) and get an
id from the same range; their requests are fed with ``submit``, and their replies go
to the sink instead of a socket. What such a client may use of its node is
``NodeHandle``: the HTTP API depends on that small interface, not on ``NodeServer``,
so the server's modules import downward only (docs/architecture.md, *Layers*).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import Any, Protocol, cast

import msgspec

from pyxos.core.messages import ClientReplies, ClientReply, ClientRequest, ClientRequests, Message
from pyxos.net.codec import CLIENT_PROTOCOL_VERSION, Hello, check_hello, encode_message
from pyxos.net.limits import PortGuard, PortLimits
from pyxos.net.link import FramedProtocol, FramedServer, new_counters, serve_framed
from pyxos.server.auth import READ_OPS
from pyxos.server.config import Config
from pyxos.server.diskfull import DiskFull
from pyxos.server.effects import DriverStats
from pyxos.server.metrics import NodeMetrics
from pyxos.statemachine.kv import Command, Result, encode_result
from pyxos.statemachine.service import ServiceNode

__all__ = ["CLIENT_ID_BASE", "ClientPort", "NodeHandle", "ReplySink"]

logger = logging.getLogger("pyxos.server")

CLIENT_ID_BASE = 1_000_000
"""Client connections get ids from here on, so they never collide with node ids."""

ReplySink = Callable[[ClientReply], None]
"""Where an in-process client (the HTTP API) receives its replies."""


class NodeHandle(Protocol):
    """What an in-process client (the HTTP API) uses of its node (``NodeServer``)."""

    @property
    def config(self) -> Config:
        """The node's configuration."""
        ...

    @property
    def node(self) -> ServiceNode | None:
        """The pure node (None before ``startup``)."""
        ...

    @property
    def metrics(self) -> NodeMetrics:
        """The node's metrics."""
        ...

    @property
    def port_limits(self) -> PortLimits:
        """What each listening port lets its connections hold."""
        ...

    @property
    def client_tls(self) -> ssl.SSLContext | None:
        """The client ports' TLS context (None: TLS off)."""
        ...

    def status(self) -> dict[str, Any]:
        """A JSON-ready summary of the node."""
        ...

    def attach_sink(self, sink: ReplySink) -> int:
        """Register an in-process client; return the ``src`` its requests carry."""
        ...

    def detach_sink(self, cid: int) -> None:
        """Forget an in-process client."""
        ...

    def submit(self, requests: list[ClientRequest]) -> None:
        """Feed requests of in-process clients."""
        ...


class ClientPort:
    """The node's clients: connections on the binary port and in-process sinks.

    ``feed`` hands client requests to the node (one input batch); ``stats`` counts
    connections and requests.
    """

    def __init__(
        self,
        config: Config,
        stats: DriverStats,
        feed: Callable[[list[Message]], None],
        disk_full: DiskFull | None = None,
        feed_from: Callable[[int, list[ClientRequest]], None] | None = None,
    ) -> None:
        self.config = config
        self.stats = stats
        self.feed = feed
        self.feed_from = feed_from
        """Hands the node the requests of one connection in one call (``src``: the
        connection's id, whatever the requests' own ``src`` says); None: ``feed``
        with each request's ``src`` set."""
        self.counters = new_counters()
        """Counters of the client connections."""
        self.server: FramedServer | None = None
        """The listening client port (set by the node's ``startup``)."""
        self.connections: dict[int, FramedProtocol] = {}
        self.single: set[int] = set()
        """The connections of client protocol 1: their replies go one frame each."""
        # The role of each authenticated client connection (tokens configured);
        # a connection absent from it presented no valid token.
        self._roles: dict[int, str] = {}
        self._sinks: dict[int, ReplySink] = {}
        self._next_client = CLIENT_ID_BASE
        self.disk_full = disk_full
        """While it is active the node takes no request (``server.diskfull``)."""

    def new_client_id(self) -> int:
        """A fresh client id (never a node id)."""
        cid = self._next_client
        self._next_client += 1
        return cid

    def attach_sink(self, sink: ReplySink) -> int:
        """Register an in-process client; return the ``src`` id its requests must carry."""
        cid = self.new_client_id()
        self._sinks[cid] = sink
        return cid

    def detach_sink(self, cid: int) -> None:
        """Forget an in-process client registered with ``attach_sink``."""
        self._sinks.pop(cid, None)

    def deliver(self, dst: int, msg: Message, frame: Callable[[], bytes]) -> None:
        """Hand ``msg`` to client ``dst``: its sink, or its connection (``frame()``
        encodes it, once for every destination); dropped if the client is gone (it
        retries with the same ``(client, seq)``)."""
        sink = self._sinks.get(dst)
        if sink is not None:
            if isinstance(msg, ClientReply):
                sink(msg)
            elif isinstance(msg, ClientReplies):
                for reply in msg.replies:
                    sink(reply)
            return
        conn = self.connections.get(dst)
        if conn is not None:
            data = frame()
            if data:
                conn.send(data)

    def submit(self, requests: list[ClientRequest]) -> None:
        """Feed requests of connections or sinks to the node, or, while its disk is
        full, refuse each at once with the reason: a connection gets a refusal turned
        away at the door (``ok=False`` with ``error``: the client engine tries another
        node, and tells its caller the reason if every node it may use says so), a
        sink (the HTTP API) an answer saying so: the command had no effect if this was
        its first submission; after an unanswered one it may have
        (``client.local.LocalClients``: outcome unknown)."""
        reason = self.disk_full.reason if self.disk_full is not None else None
        if reason is None:
            feed_from = self.feed_from
            if feed_from is not None and requests:
                # All from one sink (an embedded node's calls): one step_requests call.
                src = requests[0].src
                if src in self._sinks and all(r.src == src for r in requests):
                    feed_from(src, requests)
                    return
            self.feed(list(requests))
            return
        result = encode_result(Result(ok=False, error=reason))
        self.counters["refused"] = self.counters.get("refused", 0) + len(requests)
        for r in requests:
            sink = r.src in self._sinks
            reply = ClientReply(self.config.node_id, r.client, r.seq, sink, result, 0, reason)
            self.deliver(r.src, reply, lambda reply=reply: encode_message(reply))  # type: ignore[misc]

    async def listen(self, limits: PortLimits, tls: ssl.SSLContext | None) -> None:
        """Listen on the config's client port (``server``), under ``limits``; a
        connection over ``max_connections`` gets a notice saying so and is closed (a
        ``ClientReply`` for client 0 turned away with the reason: the client engine
        tries another node, or tells its caller, see ``client.engine``)."""
        config = self.config
        notice = ClientReply(
            config.node_id,
            0,
            0,
            False,
            b"",
            0,
            f"node {config.node_id} refused the connection: its client port has "
            f"{limits.max_connections} connections open (max_connections); try again later",
        )
        self.server = await serve_framed(
            config.host,
            config.client_port,
            self.protocol,
            limits=limits,
            counters=self.counters,
            name=f"node {config.node_id} client port",
            tls=tls,
            refusal=encode_message(notice),
        )

    def abort_all(self) -> None:
        """Close every client connection at once (shutdown)."""
        for conn in list(self.connections.values()):
            conn.abort()

    def protocol(self, guard: PortGuard) -> FramedProtocol:
        """A protocol for one new connection on the client port."""
        holder: list[FramedProtocol] = []
        cluster = self.config.cluster_id
        tokens = self.config.tokens

        def accept_hello(hello: Hello) -> int:
            check_hello(
                hello, cluster, CLIENT_PROTOCOL_VERSION, expected_role="client", oldest_version=1
            )
            cid = self.new_client_id()
            self.connections[cid] = holder[0]
            if hello.version < 2:
                self.single.add(cid)
            self.stats.client_connections += 1
            if tokens is not None:
                role = tokens.role(hello.token)
                if role is None:
                    self.counters["auth_refused"] = self.counters.get("auth_refused", 0) + 1
                    logger.warning(
                        "node %d: %s %s: its requests are refused",
                        self.config.node_id,
                        holder[0].label,
                        "presented an unknown token" if hello.token else "did not present a token",
                    )
                else:
                    self._roles[cid] = role
            return cid

        conn = FramedProtocol(
            self._on_messages if tokens is None else self._on_messages_auth,
            counters=self.counters,
            accept_hello=accept_hello,
            handshake_timeout=min(5.0, self.config.frame_timeout),
            max_frame_bytes=self.config.client_max_frame_bytes,
            on_lost=self._on_lost,
            guard=guard,
            idle_timeout=self.config.client_idle_timeout,
        )
        holder.append(conn)
        return conn

    def _on_messages_auth(self, cid: int, msgs: list[Message]) -> None:
        """``_on_messages`` behind the token check (``pyxos.server.auth``): a
        connection without a valid token gets every request refused, one with a read
        token its writes; a refused request never reaches the log."""
        role = self._roles.get(cid)
        if role == "write":
            self._on_messages(cid, msgs)
            return
        allowed: list[Message] = []
        conn = self.connections.get(cid)
        for msg in self._requests(msgs):
            if role is not None and msg.query:
                allowed.append(msg)  # a query changes nothing: a read token may ask it
                continue
            if role is None:
                error = "unauthorized: this node requires a valid token (--token)"
                counter = "auth_refused"
            else:
                try:
                    op = msgspec.msgpack.decode(msg.command, type=Command).op
                except (msgspec.DecodeError, msgspec.ValidationError):
                    op = "?"
                if op in READ_OPS:
                    allowed.append(msg)
                    continue
                what = op if op != "?" else "run a command that is not a KV read"
                error = f"forbidden: a read-only token may not {what}"
                counter = "auth_forbidden"
            self.counters[counter] = self.counters.get(counter, 0) + 1
            if conn is not None:
                result = encode_result(Result(ok=False, error=error))
                reply = ClientReply(
                    self.config.node_id, msg.client, msg.seq, True, result, 0, error
                )
                conn.send(encode_message(reply))
        if allowed:
            self._on_messages(cid, allowed)

    def _on_lost(self, conn: FramedProtocol, exc: Exception | None) -> None:
        if self.connections.get(conn.peer_id) is conn:
            del self.connections[conn.peer_id]
            self._roles.pop(conn.peer_id, None)
            self.single.discard(conn.peer_id)

    def _requests(self, msgs: list[Message]) -> list[ClientRequest]:
        """The requests of one received chunk, batched frames (``ClientRequests``)
        opened; any other message is counted and dropped."""
        first = msgs[0]
        if len(msgs) == 1 and type(first) is ClientRequests:
            return first.requests
        if not [m for m in msgs if type(m) is not ClientRequest]:
            return cast("list[ClientRequest]", msgs)
        requests: list[ClientRequest] = []
        for msg in msgs:
            if type(msg) is ClientRequest:
                requests.append(msg)
            elif type(msg) is ClientRequests:
                requests += msg.requests
            else:
                self.stats.unexpected_client_messages += 1
        return requests

    def _on_messages(self, cid: int, msgs: list[Message]) -> None:
        requests = self._requests(msgs)
        if not requests:
            return
        self.stats.client_requests += len(requests)
        feed_from = self.feed_from
        if feed_from is not None and (self.disk_full is None or self.disk_full.reason is None):
            feed_from(cid, requests)  # the connection's id travels beside them
            return
        self.submit([r if r.src == cid else msgspec.structs.replace(r, src=cid) for r in requests])
