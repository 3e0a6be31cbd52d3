"""asyncio TCP links between pyxos nodes: framed connections, peer links, the peer server.

Theory of operation
-------------------
Every node dials one persistent outgoing connection to every other node
(``PeerLinks``) and accepts the other nodes' connections (``serve_peers``). Each
direction of a pair uses its own connection: node A's messages to B travel only on
A's outgoing link, so per-pair FIFO order is simply TCP order, and nobody has to
decide which of two crossing connections wins. The dialer opens with its ``Hello``;
the server checks it (cluster, protocol version, role "peer", a plausible node id)
before a single message is delivered, and from then on knows the sender's node id.
The server never writes on an incoming connection.

The network is allowed to lose messages (Paxos retries), and the links use that to
stay simple and bounded: a frame sent while a link is down, or while its send queue
holds ``max_queue_frames`` frames, is dropped and counted, never buffered without
limit and never an exception. A link that goes down is redialed with jittered
exponential backoff; the backoff resets only after a connection stayed up for a
while, so a server that accepts and then refuses us is not hammered.

Bad input never crashes a node: a ``ProtocolViolation`` from the codec (garbage,
oversized or empty frame, undecodable message) or a refused handshake closes only
that connection, increments a counter and writes one log line on the
``pyxos.net`` logger.

Limits (``pyxos.net.limits``): a listening port (``serve_framed``, ``serve_peers``) has
a ``PortGuard``: at most ``max_connections`` open connections (one more is closed at
once), at most ``max_buffered_bytes`` of incomplete frames held by all of them
together (the connection that would go over is closed), and a frame that started must
complete within ``frame_timeout`` seconds (else the connection is closed). A closed
connection's buffer is released at once: it does not wait for the garbage collector.

Hot path (docs/architecture.md, "Speed"): ``FramedProtocol.data_received`` parses every
complete frame of the chunk at once and hands the whole list to ``on_messages`` in
one call; ``send`` only appends the already encoded bytes to a list, and one flush
per event-loop pass writes them all with a single ``writelines``. The connections
with frames queued in a pass are listed in their loop's one ``PassFlusher``, which
writes them all at the end of the pass (one ``call_soon`` for all of them), or at
once when the owner calls ``flush_pending()``: a node does so when its Ready is carried
out (its Accepts leave before its own fsync starts, a follower's Accepted right after
its fsync) instead of one event-loop pass later. There is no Future, Task or
coroutine per message; a broadcast writes the same bytes object to every link, so it
is encoded once. When the kernel buffer is full (``pause_writing``) frames stay in the
bounded queue until ``resume_writing``.

Counters: a plain ``dict[str, int]`` shared by every connection of one owner
(``PeerLinks.counters``, ``PeerServer.counters``); ``COUNTER_NAMES`` lists them all.

- ``frames_received`` / ``frames_sent``: messages delivered / handed to the kernel.
- ``malformed_frames``, ``oversized_frames``: connections closed for bad frames.
- ``connections_refused``: connections over the port's cap, closed at once.
- ``buffer_budget_exceeded``, ``frame_timeouts``: connections closed because their
  unfinished frame would take the port over its buffered bytes, or took too long.
- ``handshake_refused``, ``handshake_timeouts``: connections refused at the ``Hello``.
- ``idle_timeouts``: handshaken connections closed after ``idle_timeout`` seconds
  without a frame (the client port's; see ``FramedProtocol``).
- ``connections_accepted``, ``connections_replaced``: server side.
- ``connects``, ``connect_failures``, ``disconnects``: dialer side.
- ``dropped_disconnected``, ``dropped_queue_full``, ``dropped_on_disconnect``: frames
  lost to a down link, a full queue, or a connection that died with them queued.
- ``unexpected_messages``: messages received on an outgoing link nobody listens to.
- ``tls_refused``: TLS handshakes that failed (``pyxos.net.tls``): on a listening port
  a client without a certificate of the cluster CA (or not speaking TLS); on a dialer
  a server whose certificate does not verify.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import ssl
import weakref
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, cast

from pyxos.core.messages import Message
from pyxos.net.codec import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    FrameDecoder,
    HandshakeError,
    Hello,
    ProtocolViolation,
    check_hello,
    encode_hello,
)
from pyxos.net.limits import PortGuard, PortLimits, RefusedConnection
from pyxos.net.tls import certificate_mismatch, tls_acceptor

__all__ = [
    "COUNTER_NAMES",
    "DEFAULT_MAX_QUEUE_FRAMES",
    "IDLE_CHECKS",
    "FramedProtocol",
    "FramedServer",
    "OnMessages",
    "PassFlusher",
    "PeerLinks",
    "PeerServer",
    "backoff_delay",
    "flush_pending",
    "new_counters",
    "serve_framed",
    "serve_peers",
]

logger = logging.getLogger("pyxos.net")

OnMessages = Callable[[int, list[Message]], None]
"""``on_messages(peer_id, msgs)``: every message of one received chunk, in order."""

DEFAULT_MAX_QUEUE_FRAMES = 10_000
"""Default bound on the frames a connection holds that the kernel has not taken yet."""

COUNTER_NAMES = (
    "frames_received",
    "frames_sent",
    "malformed_frames",
    "oversized_frames",
    "connections_refused",
    "buffer_budget_exceeded",
    "frame_timeouts",
    "handshake_refused",
    "handshake_timeouts",
    "idle_timeouts",
    "connections_accepted",
    "connections_replaced",
    "connects",
    "connect_failures",
    "disconnects",
    "dropped_disconnected",
    "dropped_queue_full",
    "dropped_on_disconnect",
    "unexpected_messages",
    "tls_refused",
    "tls_identity_refused",
)
"""Every counter the net layer increments (see the module notes)."""


class PassFlusher:
    """The connections of one event loop with frames queued in this pass.

    The first ``send`` of a pass on a connection lists it here; ``flush`` writes every
    listed connection's queue, in the order they were listed, those marked
    ``flush_last`` (a node's links to its peers) after the others (its clients'
    connections): a client's reply does not wait behind the Commits of its own
    commit, each a system call that wakes a follower. It runs at the end of the pass
    (one ``call_soon`` for all of them), or earlier when ``flush_pending`` is called;
    then the pass-end call finds nothing left.
    """

    __slots__ = ("_dirty", "_last", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[FramedProtocol] = []
        self._last: list[FramedProtocol] = []
        self._scheduled = False

    def add(self, connection: FramedProtocol) -> None:
        """List ``connection`` (it has frames queued and no flush pending)."""
        (self._last if connection.flush_last else self._dirty).append(connection)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._at_pass_end)

    def _at_pass_end(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Write every listed connection's queue now."""
        while self._dirty or self._last:
            dirty, self._dirty = self._dirty, []
            for connection in dirty:
                connection._flush()
            last, self._last = self._last, []
            for connection in last:
                connection._flush()


_flushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, PassFlusher] = (
    weakref.WeakKeyDictionary()
)


def _flusher_of(loop: asyncio.AbstractEventLoop) -> PassFlusher:
    flusher = _flushers.get(loop)
    if flusher is None:
        flusher = _flushers[loop] = PassFlusher(loop)
    return flusher


def flush_pending(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Write now what every connection of ``loop`` (default: the running one) queued
    in this pass, instead of at the end of the pass."""
    if loop is None:
        loop = asyncio.get_running_loop()
    flusher = _flushers.get(loop)
    if flusher is not None:
        flusher.flush()


def new_counters() -> dict[str, int]:
    """A counters dict with every name of ``COUNTER_NAMES`` at zero."""
    return dict.fromkeys(COUNTER_NAMES, 0)


def _count(counters: dict[str, int], name: str, amount: int = 1) -> None:
    counters[name] = counters.get(name, 0) + amount


def backoff_delay(
    attempt: int, rng: random.Random, *, base: float = 0.05, cap: float = 2.0
) -> float:
    """Seconds to wait before redial number ``attempt`` (0, 1, ...): jittered, capped.

    The un-jittered delay doubles from ``base`` up to ``cap``; the result is drawn
    uniformly from its upper half ("equal jitter"), so nodes that lost the same peer
    at the same moment spread their redials but never spin with a near-zero delay.
    """
    ceiling = min(cap, base * 2.0 ** min(attempt, 32))
    return ceiling / 2 + rng.uniform(0.0, ceiling / 2)


IDLE_CHECKS = 4
"""How many quiet checks in a row close an idle connection: one check every
``idle_timeout / IDLE_CHECKS`` seconds, so it goes between ``idle_timeout`` and
``idle_timeout * (1 + 1 / IDLE_CHECKS)`` seconds after its last frame."""


class FramedProtocol(asyncio.Protocol):
    """One framed connection: decodes received frames, coalesces writes.

    ``on_messages(peer_id, msgs)`` receives every message of each received chunk in
    one call. With ``hello`` set (dialer side) that handshake is written first on
    connect. With ``accept_hello`` set (server side) the first frame must be a
    ``Hello``; ``accept_hello`` returns the sender's node id, which becomes
    ``peer_id``, or raises ``HandshakeError`` to refuse the connection; a connection
    that sends no ``Hello`` within ``handshake_timeout`` seconds is closed.
    ``on_lost(protocol, exc)`` is called once when the connection is gone.

    With ``guard`` (an accepted connection of a listening port) the bytes of an
    unfinished frame are reserved in the port's budget (the connection is closed if
    they do not fit), a frame that takes longer than the port's ``frame_timeout``
    closes the connection, and the guard is told when the connection is gone.

    With ``idle_timeout`` (server side, after the ``Hello``) a connection on which no
    frame arrives for that many seconds is closed (``idle_timeouts``), so connections
    that say ``Hello`` and then nothing cannot hold the port's slots for ever. The
    check costs nothing per frame: a timer every ``idle_timeout / IDLE_CHECKS``
    seconds compares the decoder's frame count (see ``IDLE_CHECKS``). A frame that is
    arriving is not idleness: ``frame_timeout`` governs it.
    """

    def __init__(
        self,
        on_messages: OnMessages,
        *,
        counters: dict[str, int] | None = None,
        peer_id: int = 0,
        hello: Hello | None = None,
        accept_hello: Callable[[Hello], int] | None = None,
        handshake_timeout: float = 10.0,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        max_queue_frames: int = DEFAULT_MAX_QUEUE_FRAMES,
        label: str | None = None,
        on_lost: Callable[[FramedProtocol, Exception | None], None] | None = None,
        guard: PortGuard | None = None,
        idle_timeout: float | None = None,
        flush_last: bool = False,
    ) -> None:
        if max_queue_frames < 1:
            raise ValueError(f"max_queue_frames must be >= 1, not {max_queue_frames}")
        if idle_timeout is not None and not 0 < idle_timeout < math.inf:
            raise ValueError(f"idle_timeout must be finite and > 0, not {idle_timeout}")
        self.counters: dict[str, int] = counters if counters is not None else new_counters()
        """Shared counters (see the module notes)."""
        self.peer_id = peer_id
        """The node id of the other side (from its ``Hello`` on the server side)."""
        self.label = label
        """How log lines name this connection; defaults to the remote address."""
        self._on_messages = on_messages
        self._hello_frame = encode_hello(hello) if hello is not None else None
        self._accept_hello = accept_hello
        self._handshake_timeout = handshake_timeout
        self._decoder = FrameDecoder(
            max_frame_bytes=max_frame_bytes,
            expect_hello=accept_hello is not None,
            on_hello=self._receive_hello if accept_hello is not None else None,
        )
        self._max_queue_frames = max_queue_frames
        self._on_lost = on_lost
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flusher: PassFlusher | None = None
        # Frames accepted by ``send`` and not yet handed to the transport. Invariant:
        # len(_pending) <= _max_queue_frames; a flush is scheduled iff
        # _flush_scheduled, and one is scheduled whenever _pending is non-empty,
        # the connection is open and writing is not paused.
        self._pending: list[bytes] = []
        self._flush_scheduled = False
        self._paused = False
        self._open = False  # connected, and not closed by us; checked on every send
        self._lost = False
        self._lost_waiter: asyncio.Future[None] | None = None
        self.lost_reason: Exception | None = None
        """Why the connection ended (None for a clean close or while it is open)."""
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._guard = guard
        # Invariant (with a guard): _reserved == bytes of this connection counted in the
        # guard's budget == the decoder's buffered bytes after each data_received, and 0
        # once the connection is closing. _frame_started is when the unfinished frame
        # began (None: no unfinished frame); _frame_timer runs while it is set.
        self._reserved = 0
        self._frames_seen = 0
        self._frame_started: float | None = None
        self._frame_timer: asyncio.TimerHandle | None = None
        # With _idle_timeout: _idle_timer runs from the Hello until the connection is
        # gone; _idle_quiet checks in a row saw the decoder's frame count stay at
        # _idle_frames with no frame arriving.
        self._idle_timeout = idle_timeout
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_frames = 0
        self._idle_quiet = 0
        self.flush_last = flush_last
        """Written after the pass's other connections (``PassFlusher``)."""

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished frame this connection holds now."""
        return self._decoder.buffered

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Remember the transport; the dialer writes its ``Hello`` first."""
        self._transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        self._flusher = _flusher_of(self._loop)
        self._open = True
        if self.label is None:
            self.label = f"connection from {_address(transport)}"
        if self._hello_frame is not None:
            self._transport.write(self._hello_frame)
        if self._accept_hello is not None:
            self._handshake_timer = self._loop.call_later(
                self._handshake_timeout, self._handshake_timed_out
            )

    def data_received(self, data: bytes) -> None:
        """Decode every complete frame and deliver them in one ``on_messages`` call.

        A bad frame or a refused ``Hello`` closes the connection (counted, logged);
        an exception raised by ``on_messages`` itself is the caller's bug and
        propagates (asyncio then closes the connection).
        """
        if not self._open:
            return
        try:
            messages = self._decoder.feed(data)
        except ProtocolViolation as violation:
            self._refuse(violation)
            return
        if messages:
            _count(self.counters, "frames_received", len(messages))
            self._on_messages(self.peer_id, messages)
        if self._guard is not None and self._open:
            self._account(self._guard)

    def _account(self, guard: PortGuard) -> None:
        """Reserve the bytes of the unfinished frame; time the frame (see ``guard``)."""
        decoder = self._decoder
        buffered = decoder.buffered
        more = buffered - self._reserved
        if more > 0 and not guard.take(more):
            self._refuse(
                ProtocolViolation(
                    f"{buffered} bytes of an unfinished frame would take the port over "
                    f"its limit of {guard.limits.max_buffered_bytes} buffered bytes "
                    "(max_buffered_bytes)",
                    counter="buffer_budget_exceeded",
                )
            )
            return
        if more < 0:
            guard.give(-more)
        self._reserved = buffered
        if buffered == 0:
            self._frame_started = None
        elif self._frame_started is None or decoder.frames != self._frames_seen:
            # A new unfinished frame (the previous one completed in this chunk).
            self._frames_seen = decoder.frames
            assert self._loop is not None
            self._frame_started = self._loop.time()
            if self._frame_timer is None:
                self._frame_timer = self._loop.call_at(
                    self._frame_started + guard.limits.frame_timeout, self._check_frame
                )

    def _check_frame(self) -> None:
        self._frame_timer = None
        started, guard, loop = self._frame_started, self._guard, self._loop
        if started is None or guard is None or loop is None or not self._open:
            return
        deadline = started + guard.limits.frame_timeout
        if loop.time() < deadline:  # the frame running now started after the timer
            self._frame_timer = loop.call_at(deadline, self._check_frame)
            return
        self._refuse(
            ProtocolViolation(
                f"a frame still unfinished ({self._decoder.buffered} bytes) after "
                f"{guard.limits.frame_timeout} s (frame_timeout)",
                counter="frame_timeouts",
            )
        )

    def _release(self) -> None:
        """Free the unfinished frame and give its bytes back to the port's budget."""
        self._decoder.release()
        self._frame_started = None
        if self._frame_timer is not None:
            self._frame_timer.cancel()
            self._frame_timer = None
        if self._guard is not None and self._reserved:
            self._guard.give(self._reserved)
        self._reserved = 0

    def pause_writing(self) -> None:
        """The kernel buffer is full: keep frames in the bounded queue."""
        self._paused = True

    def resume_writing(self) -> None:
        """The kernel buffer drained: write the queue."""
        self._paused = False
        self._schedule_flush()

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop (and count) unsent frames and tell the owner."""
        self._open = False
        self._lost = True
        self.lost_reason = exc
        if self._lost_waiter is not None and not self._lost_waiter.done():
            self._lost_waiter.set_result(None)
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._release()
        if self._guard is not None:
            self._guard.closed(self)
        if self._pending:
            _count(self.counters, "dropped_on_disconnect", len(self._pending))
            self._pending = []
        if self._on_lost is not None:
            self._on_lost(self, exc)

    # -- sending ----------------------------------------------------------------------

    @property
    def peer_certificate(self) -> dict[str, Any] | None:
        """The remote side's verified TLS certificate (``getpeercert()``), if any."""
        if self._transport is None:
            return None
        cert = self._transport.get_extra_info("peercert")
        return cert if isinstance(cert, dict) else None

    @property
    def is_open(self) -> bool:
        """Whether ``send`` can currently accept frames."""
        return self._open

    @property
    def queued(self) -> int:
        """Frames accepted by ``send`` that the transport has not taken yet."""
        return len(self._pending)

    def send(self, frame: bytes) -> bool:
        """Queue one encoded frame for this pass's coalesced write.

        Returns False (and counts it) when the frame is dropped: the connection is not
        open (``dropped_disconnected``) or the queue is full (``dropped_queue_full``).
        """
        if not self._open:
            _count(self.counters, "dropped_disconnected")
            return False
        pending = self._pending
        if len(pending) >= self._max_queue_frames:
            _count(self.counters, "dropped_queue_full")
            return False
        pending.append(frame)
        if not self._flush_scheduled and not self._paused:
            self._schedule_flush()
        return True

    def close(self) -> None:
        """Write what is queued, then close the connection."""
        self._open = False
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._write_pending(transport)
        transport.close()

    def abort(self) -> None:
        """Close the connection now, discarding everything unsent."""
        self._open = False
        self._pending = []
        if self._transport is not None:
            self._transport.abort()

    async def wait_closed(self) -> None:
        """Return once the connection is gone (``connection_lost`` has run)."""
        if self._lost:
            return
        if self._lost_waiter is None:
            self._lost_waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._lost_waiter)

    async def shutdown(self, timeout: float = 1.0) -> None:
        """``close``, wait up to ``timeout`` s for queued bytes to drain, then ``abort``."""
        if self._transport is None or self._lost:
            return
        self.close()
        try:
            await asyncio.wait_for(self.wait_closed(), timeout)
        except TimeoutError:
            self.abort()
            await self.wait_closed()

    def _schedule_flush(self) -> None:
        if self._pending and not self._flush_scheduled and self._flusher is not None:
            self._flush_scheduled = True
            self._flusher.add(self)

    def _flush(self) -> None:
        self._flush_scheduled = False
        transport = self._transport
        if self._paused or transport is None or transport.is_closing():
            return
        self._write_pending(transport)

    def _write_pending(self, transport: asyncio.Transport) -> None:
        frames = self._pending
        if not frames:
            return
        self._pending = []
        _count(self.counters, "frames_sent", len(frames))
        if len(frames) == 1:
            transport.write(frames[0])
        else:
            transport.writelines(frames)

    # -- handshake and violations -----------------------------------------------------

    def _receive_hello(self, hello: Hello) -> None:
        assert self._accept_hello is not None
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        self.peer_id = self._accept_hello(hello)
        self.label = f"{self.label} (node {self.peer_id})"
        if self._idle_timeout is not None:
            self._idle_frames = self._decoder.frames
            self._arm_idle_check(self._idle_timeout)

    def _arm_idle_check(self, idle_timeout: float) -> None:
        assert self._loop is not None
        self._idle_timer = self._loop.call_later(idle_timeout / IDLE_CHECKS, self._check_idle)

    def _check_idle(self) -> None:
        self._idle_timer = None
        idle_timeout = self._idle_timeout
        if not self._open or idle_timeout is None:
            return
        decoder = self._decoder
        if decoder.frames != self._idle_frames or decoder.buffered:
            self._idle_frames = decoder.frames
            self._idle_quiet = 0
        else:
            self._idle_quiet += 1
            if self._idle_quiet >= IDLE_CHECKS:
                _count(self.counters, "idle_timeouts")
                logger.debug("closed %s: no frame for %.1f s (idle)", self.label, idle_timeout)
                self.close()
                return
        self._arm_idle_check(idle_timeout)

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        if self._decoder.hello is None and self.is_open:
            _count(self.counters, "handshake_timeouts")
            logger.warning("closed %s: no Hello within %.1f s", self.label, self._handshake_timeout)
            self.close()

    def _refuse(self, violation: ProtocolViolation) -> None:
        _count(self.counters, violation.counter)
        refused = isinstance(violation, HandshakeError)
        farewell = violation.farewell if isinstance(violation, HandshakeError) else b""
        (logger.info if farewell else logger.warning)(
            "%s %s: %s", "refused" if refused else "closed", self.label, violation.reason
        )
        self._open = False
        self._pending = []
        self._release()
        if self._transport is not None:
            if farewell:  # why, in a frame, before the close
                self._transport.write(farewell)
            self._transport.close()


