"""The node runtime: one ``ServiceNode`` driven by asyncio sockets, timers and a WAL.

Theory of operation
-------------------
The protocol lives in a pure ``ServiceNode(Replica, KVStore)``; this module is only its
runtime. The order in which a ``Ready`` is carried out (persist, send before and after
the fsync, apply, snapshot, group commit with one fsync in flight) is
``pyxos.driver.ReadyDriver``, the very object the simulator drives its nodes with, so
every simulator result speaks for this process too; this module supplies its effects
(``_ServerEffects``: the WAL and its fsync in a worker thread, snapshot files in a
thread of their own, sockets, the loop's timer). Each *input batch* (every message of
one ``data_received``, a timer firing, the messages a node sent itself) is fed as
``tick(loop.time())`` followed by one ``step`` per message; at the end of the event-loop
pass (``call_soon``) the driver runs ``ready()`` once for everything the pass brought,
so batches grow with load by themselves and a lone client waits for nothing. The timer
is re-armed on ``next_deadline()`` with ``loop.call_at`` (only ever moved earlier; a
timer that fires early just ticks). A failed fsync is fatal (the WAL refuses every
later call): the node stops, and ``serve_forever`` raises ``NodeFailed``.

Messages addressed to the node itself (a leader's own ``Accepted`` after its fsync,
for instance) are not stepped re-entrantly: they are queued and delivered as one input
batch with ``call_soon``, as the simulator delivers them as a separate event.

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

Durable state: ``startup`` opens the WAL in the data directory and rebuilds the
replica's promise and accepted entries from it. The directory's node marker
(``pyxos.id``) guards against voting from the wrong or a wiped disk: a marker of
another node or cluster refuses to start; no marker means a wiped disk unless the
node is explicitly initialized (``initialize=True``, ``--init``) on an empty directory:
then the log starts with ``BOOTSTRAPPING`` and the replica starts ``bootstrapping``:
it votes only once every peer has answered that it never held state (a new cluster),
and otherwise rebuilds, because a wiped member restarted with its first command line
looks the same on disk (see ``core/replica.py``). No marker without
``--init``, a marker with a corrupt WAL (``AcceptorStateLost``) or a marker with no WAL
at all means promises may be lost: the old segments go to quarantine,
a fresh log records ``NEEDS_REBUILD``, and the replica starts ``rebuilding`` (it
learns from every peer and does not vote until its ``REBUILT`` record is durable;
this survives restarts). A corrupt log raises
``AcceptorStateLost`` and the node does not start (it must not vote with a state that
may have forgotten promises). The applied state is not in the WAL: a restarted node
starts from its newest valid snapshot, if any, and re-learns every later chosen slot
from its peers (the leader's commits and ``Fetch``). All of this decision is
``storage.durable.open_node_storage``, the very code the simulator runs over its
simulated file system.

A lost majority: when the replica reports ``majority_lost`` (the nodes without state
contain a quorum), the driver logs it once per occurrence, and ``status`` (hence
``/v1/status``, the ``pyxos_majority_lost`` metric and ``pyxos status``) says so with
the recovery pointer ``MAJORITY_LOST_RECOVERY``.

Snapshots: the driver hands them over after ``advance()``; they are written in a
thread of their own (``storage.snapshot.write_snapshot``: temporary file, fsync, rename,
directory fsync), the newest two kept; compaction and the WAL checkpoint and
truncation that follow are the driver's (``pyxos.driver``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import ssl
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from pyxos.core.messages import ClientReply, ClientRequest, Entry, Message
from pyxos.core.quorum import Majority
from pyxos.core.ready import Persist, Send
from pyxos.core.replica import Replica, ReplicaConfig
from pyxos.driver import DriverCounters, ReadyDriver
from pyxos.net.codec import PROTOCOL_VERSION, Hello, check_hello, encode_message
from pyxos.net.limits import PortGuard, PortLimits
from pyxos.net.link import (
    FramedProtocol,
    FramedServer,
    PeerLinks,
    PeerServer,
    new_counters,
    serve_framed,
    serve_peers,
)
from pyxos.server.auth import READ_OPS
from pyxos.server.config import Config
from pyxos.server.metrics import NodeMetrics
from pyxos.statemachine.kv import Command, KVStore, Result, encode_result
from pyxos.statemachine.service import ServiceNode
from pyxos.storage.durable import DurableAcceptor, Recovered, open_node_storage
from pyxos.storage.snapshot import Snapshot as StoredSnapshot
from pyxos.storage.snapshot import prune_snapshots, write_snapshot
from pyxos.storage.wal import MarkerError

if TYPE_CHECKING:
    from pyxos.server.http import HttpApi

__all__ = [
    "CLIENT_ID_BASE",
    "MAJORITY_LOST",
    "MAJORITY_LOST_RECOVERY",
    "DataDirUnusable",
    "DriverStats",
    "NodeFailed",
    "NodeServer",
    "NodeStartupError",
    "PortUnavailable",
    "check_data_dir",
    "ensure_file_limit",
    "run",
]

logger = logging.getLogger("pyxos.server")

CLIENT_ID_BASE = 1_000_000
"""Client connections get ids from here on, so they never collide with node ids."""

MAJORITY_LOST = "a majority lost its state: this cluster cannot recover on its own"
"""What status, metrics and the log say when the nodes without state contain a quorum."""

MAJORITY_LOST_RECOVERY = (
    "no node votes again by itself: whatever only the lost nodes held may be gone. "
    "Bring back a node whose data directory survived (it may just be down), or restore "
    "the lost data directories from a backup; see docs/operations.md, 'Losing a "
    "majority' (a forced new cluster from the survivors, pyxos recover "
    "--force-new-cluster, is planned: issue 11)"
)
"""The recovery path an operator is pointed to when a majority lost its state."""

ReplySink = Callable[[ClientReply], None]
"""Where an in-process client (the HTTP API) receives its replies."""


class NodeStartupError(Exception):
    """The node cannot start with this configuration and data directory."""


class PortUnavailable(NodeStartupError):
    """A configured port cannot be bound (in use, or not allowed): a configuration
    problem, reported like one (exit code 2)."""


class DataDirUnusable(NodeStartupError):
    """The data directory cannot be used: a file is in the way, or it cannot be created
    or written (a read-only file system, no permission, a full disk). A configuration
    problem, reported like one (exit code 2)."""


class NodeFailed(Exception):
    """The node stopped because of a fatal error (a failed fsync, an internal error)."""


@dataclass(slots=True)
class DriverStats(DriverCounters):
    """What the driver did (monotonic counters, for status and tests): the Ready
    driver's own (``readies``, ``fsyncs``, ``snapshots``) and the runtime's."""

    inputs: int = 0
    """Input batches fed (received chunks, timer ticks, self-deliveries)."""
    wal_segments_deleted: int = 0
    """WAL segments deleted by compaction."""
    client_connections: int = 0
    """Client connections accepted (handshake passed)."""
    client_requests: int = 0
    """Client requests received on the binary port."""
    unexpected_client_messages: int = 0
    """Frames on the client port that were not ``ClientRequest`` (ignored)."""
    oversized_dropped: int = 0
    """Outgoing messages over the frame limit, dropped instead of sent."""
    dropped_peer_messages: int = 0
    """Peer messages naming another sender than the peer (ignored)."""


class NodeServer:
    """One pyxos node: ``await startup()``, ``await serve_forever()``, ``await shutdown()``."""

    def __init__(
        self,
        config: Config,
        *,
        initialize: bool = False,
        rng: random.Random | None = None,
        clock_rate: float = 1.0,
    ) -> None:
        self.config = config
        if not 0.5 <= clock_rate <= 2.0:
            raise ValueError(f"clock_rate must lie in [0.5, 2], not {clock_rate}")
        self.clock_rate = clock_rate
        """How fast this node's clock runs against real time (1.0; other values only
        for chaos tests of clock-rate drift, ``--chaos-clock``)."""
        self._clock_origin = 0.0
        self.initialize = initialize
        """Allow a data directory without a node marker to be initialized (see
        ``_open_storage``): only for a node that is new to the cluster."""
        self.rng = rng if rng is not None else random.Random()
        self._node: ServiceNode | None = None
        self.durable: DurableAcceptor | None = None
        self.links: PeerLinks | None = None
        self.peer_server: PeerServer | None = None
        self.client_server: FramedServer | None = None
        self.http: HttpApi | None = None
        """The HTTP API, when ``config.http_port`` is set."""
        self.client_tls: ssl.SSLContext | None = None
        """The client and HTTP ports' TLS context (None: TLS off)."""
        self.stats = DriverStats()
        self.driver = ReadyDriver(_ServerEffects(self), counters=self.stats)
        """The Ready driver (``pyxos.driver``): the order of persist, send, fsync,
        apply and snapshot, shared with the simulator."""
        self._drive_scheduled = False
        """A ``_drive`` is queued for the end of this event-loop pass."""
        self.metrics = NodeMetrics(config.node_id, self.status)
        self.net_counters = new_counters()
        """Counters of the peer links and the peer server."""
        self.client_counters = new_counters()
        """Counters of the client connections."""
        self.port_limits = PortLimits(
            max_connections=config.max_connections,
            max_buffered_bytes=config.max_buffered_bytes,
            frame_timeout=config.frame_timeout,
        )
        """What each listening port lets its connections hold (``pyxos.net.limits``)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._fsync_future: asyncio.Future[int] | None = None
        """The fsync running in the worker thread (at most one: group commit)."""
        self._local: list[Message] = []
        self._local_scheduled = False
        self._snapshot_executor = ThreadPoolExecutor(
            1, thread_name_prefix=f"pyxos-snapshot-{config.node_id}"
        )
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._clients: dict[int, FramedProtocol] = {}
        # The role of each authenticated client connection (tokens configured);
        # a connection absent from it presented no valid token.
        self._client_roles: dict[int, str] = {}
        self._sinks: dict[int, ReplySink] = {}
        self._next_client = CLIENT_ID_BASE
        self._stopped: asyncio.Event | None = None
        self._closing = False
        self._fatal: BaseException | None = None
        self._majority_lost_reported = False
        """The log said that a majority lost its state (said once per occurrence)."""

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def node(self) -> ServiceNode | None:
        """The pure node being driven (set by ``startup``)."""
        return self._node

    @node.setter
    def node(self, node: ServiceNode | None) -> None:
        self._node = node
        self.driver.node = node

    @property
    def client_port(self) -> int:
        """The bound client port (after ``startup``; useful with port 0)."""
        assert self.client_server is not None, "not started"
        return self.client_server.port

    @property
    def peer_port(self) -> int:
        """The bound peer port (after ``startup``)."""
        assert self.peer_server is not None, "not started"
        return self.peer_server.port

    @property
    def snapshot_dir(self) -> Path:
        """Where this node's snapshot files live (beside the WAL)."""
        return self.config.data_dir / "snapshots"

    @property
    def http_port(self) -> int | None:
        """The bound HTTP port (None when the HTTP API is off)."""
        return None if self.http is None else self.http.port

    async def startup(self) -> None:
        """Open the WAL, rebuild the replica, start listening and dialing peers."""
        config = self.config
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._clock_origin = loop.time()
        self._stopped = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"pyxos-fsync-{config.node_id}")
        try:
            self.durable, state, snapshot = await loop.run_in_executor(
                self._executor, self._open_storage
            )
        except BaseException:
            self._executor.shutdown(wait=False)
            raise
        replica = Replica(
            config.node_id,
            Majority(config.peers),
            self.rng,
            config=ReplicaConfig(
                election_timeout=config.election_timeout,
                heartbeat_interval=config.heartbeat_interval,
                window=config.window,
            ),
            promised=state.promised,
            accepted=state.accepted.values(),
            now=self._now(),
            rebuilding=state.needs_rebuild,
            rebuilt_from=max(state.rebuilt, 0),
            bootstrapping=state.bootstrapping,
            fences=state.fences,
        )
        self.node = ServiceNode(
            replica,
            KVStore(),
            snapshot_every=config.snapshot_every,
            snapshot_bytes=config.snapshot_bytes,
            forward=config.forward_requests,
            on_batch=self.metrics.batch_commands.observe,
        )
        if snapshot is not None:
            self.node.restore_snapshot(snapshot.slot, snapshot.data)
            logger.info("node %d: restored the snapshot of slot %d", config.node_id, snapshot.slot)
        logger.info(
            "node %d: recovered promise %s, %d accepted entries, chosen watermark %d%s",
            config.node_id,
            state.promised,
            len(state.accepted),
            state.chosen,
            " (rebuilding: not voting)"
            if state.needs_rebuild
            else " (bootstrapping: not voting until every peer has answered whether the "
            "cluster is new)"
            if state.bootstrapping
            else "",
        )
        tls = config.tls_contexts()
        peer_tls, dial_tls, self.client_tls = tls if tls is not None else (None, None, None)
        try:
            self.peer_server = await serve_peers(
                config.host,
                config.peer_port,
                config.cluster_id,
                config.node_id,
                self._on_peer_messages,
                known_nodes=tuple(config.peers),
                counters=self.net_counters,
                limits=self.port_limits,
                tls=peer_tls,
            )
            self.client_server = await serve_framed(
                config.host,
                config.client_port,
                self._client_protocol,
                limits=self.port_limits,
                counters=self.client_counters,
                name=f"node {config.node_id} client port",
                tls=self.client_tls,
            )
        except OSError as e:
            await self.shutdown()
            raise PortUnavailable(f"node {config.node_id}: cannot listen: {e}") from e
        if config.http_port is not None:
            from pyxos.server.http import HttpApi

            self.http = HttpApi(self)
            try:
                await self.http.start(config.host, config.http_port)
            except OSError as e:
                await self.shutdown()
                raise PortUnavailable(f"node {config.node_id}: cannot listen: {e}") from e
        self.links = PeerLinks(
            config.node_id,
            config.cluster_id,
            config.peers,
            on_messages=self._on_peer_messages,
            rng=random.Random(self.rng.getrandbits(64)),
            counters=self.net_counters,
            on_link=self._on_link,
            tls=dial_tls,
        )
        # No link is up yet: nothing is forwarded to a peer before its link is.
        for peer in self.links.peers:
            self.node.link_changed(peer, False)
        self.links.start()
        self._input(())
        logger.info(
            "node %d of cluster %r: peers on %s:%d, clients on port %d",
            config.node_id,
            config.cluster_id,
            config.host,
            self.peer_port,
            self.client_port,
        )

    def _open_storage(self) -> tuple[DurableAcceptor, Recovered, StoredSnapshot | None]:
        try:
            check_data_dir(self.config.data_dir)
        except DataDirUnusable as e:
            raise DataDirUnusable(f"node {self.config.node_id}: {e}") from None
        try:
            return self._open_durable_state()
        except OSError as e:
            # Whatever else the file system refuses (an I/O error, a file of the log
            # that cannot be read): one line, not a traceback.
            raise NodeStartupError(
                f"cannot open the data directory {self.config.data_dir}: {e}"
            ) from e

    def _open_durable_state(self) -> tuple[DurableAcceptor, Recovered, StoredSnapshot | None]:
        config = self.config
        try:
            opened = open_node_storage(
                config.data_dir,
                config.cluster_id,
                config.node_id,
                initialize=self.initialize,
                snapshot_dir=self.snapshot_dir,
                segment_bytes=config.wal_segment_bytes,
            )
        except MarkerError as e:  # a damaged marker, or another node's directory
            raise NodeStartupError(str(e)) from e
        return opened.durable, opened.state, opened.snapshot

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
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.http is not None:
            with contextlib.suppress(Exception):
                await self.http.stop()
        if self.client_server is not None:
            self.client_server.close()
        for conn in list(self._clients.values()):
            conn.abort()
        if self.peer_server is not None:
            self.peer_server.close()
        if self.links is not None:
            await self.links.close(drain_timeout=0.2)
        if self.peer_server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.peer_server.wait_closed(), 1.0)
        if self.client_server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client_server.wait_closed(), 1.0)
        if self._fsync_future is not None:
            with contextlib.suppress(Exception):
                await self._fsync_future
        if self._executor is not None:
            self._executor.shutdown(wait=True)  # a queued truncation finishes first
        if self.durable is not None:
            self.durable.close()
        self._snapshot_executor.shutdown(wait=True)
        if self._stopped is not None:
            self._stopped.set()
        logger.info("node %d stopped", self.config.node_id)

    # -- status ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """A JSON-ready summary of this node (role, leader, slots, counters)."""
        node = self.node
        if node is None:
            return {"node_id": self.config.node_id, "state": "starting"}
        replica = node.replica
        extra: dict[str, Any] = {}
        if replica.majority_lost:
            state = "majority_lost"
            extra = {"message": MAJORITY_LOST, "recovery": MAJORITY_LOST_RECOVERY}
        elif replica.bootstrapping:
            state = "bootstrapping"
        elif replica.rebuilding:
            state = "rebuilding"
        else:
            state = "voting"
        if replica.rebuilding:
            extra["waiting_for_peers"] = sorted(replica.peers_unanswered())
            extra["peers_without_state"] = sorted(replica.peers_without_state())
        return {
            "node_id": self.config.node_id,
            "cluster_id": self.config.cluster_id,
            "state": state,
            **extra,
            "role": replica.role.value,
            "rebuilding": replica.rebuilding,
            "bootstrapping": replica.bootstrapping,
            "majority_lost": replica.majority_lost,
            "elections": replica.elections,
            "leader_changes": replica.leader_changes,
            "queues": {
                "replies_waiting_for_fsync": self.driver.waiting_sends(),
                "slots_in_flight": len(replica.in_flight),
                "proposals_queued": len(replica.queued),
                "reads_pending": len(replica.pending_reads),
                "peer_frames": self.links.queued_frames() if self.links is not None else 0,
            },
            "leader": replica.leader,
            "ballot": str(replica.ballot),
            "promised": str(replica.acceptor.promised),
            "first_unchosen": replica.first_unchosen,
            "applied": node.store.applied_slot,
            "keys": len(node.store),
            "written": self.driver.written,
            "synced": self.driver.synced,
            "driver": asdict(self.stats),
            "client_connections": len(self._clients),
            "net": dict(self.net_counters),
            "client_net": dict(self.client_counters),
            "http_net": dict(self.http.counters) if self.http is not None else {},
            "ports": self._ports_status(),
        }

    def _ports_status(self) -> dict[str, dict[str, int]]:
        guards = {
            "client": self.client_server.guard if self.client_server is not None else None,
            "peer": self.peer_server.guard if self.peer_server is not None else None,
            "http": self.http.guard if self.http is not None else None,
        }
        return {
            port: {
                "connections": len(guard.connections),
                "buffered_bytes": guard.buffered,
                "peak_buffered_bytes": guard.peak_buffered,
            }
            for port, guard in guards.items()
            if guard is not None
        }

    @property
    def running(self) -> bool:
        """True from a successful ``startup`` until ``shutdown`` (or a fatal error)."""
        return self.node is not None and not self._closing

    @property
    def is_leader(self) -> bool:
        """Whether this node leads right now."""
        return self.node is not None and self.node.replica.is_leader

    @property
    def leader(self) -> int:
        """The leader this node believes in (0: unknown)."""
        return 0 if self.node is None else self.node.replica.leader

    # -- in-process clients (the HTTP API) ------------------------------------------------

    def attach_sink(self, sink: ReplySink) -> int:
        """Register an in-process client; return the ``src`` id its requests must carry."""
        cid = self._new_client_id()
        self._sinks[cid] = sink
        return cid

    def detach_sink(self, cid: int) -> None:
        """Forget an in-process client registered with ``attach_sink``."""
        self._sinks.pop(cid, None)

    def submit(self, requests: list[ClientRequest]) -> None:
        """Feed requests of in-process clients (their ``src`` is their sink id)."""
        if requests and not self._closing:
            self._input(requests)

    def _new_client_id(self) -> int:
        cid = self._next_client
        self._next_client += 1
        return cid

    # -- the driver -----------------------------------------------------------------------

    def _input(self, msgs: Iterable[Message]) -> None:
        """Feed one input batch: tick and step every message now; drive once at the
        end of this event-loop pass, so every input of the pass (every connection's
        chunk, every timer) shares one Ready: one batch, one WAL write, one Accept."""
        node = self.node
        loop = self._loop
        if node is None or loop is None or self._closing or self._fatal is not None:
            return
        self.stats.inputs += 1
        try:
            node.tick(self._now())
            for msg in msgs:
                node.step(msg)
        except Exception as e:
            self._internal_error(e)
            return
        if not self._drive_scheduled:
            self._drive_scheduled = True
            loop.call_soon(self._drive_pass)

    def _drive_pass(self) -> None:
        self._drive_scheduled = False
        if self.node is None or self._closing or self._fatal is not None:
            return
        try:
            self.driver.drive()
        except Exception as e:
            self._internal_error(e)
            return
        lost = bool(getattr(getattr(self.node, "replica", None), "majority_lost", False))
        if lost != self._majority_lost_reported:  # (scripted test nodes have no replica)
            self._report_majority_lost(lost)

    def _internal_error(self, e: Exception) -> None:
        # A bug in the core or the driver: stop (fail-stop) rather than run on from a
        # half-carried-out Ready. The WAL holds only what was written in order.
        logger.exception("node %d: internal error, stopping", self.config.node_id)
        self._fail(e)

    def _now(self) -> float:
        """This node's clock: the loop's monotonic clock, at ``clock_rate``."""
        assert self._loop is not None
        real = self._loop.time()
        if self.clock_rate == 1.0:
            return real
        return self._clock_origin + (real - self._clock_origin) * self.clock_rate

    def _loop_time(self, node_time: float) -> float:
        """The loop time at which this node's clock shows ``node_time``."""
        if self.clock_rate == 1.0:
            return node_time
        return self._clock_origin + (node_time - self._clock_origin) / self.clock_rate

    def _report_majority_lost(self, lost: bool) -> None:
        self._majority_lost_reported = lost
        if lost:
            assert self.node is not None
            replica = self.node.replica
            rebuilding = sorted({replica.node_id} | replica.peers_without_state())
            logger.error(
                "node %d: %s (nodes rebuilding: %s, no quorum kept its state). %s",
                self.config.node_id,
                MAJORITY_LOST,
                ", ".join(map(str, rebuilding)),
                MAJORITY_LOST_RECOVERY,
            )
        else:
            logger.warning(
                "node %d: a peer answers with its state again: the rebuild goes on",
                self.config.node_id,
            )

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._input(())

    def _send(self, send: Send) -> None:
        """Deliver one ``Send``: to ourselves (next pass), a client, or a peer link."""
        me = self.config.node_id
        msg = send.msg
        frame: bytes | None = None  # encoded once, for every destination
        for dst in send.to:
            if dst == me:
                self._local.append(msg)
                if not self._local_scheduled and self._loop is not None:
                    self._local_scheduled = True
                    self._loop.call_soon(self._deliver_local)
            elif dst >= CLIENT_ID_BASE:
                sink = self._sinks.get(dst)
                if sink is not None:
                    if isinstance(msg, ClientReply):
                        sink(msg)
                    continue
                conn = self._clients.get(dst)
                if conn is not None:  # else the client is gone; it will retry
                    frame = frame if frame is not None else self._encode(msg)
                    if frame:
                        conn.send(frame)
            elif self.links is not None:
                frame = frame if frame is not None else self._encode(msg)
                if frame:
                    with contextlib.suppress(KeyError):  # not a member: dropped
                        self.links.send(dst, frame)

    def _encode(self, msg: Message) -> bytes:
        """The frame of ``msg``; empty (dropped, counted, logged) if it is over the limit.

        The protocol tolerates a lost message; an exception here would abandon the
        Ready half done.
        """
        try:
            return encode_message(msg)
        except ValueError as e:
            self.stats.oversized_dropped += 1
            logger.error("node %d: dropped a message: %s", self.config.node_id, e)
            return b""

    def _deliver_local(self) -> None:
        self._local_scheduled = False
        msgs, self._local = self._local, []
        if msgs:
            self._input(msgs)

    def _fail(self, error: BaseException) -> None:
        if self._fatal is not None:
            return
        self._fatal = error
        logger.critical("node %d: fatal error, stopping: %s", self.config.node_id, error)
        if self._loop is not None:
            self._loop.create_task(self.shutdown())

    # -- network callbacks ----------------------------------------------------------------

    def _on_peer_messages(self, peer: int, msgs: list[Message]) -> None:
        # A peer speaks only for itself: a message naming another sender is dropped and
        # counted, never stepped. (Client requests and replies do come from peers: a
        # follower forwards its clients' requests to the leader and relays the reply.)
        if all(m.src == peer for m in msgs):
            self._input(msgs)
            return
        good = [m for m in msgs if m.src == peer]
        self.stats.dropped_peer_messages += len(msgs) - len(good)
        if good:
            self._input(good)

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

    def _client_protocol(self, guard: PortGuard) -> FramedProtocol:
        holder: list[FramedProtocol] = []
        cluster = self.config.cluster_id
        tokens = self.config.tokens

        def accept_hello(hello: Hello) -> int:
            check_hello(hello, cluster, PROTOCOL_VERSION, expected_role="client")
            cid = self._new_client_id()
            self._clients[cid] = holder[0]
            self.stats.client_connections += 1
            if tokens is not None:
                role = tokens.role(hello.token)
                if role is None:
                    self.client_counters["auth_refused"] = (
                        self.client_counters.get("auth_refused", 0) + 1
                    )
                    logger.warning(
                        "node %d: %s %s a token: its requests are refused",
                        self.config.node_id,
                        holder[0].label,
                        "presented an unknown" if hello.token else "did not present",
                    )
                else:
                    self._client_roles[cid] = role
            return cid

        conn = FramedProtocol(
            self._on_client_messages if tokens is None else self._on_client_messages_auth,
            counters=self.client_counters,
            accept_hello=accept_hello,
            handshake_timeout=min(5.0, self.config.frame_timeout),
            max_frame_bytes=self.config.client_max_frame_bytes,
            on_lost=self._on_client_lost,
            guard=guard,
        )
        holder.append(conn)
        return conn

    def _on_client_messages_auth(self, cid: int, msgs: list[Message]) -> None:
        """``_on_client_messages`` behind the token check (``pyxos.server.auth``): a
        connection without a valid token gets every request refused, one with a read
        token its writes; a refused request never reaches the log."""
        role = self._client_roles.get(cid)
        if role == "write":
            self._on_client_messages(cid, msgs)
            return
        allowed: list[Message] = []
        conn = self._clients.get(cid)
        for msg in msgs:
            if not isinstance(msg, ClientRequest):
                allowed.append(msg)
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
                error = f"forbidden: a read-only token may not {op}"
                counter = "auth_forbidden"
            self.client_counters[counter] = self.client_counters.get(counter, 0) + 1
            if conn is not None:
                result = encode_result(Result(ok=False, error=error))
                reply = ClientReply(self.config.node_id, msg.client, msg.seq, True, result, 0)
                conn.send(encode_message(reply))
        if allowed:
            self._on_client_messages(cid, allowed)

    def _on_client_lost(self, conn: FramedProtocol, exc: Exception | None) -> None:
        if self._clients.get(conn.peer_id) is conn:
            del self._clients[conn.peer_id]
            self._client_roles.pop(conn.peer_id, None)

    def _on_client_messages(self, cid: int, msgs: list[Message]) -> None:
        requests: list[ClientRequest] = []
        for msg in msgs:
            if isinstance(msg, ClientRequest):
                requests.append(msg if msg.src == cid else msgspec.structs.replace(msg, src=cid))
            else:
                self.stats.unexpected_client_messages += 1
        if requests:
            self.stats.client_requests += len(requests)
            self._input(requests)


