"""The node runtime: one ``ServiceNode`` driven by asyncio sockets, timers and a WAL.

Theory of operation
-------------------
The protocol lives in a pure ``ServiceNode(Replica, application)``; this module is its
runtime. The order in which a ``Ready`` is carried out (persist, send before and after
the fsync, apply, snapshot, group commit) is ``pyxos.driver.ReadyDriver``, the very
object the simulator drives its nodes with; this module supplies its effects
(``server.effects``: the WAL and its fsync thread, snapshot files, sockets, the timer).
Each *input batch* (every message of one ``data_received``, a timer firing, the
messages a node sent itself) is fed as ``tick(loop.time())`` and one ``step`` per
message; at the end of the event-loop pass (``call_soon``) the driver runs ``ready()``
once for everything the pass brought, so batches grow with load by themselves and a
lone client waits for nothing. The timer follows ``next_deadline()``. A failed fsync is
fatal: the node stops (``NodeFailed``).
Messages to itself come back as one later input batch (never re-entrantly), at once from
an fsync report (``_after_fsync``). A pass's sends leave when its Ready is carried out.

Its other jobs have their own modules: ``status``, ``disk`` (the data directory, building
the node), ``effects``, ``clients``, ``http`` (it sees a ``clients.NodeHandle``),
``peerbook`` (peers, joining), ``routing``, ``process``, ``nodeviews`` (its read-only
properties) (all in ``pyxos.server``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Sequence
from typing import Any, cast

import msgspec

from pyxos.core.messages import ClientRequest, Message
from pyxos.core.ready import Send
from pyxos.driver import ReadyDriver
from pyxos.net.limits import PortLimits
from pyxos.net.link import PeerLinks, PeerServer, new_counters, serve_peers
from pyxos.server.clients import CLIENT_ID_BASE, ClientPort, ReplySink
from pyxos.server.clock import NodeClock
from pyxos.server.config import Config
from pyxos.server.disk import (
    DataDirUnusable,
    NodeStartupError,
    PortUnavailable,
    build_node,
    open_storage,
)
from pyxos.server.effects import DriverStats, ServerEffects
from pyxos.server.http import HttpApi
from pyxos.server.metrics import NodeMetrics
from pyxos.server.nodeviews import NodeViews
from pyxos.server.peerbook import PeerBook
from pyxos.server.routing import Router
from pyxos.server.status import MajorityLostReport, node_status
from pyxos.storage.recovery import RecoveryRecord

__all__ = [
    "CLIENT_ID_BASE",
    "DataDirUnusable",
    "NodeFailed",
    "NodeServer",
    "NodeStartupError",
    "PortUnavailable",
]

logger = logging.getLogger("pyxos.server")


class NodeFailed(Exception):
    """The node stopped because of a fatal error (a failed fsync, an internal error)."""


class NodeServer(NodeViews):
    """One pyxos node: ``await startup()``, ``await serve_forever()``, ``await shutdown()``."""

    def __init__(
        self,
        config: Config,
        *,
        initialize: bool = False,
        rng: random.Random | None = None,
        clock_rate: float = 1.0,
        app: Any = None,  # an Application (statemachine.base) instance
        join: str | None = None,
    ) -> None:
        self.config = config
        self.peerbook = PeerBook(config, join)  # addresses, links, joining (--join)
        self.app = app  # the application to replicate (None: config.app's; pyxos.embedded)
        self.clock = NodeClock(clock_rate, lambda: self._input(()))
        """This node's clock and its timer (``server.clock``)."""
        self.initialize = initialize
        """Allow a data directory without a node marker to be initialized (see
        ``server.disk``): only for a node that is new to the cluster."""
        self.rng = rng if rng is not None else random.Random()
        self.links: PeerLinks | None = None
        self.peer_server: PeerServer | None = None
        self.http: HttpApi | None = None
        """The HTTP API, when ``config.http_port`` is set."""
        self.client_tls: ssl.SSLContext | None = None
        """The client and HTTP ports' TLS context (None: TLS off)."""
        self.stats = DriverStats()
        self.metrics = NodeMetrics(config.node_id, self.status)
        self.effects = ServerEffects(
            config.node_id,
            self.snapshot_dir,
            self.stats,
            self.metrics,
            send=self._route,
            wake=self.clock.wake_at,
            fail=self._fail,
        )
        self.driver = ReadyDriver(self.effects, counters=self.stats)
        """The Ready driver (``pyxos.driver``): the order of persist, send, fsync,
        apply and snapshot, shared with the simulator."""
        self.effects.driver = self.driver
        self.effects.after_fsync = self._after_fsync
        self.clients = ClientPort(
            config, self.stats, self._input, self.effects.disk_full, self._input_from
        )
        """Client connections and in-process clients (``server.clients``)."""
        self.router = Router(config.node_id, self.stats, self.clients, self._input)
        """Where what the node sends goes (``server.routing``)."""
        self._drive_scheduled = False
        """A drive is queued for the end of this event-loop pass."""
        self.net_counters = new_counters()
        """Counters of the peer links and the peer server."""
        self.port_limits = PortLimits(
            max_connections=config.max_connections,
            max_buffered_bytes=config.max_buffered_bytes,
            frame_timeout=config.frame_timeout,
        )
        """What each listening port lets its connections hold (``pyxos.net.limits``)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._closing = False
        self._fatal: BaseException | None = None
        self._majority_lost = MajorityLostReport(config.node_id)
        self.recoveries: list[RecoveryRecord] = []  # forced ones (pyxos recover), oldest first

    # -- lifecycle ------------------------------------------------------------------------

    async def startup(self) -> None:
        """Open the WAL, rebuild the replica, start listening and dialing peers."""
        config = self.config
        loop = asyncio.get_running_loop()
        self._loop = self.router.loop = loop
        self.clock.start(loop)
        self._stopped = asyncio.Event()
        effects = self.effects
        self.initialize = await self.peerbook.join(self.initialize)  # --join: ask first
        try:
            durable, state, snapshot, self.recoveries = await loop.run_in_executor(
                effects.executor,
                lambda: open_storage(
                    config, initialize=self.initialize, snapshot_dir=self.snapshot_dir
                ),
            )
        except BaseException:
            effects.executor.shutdown(wait=False)
            raise
        effects.open(loop, durable)
        self.node = node = build_node(
            config,
            state,
            snapshot,
            rng=self.rng,
            now=self.clock.now(),
            on_batch=self.metrics.batch_commands.observe,
            app=self.app,
            recoveries=self.recoveries,
            founding=self.peerbook.founding,
        )
        # A trace (pyxos serve --trace) records every reply as its own message.
        node.batch_replies = self.effects.tracer is None
        tls = config.tls_contexts()
        peer_tls, dial_tls, self.client_tls = tls if tls is not None else (None, None, None)
        try:
            self.peer_server = await serve_peers(
                config.host,
                config.peer_port,
                config.cluster_id,
                config.node_id,
                self.router.on_peer_messages,
                check_node=self.peerbook.check_peer,
                counters=self.net_counters,
                limits=self.port_limits,
                tls=peer_tls,
            )
            await self.clients.listen(self.port_limits, self.client_tls)
        except OSError as e:
            await self.shutdown()
            raise PortUnavailable(f"node {config.node_id}: cannot listen: {e}") from e
        if config.http_port is not None:
            self.http = HttpApi(self)
            try:
                await self.http.start(config.host, config.http_port)
            except OSError as e:
                await self.shutdown()
                raise PortUnavailable(f"node {config.node_id}: cannot listen: {e}") from e
        self.links = PeerLinks(
            config.node_id,
            config.cluster_id,
            self.peerbook.dial(),
            on_messages=self.router.on_peer_messages,
            rng=random.Random(self.rng.getrandbits(64)),
            counters=self.net_counters,
            on_link=self._on_link,
            tls=dial_tls,
        )
        self.router.links = self.links
        # No link is up yet: nothing is forwarded to a peer before its link is.
        for peer in self.links.peers:
            node.link_changed(peer, False)
        self.links.start()
        self.peerbook.attach(node, self.links)
        self._input(())
        logger.info(
            "node %d of cluster %r: peers on %s:%d, clients on port %d",
            config.node_id,
            config.cluster_id,
            config.host,
            self.peer_port,
            self.client_port,
        )

    async def serve_forever(self) -> None:
        """Run until ``shutdown`` (or a fatal error, raised as ``NodeFailed``)."""
        assert self._stopped is not None, "call startup() first"
        await self._stopped.wait()
        if self._fatal is not None:
            raise NodeFailed(f"node {self.config.node_id} stopped: {self._fatal}") from self._fatal

    async def shutdown(self) -> None:
        """Stop listening, close every connection, finish the fsync, close the WAL."""
        if self._closing:
            if self._stopped is not None:
                await self._stopped.wait()
            return
        self._closing = True
        self.driver.close()
        self.clock.cancel()
        if self.http is not None:
            with contextlib.suppress(Exception):
                await self.http.stop()
        client_server = self.clients.server
        if client_server is not None:
            client_server.close()
        self.clients.abort_all()
        if self.peer_server is not None:
            self.peer_server.close()
        if self.links is not None:
            await self.links.close(drain_timeout=0.2)
        if self.peer_server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.peer_server.wait_closed(), 1.0)
        if client_server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client_server.wait_closed(), 1.0)
        await self.effects.close()
        if self._stopped is not None:
            self._stopped.set()
        logger.info("node %d stopped", self.config.node_id)

    # -- status ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """A JSON-ready summary of this node (role, leader, slots, counters)."""
        http = self.http
        return self.effects.disk_full.status() | node_status(
            self.config,
            self.node,
            self.driver,
            self.stats,
            links=self.links,
            client_connections=len(self.clients.connections),
            recoveries=self.recoveries,
            counters={
                "net": self.net_counters,
                "client_net": self.clients.counters,
                "http_net": http.counters if http is not None else {},
            },
            guards={
                "client": self.clients.server.guard if self.clients.server is not None else None,
                "peer": self.peer_server.guard if self.peer_server is not None else None,
                "http": http.guard if http is not None else None,
            },
        )

    # -- in-process clients (the HTTP API: ``server.clients.NodeHandle``) ----------------

    def attach_sink(self, sink: ReplySink) -> int:
        """Register an in-process client; return the ``src`` id its requests must carry."""
        return self.clients.attach_sink(sink)

    def detach_sink(self, cid: int) -> None:
        """Forget an in-process client registered with ``attach_sink``."""
        self.clients.detach_sink(cid)

    def submit(self, requests: list[ClientRequest]) -> None:
        """Feed in-process clients' requests (``src``: the sink id); [] drives a pass."""
        if not self._closing:
            self.clients.submit(requests)

    # -- feeding the node -----------------------------------------------------------------

    def _input(self, msgs: Sequence[Message], src: int | None = None) -> None:
        """Feed one input batch: tick, step every message; drive once at the end of this
        loop pass, so all its inputs share one Ready (one batch, WAL write, Accept).
        ``src``: ``msgs`` are the requests of that client connection, stepped in one
        call (``ServiceNode.step_requests``), not one message at a time."""
        node, loop = self.node, self._loop
        if node is None or loop is None or self._closing or self._fatal is not None:
            return
        if self.effects.disk_full.paused(msgs):  # a full disk (server.diskfull)
            return
        self.stats.inputs += 1
        if (tracer := self.effects.tracer) is not None:  # pyxos serve --trace
            if src is not None:  # it records each message with its src
                requests = cast(list[ClientRequest], msgs)
                msgs, src = [msgspec.structs.replace(r, src=src) for r in requests], None
            tracer.received(msgs := list(msgs))
        try:
            node.tick(self.clock.now())
            if src is not None:
                node.step_requests(src, cast(list[ClientRequest], msgs))
            else:
                for msg in msgs:
                    node.step(msg)
        except Exception as e:
            self._internal_error(e)
            return
        if not self._drive_scheduled:
            self._drive_scheduled = True
            loop.call_soon(self._drive_pass)

    def _input_from(self, src: int, requests: list[ClientRequest]) -> None:
        """``_input`` for the requests of one client connection ``src``."""
        self._input(requests, src)

    def _after_fsync(self) -> None:
        """A thread's fsync was reported: step what it released to this node now."""
        self.router.deliver_local()
        if self._drive_scheduled:
            self._drive_pass()

    def _drive_pass(self) -> None:
        if not self._drive_scheduled:
            return  # carried out already (``_after_fsync``)
        self._drive_scheduled = False
        if self.node is None or self._closing or self._fatal is not None:
            return
        try:
            self.driver.drive()
        except Exception as e:
            self._internal_error(e)
            return
        self.effects.pass_done()  # what it sent leaves now, not a pass later
        if self.effects.tracer is not None:
            self.effects.tracer.driven(self.node)
        self._majority_lost.observe(self.node)
        self.peerbook.observe(self.node)

    def _internal_error(self, e: Exception) -> None:
        # A bug in the core or the driver: stop (fail-stop) rather than run on from a
        # half-carried-out Ready. The WAL holds only what was written in order.
        logger.exception("node %d: internal error, stopping", self.config.node_id)
        self._fail(e)

    def _route(self, send: Send) -> None:
        self.router.send(send)

    def _fail(self, error: BaseException) -> None:
        if self._fatal is not None:
            return
        self._fatal = error
        logger.critical("node %d: fatal error, stopping: %s", self.config.node_id, error)
        if self._loop is not None:
            self._loop.create_task(self.shutdown())

    # -- network callbacks ----------------------------------------------------------------

    def _on_link(self, peer: int, up: bool) -> None:
        """Our link to ``peer`` came up or went down: tell the node, and drive it so that
        the requests it fails back (forwarded to a peer now gone) leave this pass."""
        node = self.node
        if node is None or self._closing or self._fatal is not None:
            return
        try:
            node.link_changed(peer, up)
        except Exception as e:
            self._internal_error(e)
            return
        self._input(())
