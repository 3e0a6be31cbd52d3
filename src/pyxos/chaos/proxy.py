"""A fault-injecting TCP proxy in front of every directed peer link.

Theory of operation
-------------------
pyxos nodes send to each other only on their own outgoing connection (node A's
messages to B travel on A's link to B; see ``pyxos.net.link``), so one proxy per
*directed* pair carries exactly the traffic from A to B. The chaos harness writes
each node's configuration so that its peer addresses are these proxies, and the
proxies forward to the real peer ports.

The proxy understands the framing (a 4-byte big-endian length, then the body) and
acts on whole frames, never on bytes, so every fault it makes is one a network can
make to a message and none corrupts the stream:

- **blocked** (a partition, one-way when only one direction is blocked): every frame
  is dropped, the handshake included. The TCP connection stays up, as it would across
  a real partition: the sender sees silence, not a reset.
- **loss**: each frame after the handshake is dropped with this probability.
- **delay**: each frame is held for a random time in ``[low, high]`` seconds; order is
  kept (a frame never overtakes an earlier one of the same connection), as in TCP.

Faults change at any time through :meth:`ProxyMesh.set`; a frame's fate is decided when
it arrives. Everything runs in the harness's event loop; the proxy never parses the
messages themselves, so it stays cheap and protocol-agnostic.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["LinkFaults", "ProxyMesh"]

_HEADER = struct.Struct(">I")
HOST = "127.0.0.1"


@dataclass(slots=True)
class LinkFaults:
    """What the network currently does to one directed link."""

    blocked: bool = False
    loss: float = 0.0
    delay: tuple[float, float] = (0.0, 0.0)

    @property
    def healthy(self) -> bool:
        """True when the link delivers everything at once."""
        return not self.blocked and self.loss == 0.0 and self.delay == (0.0, 0.0)


class _Pipe:
    """One proxied connection: frames from the dialer, forwarded to the target."""

    def __init__(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.link = link
        self.reader = reader
        self.writer = writer
        self.upstream: asyncio.StreamWriter | None = None
        self.last_release = 0.0
        # Delayed frames in release order (release times never decrease); one timer
        # drains them, because timers with equal deadlines run in no defined order.
        self.delayed: deque[tuple[float, bytes]] = deque()
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            up_reader, self.upstream = await asyncio.open_connection(*self.link.target)
        except OSError:
            self.writer.close()
            return
        back = loop.create_task(self._backward(up_reader))
        self.tasks.add(back)
        first = True
        try:
            while True:
                head = await self.reader.readexactly(_HEADER.size)
                (length,) = _HEADER.unpack(head)
                body = await self.reader.readexactly(length) if length else b""
                self._forward(head + body, first, loop)
                first = False
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.close()

    def _forward(self, frame: bytes, handshake: bool, loop: asyncio.AbstractEventLoop) -> None:
        faults = self.link.faults
        link = self.link
        if faults.blocked or (not handshake and faults.loss and link.rng.random() < faults.loss):
            link.dropped += 1
            return
        link.forwarded += 1
        low, high = faults.delay
        now = loop.time()
        if high <= 0.0 and not self.delayed:
            self._write(frame)  # nothing delayed is still waiting: order is kept
            return
        when = max(now + link.rng.uniform(low, high), self.last_release)
        self.last_release = when
        if not self.delayed:
            loop.call_at(when, self._release, loop)
        self.delayed.append((when, frame))

    def _release(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        while self.delayed and self.delayed[0][0] <= now:
            self._write(self.delayed.popleft()[1])
        if self.delayed:
            loop.call_at(self.delayed[0][0], self._release, loop)

    def _write(self, frame: bytes) -> None:
        if self.upstream is not None and not self.upstream.is_closing():
            self.upstream.write(frame)

    async def _backward(self, up_reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError, OSError, asyncio.IncompleteReadError):
            while data := await up_reader.read(65536):
                self.writer.write(data)
        self.close()

    def close(self) -> None:
        for w in (self.writer, self.upstream):
            if w is not None and not w.is_closing():
                w.close()


class _Link:
    """The proxy of one directed pair ``src -> dst``."""

    def __init__(self, src: int, dst: int, target: tuple[str, int], rng: random.Random) -> None:
        self.src = src
        self.dst = dst
        self.target = target
        self.rng = rng
        self.faults = LinkFaults()
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self.pipes: set[_Pipe] = set()
        self.forwarded = 0
        self.dropped = 0

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._accept, host, port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pipe = _Pipe(self, reader, writer)
        self.pipes.add(pipe)
        try:
            await pipe.run()
        finally:
            self.pipes.discard(pipe)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for pipe in list(self.pipes):
            pipe.close()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2.0)


class ProxyMesh:
    """Proxies for every directed pair of nodes; faults set per link.

    ``listen_ports[(a, b)]`` is the port node ``a`` dials to reach node ``b`` (on
    ``listen_host``); ``peers[b]`` is ``b``'s real peer address, ``(host, port)``.
    """

    def __init__(
        self,
        peers: dict[int, tuple[str, int]],
        listen_ports: dict[tuple[int, int], int],
        seed: int = 0,
        listen_host: str = HOST,
    ) -> None:
        rng = random.Random(seed)
        self.links = {
            (a, b): _Link(a, b, peers[b], random.Random(rng.getrandbits(64)))
            for (a, b) in listen_ports
        }
        self._listen = listen_ports
        self._host = listen_host

    async def start(self) -> None:
        """Listen on every link's port."""
        for key, link in self.links.items():
            await link.start(self._host, self._listen[key])

    async def close(self) -> None:
        """Stop every proxy and close every proxied connection."""
        for link in self.links.values():
            await link.close()

    def set(self, pairs: Iterable[tuple[int, int]], faults: LinkFaults) -> None:
        """Give each directed link in ``pairs`` (a copy of) ``faults``."""
        for pair in pairs:
            f = self.links[pair].faults
            f.blocked, f.loss, f.delay = faults.blocked, faults.loss, faults.delay

    def heal(self) -> None:
        """Every link healthy again."""
        self.set(self.links, LinkFaults())

    def counters(self) -> dict[str, int]:
        """Frames forwarded and dropped over all links."""
        return {
            "forwarded": sum(link.forwarded for link in self.links.values()),
            "dropped": sum(link.dropped for link in self.links.values()),
        }
