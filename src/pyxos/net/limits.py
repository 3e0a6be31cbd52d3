"""What the connections of one listening port may make a node hold: connections, bytes, time.

Theory of operation
-------------------
Anyone who reaches a port can open connections and start a frame without finishing
it; the handshake proves nothing (the cluster id is not a secret). Before these
limits, 100 connections to the client port, each with 15 MB of an unfinished frame,
took a node from 44 MB to 1.5 GB of memory, and most of it stayed allocated after
the connections closed (issue 8, item 2). A ``PortGuard`` per listening port (client,
peer, HTTP) bounds all its connections together:

- **Connections**: at most ``max_connections`` open at once. One more is accepted by
  the kernel and closed at once (``RefusedConnection``), counted as
  ``connections_refused``; a flood of them logs one warning, not one line each.
- **Bytes**: one connection holds at most one incomplete frame, and a frame longer
  than the port's frame limit is refused on its 4-byte header, before any of its
  body is buffered (``pyxos.net.codec``); the client port's limit is the largest
  legitimate request (a few MiB), far below the 15 MB of the attack. All the
  connections of a port together hold at most ``max_buffered_bytes`` of incomplete
  frames (HTTP: of request bodies being read): the connection whose bytes would go
  over is closed (``buffer_budget_exceeded``) and its buffer freed, so the total
  exceeds the limit by at most the one chunk that was just read (a read is at most
  a few hundred KiB). Closing, rather than pausing reads, keeps a stalled attacker
  from holding a legitimate connection paused behind it.
- **Time**: a frame (an HTTP body) that has started must complete within
  ``frame_timeout`` seconds, or the connection is closed (``frame_timeouts``) and its
  bytes released: budget held by a connection that stalls comes back.

On close every buffer is released at once and the guard's accounting goes back to
zero; ``PortGuard.buffered`` is what the tests assert on, not the process's memory.
(Why memory used to stay allocated: the framed protocol and its decoder refer to
each other, a reference cycle, so a closed connection's buffer waited for the
cyclic garbage collector, which an idle node may not run for a long time; and freed
large buffers fragment the C heap. Releasing the buffer explicitly on close frees it
at once, and the budget bounds how much can be allocated in the first place.)

``PortGuard.wrap`` applies the connection cap to any asyncio protocol factory (the
HTTP server's); ``FramedProtocol`` uses the budget and the frame timeout itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

__all__ = [
    "DEFAULT_FRAME_TIMEOUT",
    "DEFAULT_MAX_BUFFERED_BYTES",
    "DEFAULT_MAX_CONNECTIONS",
    "PortGuard",
    "PortLimits",
    "RefusedConnection",
]

logger = logging.getLogger("pyxos.net")

DEFAULT_MAX_CONNECTIONS = 1024
"""Open connections one listening port accepts at once."""

DEFAULT_MAX_BUFFERED_BYTES = 64 * 1024 * 1024
"""Bytes of incomplete frames all connections of one port may hold together."""

DEFAULT_FRAME_TIMEOUT = 10.0
"""Seconds a started frame (or HTTP request body) may take to arrive completely."""


@dataclass(frozen=True, slots=True)
class PortLimits:
    """The limits of one listening port (see the module notes)."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    """Open connections at once; more are closed at once and counted."""
    max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES
    """Bytes of incomplete frames (request bodies) all connections hold together."""
    frame_timeout: float = DEFAULT_FRAME_TIMEOUT
    """Seconds a started frame may take to complete before its connection is closed."""

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, not {self.max_connections}")
        if self.max_buffered_bytes < 1:
            raise ValueError(f"max_buffered_bytes must be >= 1, not {self.max_buffered_bytes}")
        if not 0 < self.frame_timeout < math.inf:
            raise ValueError(f"frame_timeout must be finite and > 0, not {self.frame_timeout}")


class PortGuard:
    """The live accounting of one port's limits: open connections and buffered bytes.

    Shared by every connection of the port. ``counters`` is the port's counters dict
    (``connections_refused`` is incremented here; the protocols count the rest).
    """

    def __init__(
        self,
        limits: PortLimits | None = None,
        counters: dict[str, int] | None = None,
        *,
        name: str = "port",
    ) -> None:
        self.limits = limits if limits is not None else PortLimits()
        """The limits enforced."""
        self.counters: dict[str, int] = counters if counters is not None else {}
        """The port's counters."""
        self.name = name
        """How log lines name the port."""
        # Invariants: buffered == sum of what every open connection holds of incomplete
        # frames (each adds before it keeps bytes and gives back when it drops them);
        # len(connections) <= limits.max_connections.
        self.buffered = 0
        """Bytes of incomplete frames (request bodies) the port's connections hold now."""
        self.peak_buffered = 0
        """The most ``buffered`` has been."""
        self.connections: set[asyncio.BaseProtocol] = set()
        """The open connections admitted on this port."""
        self._refusing = False
        self._refused_since_warning = 0

    # -- connections -----------------------------------------------------------------

    @property
    def full(self) -> bool:
        """Whether the port has ``max_connections`` open: a new one would be refused."""
        return len(self.connections) >= self.limits.max_connections

    def admit(self, connection: asyncio.BaseProtocol) -> bool:
        """Track ``connection`` if the port has room for it; else ``refuse`` it (False)."""
        if self.full:
            self.refuse()
            return False
        self.connections.add(connection)
        return True

    def refuse(self) -> None:
        """Count a connection refused for want of room; warn once per flood."""
        self.count("connections_refused")
        self._refused_since_warning += 1
        if not self._refusing:
            self._refusing = True
            logger.warning(
                "%s: %d connections open, the limit (max_connections): closing new ones "
                "at once until some close (counted as connections_refused)",
                self.name,
                len(self.connections),
            )

    def closed(self, connection: asyncio.BaseProtocol) -> None:
        """Forget ``connection`` (idempotent); the port may accept another."""
        self.connections.discard(connection)
        if self._refusing and len(self.connections) < self.limits.max_connections:
            self._refusing = False
            logger.info(
                "%s: accepting connections again (%d refused meanwhile)",
                self.name,
                self._refused_since_warning,
            )
            self._refused_since_warning = 0

    def wrap(self, factory: Callable[[], asyncio.BaseProtocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``create_server`` that applies the connection cap.

        For protocols that do not track themselves (the HTTP server's): each admitted
        connection is wrapped in a thin delegating protocol that tells the guard when
        it is gone.
        """

        def capped() -> asyncio.Protocol:
            counted = _Counted(self)
            if not self.admit(counted):
                return RefusedConnection()
            counted.inner = cast(asyncio.Protocol, factory())
            return counted

        return capped

    def track(self, protocol: asyncio.Protocol) -> asyncio.Protocol:
        """``protocol`` wrapped so that the guard hears when its connection is gone
        (``closed``); it is not admitted here (``pyxos.net.tls.tls_acceptor`` hands a
        slot over to it)."""
        counted = _Counted(self)
        counted.inner = protocol
        return counted

    # -- bytes ------------------------------------------------------------------------

    def take(self, amount: int) -> bool:
        """Reserve ``amount`` more buffered bytes; False (nothing reserved) if over budget."""
        buffered = self.buffered + amount
        if buffered > self.limits.max_buffered_bytes:
            return False
        self.buffered = buffered
        if buffered > self.peak_buffered:
            self.peak_buffered = buffered
        return True

    def give(self, amount: int) -> None:
        """Release ``amount`` buffered bytes reserved with ``take``."""
        self.buffered -= amount
        assert self.buffered >= 0, "gave back more than was taken"

    def count(self, name: str) -> None:
        """Increment the port's counter ``name``."""
        self.counters[name] = self.counters.get(name, 0) + 1


class RefusedConnection(asyncio.Protocol):
    """A connection over the cap: closed as soon as it is made, nothing read; with
    ``notice``, those bytes are written first (the client port's says why)."""

    def __init__(self, notice: bytes = b"") -> None:
        self.notice = notice

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Write the notice, if any, and close at once."""
        if self.notice:
            cast(asyncio.WriteTransport, transport).write(self.notice)
        transport.close()

    def data_received(self, data: bytes) -> None:
        """Ignore anything that arrived before the close."""


class _Counted(asyncio.Protocol):
    """Delegates to ``inner``; tells the guard when the connection is gone."""

    __slots__ = ("guard", "inner")

    def __init__(self, guard: PortGuard) -> None:
        self.guard = guard
        self.inner: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert self.inner is not None
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        assert self.inner is not None
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        assert self.inner is not None
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        assert self.inner is not None
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        assert self.inner is not None
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.closed(self)
        assert self.inner is not None
        self.inner.connection_lost(exc)