class _ServerEffects:
    """The server's side of the Ready driver (``pyxos.driver.Effects``): the WAL and its
    fsync in a worker thread, snapshots in a thread of their own, sockets, the loop's
    timer. Completions come back to the driver on the event loop."""

    def __init__(self, server: NodeServer) -> None:
        self.server = server

    def write(self, persist: Persist) -> None:
        """Append to the WAL (buffered)."""
        durable = self.server.durable
        assert durable is not None
        durable.write(persist)

    def start_fsync(self) -> None:
        """One fsync in the fsync thread; its end goes back to the driver."""
        server = self.server
        assert server._loop is not None and server.durable is not None
        future = server._loop.run_in_executor(server._executor, self._timed_sync)
        server._fsync_future = future
        future.add_done_callback(self._on_synced)

    def _timed_sync(self) -> int:
        durable = self.server.durable
        assert durable is not None
        start = time.perf_counter()
        index = durable.sync()
        self.server.metrics.fsync_seconds.observe(time.perf_counter() - start)
        return index

    def _on_synced(self, future: asyncio.Future[int]) -> None:
        server = self.server
        server._fsync_future = None
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            server.driver.fsync_failed(error)
        else:
            server.driver.fsync_done()

    def send(self, send: Send) -> None:
        """To a peer, a client, or back to this node (next pass)."""
        self.server._send(send)

    def committed(self, entries: list[Entry]) -> None:
        """Nothing to do: the service node applied them and queued the replies."""

    def save_snapshot(self, slot: int, data: bytes) -> None:
        """Write the snapshot (temporary file, fsync, rename, directory fsync) in the
        snapshot thread, keep the newest two."""
        server = self.server
        loop = server._loop
        assert loop is not None
        directory = server.snapshot_dir

        def write() -> None:
            write_snapshot(directory, slot, b"", data)
            prune_snapshots(directory, keep=2)

        future = loop.run_in_executor(server._snapshot_executor, write)
        future.add_done_callback(lambda f: self._on_snapshot_saved(slot, f))

    def _on_snapshot_saved(self, slot: int, future: asyncio.Future[None]) -> None:
        server = self.server
        if future.cancelled() or server._closing:
            server.driver.snapshot_failed(slot)
            return
        error = future.exception()
        if error is not None:
            logger.error(
                "node %d: snapshot of slot %d not written: %s", server.config.node_id, slot, error
            )
            server.driver.snapshot_failed(slot)
        else:
            server.driver.snapshot_saved(slot)

    def checkpoint(self) -> int | None:
        """After compaction, when the WAL has a sealed segment to delete: rewrite the
        acceptor state (buffered, like any write)."""
        node, durable = self.server.node, self.server.durable
        if node is None or durable is None or durable.segments < 2:
            return None
        acceptor = node.replica.acceptor
        return durable.checkpoint(
            acceptor.promised, acceptor.accepted.values(), node.replica.first_unchosen
        )

    def truncate(self, index: int) -> None:
        """Delete the WAL segments before ``index`` in the fsync thread (the WAL
        serializes truncation with sync anyway)."""
        server = self.server
        durable = server.durable
        if durable is None or server._loop is None or server._closing:
            return

        def done(future: asyncio.Future[int]) -> None:
            if future.cancelled():
                return
            error = future.exception()
            if error is not None:
                server._fail(error)
            else:
                server.stats.wal_segments_deleted += future.result()

        future = server._loop.run_in_executor(server._executor, durable.truncate_before, index)
        future.add_done_callback(done)

    def wake_at(self, deadline: float | None) -> None:
        """Re-arm the loop's timer, only ever earlier (a timer that fires early just
        ticks)."""
        server = self.server
        loop = server._loop
        assert loop is not None
        if deadline is not None and (server._timer_at is None or deadline < server._timer_at):
            if server._timer is not None:
                server._timer.cancel()
            server._timer_at = deadline
            server._timer = loop.call_at(server._loop_time(deadline), server._on_timer)

    def fail(self, error: BaseException) -> None:
        """A storage error: the node stops."""
        self.server._fail(error)