def _address(transport: asyncio.BaseTransport) -> str:
    peername = transport.get_extra_info("peername")
    if isinstance(peername, tuple) and len(peername) >= 2:
        return f"{peername[0]}:{peername[1]}"
    return str(peername)


class PeerLinks:
    """This node's outgoing links: one persistent connection to every other peer.

    ``peers`` maps node ids to ``(host, port)``; this node's own id is skipped.
    Call ``start()`` inside a running event loop and ``await close()`` to stop.
    ``send`` and ``broadcast`` never block and never raise for a down peer: a frame
    that cannot be queued is dropped and counted. ``on_link(peer, up)``, if given, is
    called whenever a link comes up or goes down (and when a dial fails while it was
    not known down), so the node can stop handing a dead peer anything at once.
    Messages a peer sends back on one of these connections go to ``on_messages`` (or
    are counted as ``unexpected_messages`` if it is None).
    """

    def __init__(
        self,
        node_id: int,
        cluster: str,
        peers: Mapping[int, tuple[str, int]],
        *,
        on_messages: OnMessages | None = None,
        rng: random.Random | None = None,
        max_queue_frames: int = DEFAULT_MAX_QUEUE_FRAMES,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        backoff_base: float = 0.05,
        backoff_cap: float = 2.0,
        connect_timeout: float = 2.0,
        counters: dict[str, int] | None = None,
        on_link: Callable[[int, bool], None] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if node_id < 1:
            raise ValueError(f"node_id must be >= 1, not {node_id}")
        if not 0 < backoff_base <= backoff_cap:
            raise ValueError("backoff needs 0 < backoff_base <= backoff_cap")
        self.node_id = node_id
        self.cluster = cluster
        self.counters: dict[str, int] = counters if counters is not None else new_counters()
        """Counters of every outgoing connection (see the module notes)."""
        self._addresses = {dst: address for dst, address in peers.items() if dst != node_id}
        self._on_messages = on_messages
        self._rng = rng if rng is not None else random.Random()
        self._max_queue_frames = max_queue_frames
        self._max_frame_bytes = max_frame_bytes
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._connect_timeout = connect_timeout
        self._hello = Hello(version=PROTOCOL_VERSION, cluster=cluster, node=node_id, role="peer")
        # Invariant: _links holds exactly the peers whose connection is open and
        # handshake written; a peer absent from it is down (frames to it are dropped).
        self._links: dict[int, FramedProtocol] = {}
        self._on_link = on_link
        # The state last reported to on_link, per peer (reported only when it changes).
        self._reported: dict[int, bool] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._started = False
        self._closed = False
        self._drain_timeout = 1.0
        self._tls = tls

    @property
    def peers(self) -> tuple[int, ...]:
        """The node ids this node dials, in ascending order."""
        return tuple(sorted(self._addresses))

    def queued_frames(self) -> int:
        """Frames waiting in the send queues of every connected link."""
        return sum(link.queued for link in self._links.values())

    def start(self) -> None:
        """Start dialing every peer (needs a running event loop)."""
        if self._started or self._closed:
            raise RuntimeError("PeerLinks.start() may be called once, before close()")
        self._started = True
        for dst, (host, port) in sorted(self._addresses.items()):
            self._dial(dst, host, port)

    def _dial(self, dst: int, host: str, port: int) -> None:
        self._tasks[dst] = asyncio.get_running_loop().create_task(
            self._maintain(dst, host, port), name=f"pyxos-link-{self.node_id}-{dst}"
        )

    def add_peer(self, dst: int, address: tuple[str, int]) -> None:
        """Dial ``dst`` at ``address`` from now on (a member added at run time); a peer
        we already dial at another address is redialed there."""
        if dst == self.node_id or self._closed or self._addresses.get(dst) == address:
            return
        if dst in self._addresses:
            self.remove_peer(dst)
        self._addresses[dst] = address
        if self._started:
            self._dial(dst, *address)

    def remove_peer(self, dst: int) -> None:
        """Stop dialing ``dst`` and close our link to it (a removed member)."""
        self._addresses.pop(dst, None)
        task = self._tasks.pop(dst, None)
        if task is not None:
            task.cancel()
        link = self._links.pop(dst, None)
        if link is not None:
            link.close()
        self._report(dst, False)

    def is_connected(self, dst: int) -> bool:
        """Whether the link to ``dst`` is up right now."""
        return dst in self._links

    def connected(self) -> frozenset[int]:
        """The peers whose link is up right now."""
        return frozenset(self._links)

    def send(self, dst: int, frame: bytes) -> bool:
        """Queue one encoded frame to ``dst``; False if it was dropped (and counted).

        Raises ``KeyError`` for a node that is not one of ``peers`` (caller misuse).
        """
        link = self._links.get(dst)
        if link is None:
            if dst not in self._addresses:
                raise KeyError(f"node {dst} is not a peer of node {self.node_id}")
            _count(self.counters, "dropped_disconnected")
            return False
        return link.send(frame)

    def broadcast(self, dsts: Iterable[int], frame: bytes) -> int:
        """Queue the same encoded frame to every node of ``dsts``; return how many took it."""
        return sum(self.send(dst, frame) for dst in dsts)

    async def close(self, drain_timeout: float = 1.0) -> None:
        """Stop redialing and close every connection.

        Queued frames are written first; a connection whose peer has not taken them
        within ``drain_timeout`` seconds is aborted, so closing never hangs.
        """
        self._closed = True
        self._drain_timeout = drain_timeout
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks = {}
        self._links.clear()

    async def _maintain(self, dst: int, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        label = f"link to node {dst} at {host}:{port}"

        def factory() -> FramedProtocol:
            return FramedProtocol(
                self._deliver,
                counters=self.counters,
                peer_id=dst,
                hello=self._hello,
                max_frame_bytes=self._max_frame_bytes,
                max_queue_frames=self._max_queue_frames,
                label=label,
                flush_last=True,
            )

        tls = self._tls
        while not self._closed:
            try:
                if tls is None:
                    connecting = loop.create_connection(factory, host, port)
                else:
                    connecting = loop.create_connection(
                        factory,
                        host,
                        port,
                        ssl=tls,
                        server_hostname=host,
                        ssl_handshake_timeout=self._connect_timeout,
                    )
                _, link = await asyncio.wait_for(connecting, self._connect_timeout)
            except (OSError, TimeoutError) as exc:
                _count(self.counters, "connect_failures")
                self._report(dst, False)
                if isinstance(exc, ssl.SSLError):
                    _count(self.counters, "tls_refused")
                    log = logger.warning if attempt == 0 else logger.debug
                    log("%s: TLS handshake failed: %s", label, exc.reason or exc)
                else:
                    log = logger.info if attempt == 0 else logger.debug
                    log("%s: connect failed: %s", label, exc or type(exc).__name__)
                await asyncio.sleep(self._backoff(attempt))
                attempt += 1
                continue
            if tls is not None:  # the node reached must hold the dialed node's certificate
                mismatch = certificate_mismatch(link.peer_certificate, dst)
                if mismatch is not None:
                    _count(self.counters, "tls_identity_refused")
                    log = logger.warning if attempt == 0 else logger.debug
                    log("%s: refused: %s", label, mismatch)
                    link.close()
                    await asyncio.sleep(self._backoff(attempt))
                    attempt += 1
                    continue
            _count(self.counters, "connects")
            logger.info("%s up", label)
            self._links[dst] = link
            self._report(dst, True)
            up_since = loop.time()
            try:
                await link.wait_closed()
            finally:
                if self._links.get(dst) is link:
                    del self._links[dst]
                    self._report(dst, False)
                await link.shutdown(self._drain_timeout)
            _count(self.counters, "disconnects")
            logger.info("%s down: %s", label, link.lost_reason or "closed by the peer")
            if loop.time() - up_since >= self._backoff_cap:
                attempt = 0
            await asyncio.sleep(self._backoff(attempt))
            attempt += 1

    def _report(self, dst: int, up: bool) -> None:
        """Tell ``on_link`` that the link to ``dst`` is now up (or down), once per change."""
        if self._on_link is not None and self._reported.get(dst) is not up and not self._closed:
            self._reported[dst] = up
            self._on_link(dst, up)

    def _backoff(self, attempt: int) -> float:
        return backoff_delay(attempt, self._rng, base=self._backoff_base, cap=self._backoff_cap)

    def _deliver(self, peer_id: int, msgs: list[Message]) -> None:
        if self._on_messages is None:
            _count(self.counters, "unexpected_messages", len(msgs))
        else:
            self._on_messages(peer_id, msgs)


class FramedServer:
    """A listening port of framed connections, as returned by ``serve_framed``.

    Wraps the ``asyncio.Server`` (``server``) and the port's ``PortGuard`` (``guard``),
    which tracks the accepted connections, so ``close()`` ends those too (Python 3.11's
    ``Server.close`` leaves them open): a closed peer server looks to the other nodes
    like a stopped node.
    """

    def __init__(self, server: asyncio.Server, guard: PortGuard, counters: dict[str, int]) -> None:
        self.server = server
        """The underlying listening server."""
        self.guard = guard
        """The port's limits and their accounting (connections, buffered bytes)."""
        self.counters = counters
        """Counters of every accepted connection (see the module notes)."""

    @property
    def port(self) -> int:
        """The TCP port actually bound (useful after binding port 0)."""
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> frozenset[FramedProtocol]:
        """The accepted connections that are still open."""
        return frozenset(cast(set[FramedProtocol], self.guard.connections))

    def close(self) -> None:
        """Stop listening and close every accepted connection."""
        self.server.close()
        for connection in self.connections:
            connection.close()

    async def wait_closed(self) -> None:
        """Wait until the listening socket and every accepted connection are closed."""
        await self.server.wait_closed()
        await asyncio.gather(*(connection.shutdown() for connection in self.connections))

    async def __aenter__(self) -> FramedServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()


PeerServer = FramedServer
"""The peer port's server (``serve_peers``): a ``FramedServer``."""


async def serve_framed(
    host: str,
    port: int,
    factory: Callable[[PortGuard], FramedProtocol],
    *,
    limits: PortLimits | None = None,
    counters: dict[str, int] | None = None,
    name: str = "port",
    tls: ssl.SSLContext | None = None,
    refusal: bytes = b"",
) -> FramedServer:
    """Listen on ``host:port``; every accepted connection is ``factory(guard)``.

    The factory must pass ``guard`` on to its ``FramedProtocol``. The port's
    ``limits`` (defaults: ``PortLimits()``) apply: a connection over
    ``max_connections`` is closed at once without a protocol of its own (counted as
    ``connections_refused``). ``port`` 0 binds a free port. With ``tls`` every
    connection first does a TLS handshake (``pyxos.net.tls.tls_acceptor``, holding a
    connection slot meanwhile); one that fails is closed and counted (``tls_refused``).
    ``refusal``: bytes written to a connection refused over the cap before it is closed
    (a frame saying why; without TLS only: a refusal comes before the handshake).
    """
    counters = counters if counters is not None else new_counters()
    guard = PortGuard(limits, counters, name=name)

    def accept() -> asyncio.Protocol:
        if guard.full:
            guard.refuse()
            return RefusedConnection(refusal)
        connection = factory(guard)
        guard.admit(connection)
        _count(counters, "connections_accepted")
        return connection

    protocols: Callable[[], asyncio.BaseProtocol]
    if tls is not None:
        protocols = tls_acceptor(
            guard,
            tls,
            lambda: factory(guard),
            on_accepted=lambda: _count(counters, "connections_accepted"),
        )
    else:
        protocols = accept

    server = await asyncio.get_running_loop().create_server(protocols, host, port)
    return FramedServer(server, guard, counters)


async def serve_peers(
    host: str,
    port: int,
    cluster: str,
    node_id: int,
    on_messages: OnMessages,
    *,
    known_nodes: Collection[int] | None = None,
    check_node: Callable[[int], None] | None = None,
    max_frame_bytes: int = MAX_FRAME_BYTES,
    handshake_timeout: float = 10.0,
    counters: dict[str, int] | None = None,
    limits: PortLimits | None = None,
    tls: ssl.SSLContext | None = None,
) -> PeerServer:
    """Listen for other nodes' links; deliver their messages as ``on_messages(node, msgs)``.

    A connection is refused (logged, counted as ``handshake_refused``, closed) unless
    its first frame is a ``Hello`` of ``cluster``, this protocol version and role
    ``"peer"``, from a node id other than ``node_id`` and, if ``known_nodes`` is
    given, one of them, and that ``check_node(id)`` (if given) does not refuse by raising
    ``HandshakeError`` (whose ``farewell`` frame, if any, is written before the close:
    a removed node learns why). ``port`` 0 binds a free port (see ``PeerServer.port``). A new
    connection from a node closes its previous one (``connections_replaced``). The
    port's ``limits`` apply as in ``serve_framed``. With ``tls`` (a context from
    ``pyxos.net.tls.server_context(..., require_client_cert=True)``) a node must pass
    the mutual TLS handshake before its ``Hello`` is read.
    """
    counters = counters if counters is not None else new_counters()
    # The newest handshaken connection from each node. The server never writes on
    # incoming connections, so it would never notice one whose node died without a
    # FIN; the node's next connection (after it restarts) retires the old one instead.
    by_node: dict[int, FramedProtocol] = {}

    def check_peer(hello: Hello, connection: FramedProtocol) -> int:
        check_hello(hello, cluster, PROTOCOL_VERSION, expected_role="peer")
        if hello.node == node_id:
            raise HandshakeError(f"peer claims node id {hello.node}, which is this node's id")
        if known_nodes is not None and hello.node not in known_nodes:
            raise HandshakeError(f"node {hello.node} is not a member of cluster {cluster!r}")
        if check_node is not None:
            check_node(hello.node)
        if tls is not None:  # the certificate must name the node the Hello claims
            mismatch = certificate_mismatch(connection.peer_certificate, hello.node)
            if mismatch is not None:
                raise HandshakeError(
                    f"peer claims to be node {hello.node}, but {mismatch}",
                    counter="tls_identity_refused",
                )
        return hello.node

    def on_lost(connection: FramedProtocol, _: Exception | None) -> None:
        if by_node.get(connection.peer_id) is connection:
            del by_node[connection.peer_id]

    def factory(guard: PortGuard) -> FramedProtocol:
        def accept_hello(hello: Hello) -> int:
            node = check_peer(hello, connection)
            previous = by_node.get(node)
            if previous is not None and previous.is_open:
                _count(counters, "connections_replaced")
                logger.info("%s replaced by a new connection from node %d", previous.label, node)
                previous.close()
            by_node[node] = connection
            return node

        connection = FramedProtocol(
            on_messages,
            counters=counters,
            accept_hello=accept_hello,
            handshake_timeout=handshake_timeout,
            max_frame_bytes=max_frame_bytes,
            on_lost=on_lost,
            guard=guard,
        )
        return connection

    return await serve_framed(
        host,
        port,
        factory,
        limits=limits,
        counters=counters,
        name=f"node {node_id} peer port",
        tls=tls,
    )