def check_data_dir(path: Path) -> None:
    """Raise ``DataDirUnusable`` unless ``path`` is, or can be made, a writable directory.

    Checked by doing it: create the directory (and its parents), then create, write and
    remove a probe file in it. Permission bits say little (root writes through them)
    and nothing about a read-only mount or a full disk; a write does.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DataDirUnusable(f"data_dir {path} exists and is not a directory") from None
    except OSError as e:
        raise DataDirUnusable(f"data_dir {path} cannot be created: {e.strerror or e}") from None
    probe = path / f".pyxos-write-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"pyxos")
        finally:
            os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DataDirUnusable(f"data_dir {path} is not writable: {e.strerror or e}") from None


FILES_BESIDES_CONNECTIONS = 256
"""File descriptors a node needs beyond its connections: WAL segments, snapshots,
peer links, the event loop's own."""


def ensure_file_limit(config: Config) -> int:
    """Raise the soft limit on open files to what the connection caps need; return it.

    The three listening ports may hold ``max_connections`` each. Out of descriptors,
    the node could not open its next WAL segment (a fatal error) long before the caps
    refuse anyone, so a flood of connections must meet the caps first. The soft limit
    is raised as far as the hard limit allows; if that is not enough, one warning says
    what to change.
    """
    try:
        import resource
    except ImportError:  # not on this platform
        return -1
    needed = 3 * config.max_connections + FILES_BESIDES_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft < needed:
        logger.warning(
            "node %d: the limit on open files is %d, below the %d that max_connections = %d "
            "on three ports needs: raise it (ulimit -n) or lower max_connections",
            config.node_id,
            soft,
            needed,
            config.max_connections,
        )
    return soft


async def _serve(config: Config, initialize: bool, clock_rate: float = 1.0) -> None:
    server = NodeServer(config, initialize=initialize, clock_rate=clock_rate)
    await server.startup()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, lambda: loop.create_task(server.shutdown()))
    await server.serve_forever()


def run(config: Config, *, initialize: bool = False, clock_rate: float = 1.0) -> None:
    """Run one node until SIGTERM or SIGINT (the programmatic API and the CLI's).

    ``initialize`` allows an empty data directory to be set up for this node (see
    ``NodeServer``); ``clock_rate`` is for chaos tests only. Uses uvloop when it is
    installed. Raises the process's limit on open files, if it must and may, so the
    three ports' connection caps are reached before the node runs out of file
    descriptors (see ``ensure_file_limit``).
    """
    ensure_file_limit(config)
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(config, initialize, clock_rate))
    else:
        uvloop.run(_serve(config, initialize, clock_rate))
