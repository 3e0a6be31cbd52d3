"""The deterministic simulator: one seeded RNG, virtual time, node clocks, an event queue.

Theory of operation
-------------------
The simulator is a driver of pure nodes (anything with the core's ``step / tick /
ready / advance / next_deadline`` contract). It owns virtual time, every node's clock
and the only random number generator; nodes receive their own ``random.Random`` seeded from it.
Everything that happens is an event in one priority queue ordered by (virtual time,
sequence number), so a seed replays exactly, event for event.

Driving a node after each input is the server's own Ready driver
(:class:`~pyxos.driver.ReadyDriver`, one per node incarnation): the simulator only
supplies its effects (``_SimEffects``), so every seed checks the driver the server
runs, and models the overlap of fsync and sending faithfully:

- ``persist`` is written to the node's :class:`~pyxos.storage.memory.MemoryStorage`
  as unsynced; one fsync at a time is in flight and covers every write issued before
  it started (group commit); it completes after a random disk latency.
- ``send_now`` messages enter the network at once.
- ``send_after_sync`` messages wait until every write issued up to their Ready is
  durable; a crash before that drops them together with the unsynced writes (the
  crash discards the driver and what waits in it).

With disk faults on (``torn_writes``), a crash keeps a random *prefix* of the unsynced
writes instead of none (a write that reached the platter, and a torn record that
recovery truncates, which is the same as losing it), and an fsync may fail: the node
then stops at once, as it must (after fsyncgate: never carry on as if durable), with
a random prefix of its unsynced writes on disk. ``ack_before_sync`` is a deliberately
broken driver, for the mutation test: it sends acceptor replies before the fsync.
- ``committed`` entries go to the observers (the safety checkers) at once.

The network delivers each message after a random delay and, when the faults are on,
drops, duplicates, delays for long, reorders (no FIFO per link) and blocks messages
between partitioned nodes. A message to oneself is delivered locally, without faults.
Rarely a message is held back for several election timeouts (``stale_delay``), or a
duplicate is replayed that much later (``late_dup``): it then arrives after its sender
may have lost and regained leadership, which is what exercises the code that must
ignore messages of an older ballot (each replica counts those it receives).

Clocks. Virtual time ``now`` is real time; no node reads it. Each node owns a
:class:`NodeClock` whose rate may differ from 1 (``set_clock_rate``, changeable at any
moment) and whose reading may start anywhere at a restart (``reboot_clock``: a monotonic
clock restarts with the machine). Every ``tick(now)`` and a node's start see its own
clock's reading; the deadlines a node asks for are in its own time and are converted
to virtual time when they are scheduled, so a fast clock fires its timers early and a
slow one late, exactly like a real clock with a rate error. Leases, which are only as
safe as the bound on the rate difference, meet that bound here.
A crash discards the node object, its in-flight messages and its unsynced writes; a
restart builds a new node from the durable storage only.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pyxos.core.messages import Entry, Message
from pyxos.core.ready import Node, Persist, Send
from pyxos.driver import ReadyDriver
from pyxos.storage.memory import MemoryStorage

__all__ = ["NetworkFaults", "NodeClock", "NodeFactory", "Simulator", "TraceEvent", "format_trace"]

NodeFactory = Callable[[int, MemoryStorage, random.Random, float], Node]
"""Builds a node from (node id, durable storage, its RNG, the time of its start)."""

TraceEvent = tuple[float, str, Any, Any, Any]
"""(time, kind, a, b, detail): one line of a run's trace."""


@dataclass(slots=True)
class NetworkFaults:
    """Probabilities and delays of the simulated network (all off by default)."""

    drop: float = 0.0
    dup: float = 0.0
    long_delay: float = 0.0
    reorder: bool = False
    min_delay: float = 0.0002
    max_delay: float = 0.002
    long_delay_range: tuple[float, float] = (0.02, 0.2)
    stale_delay: float = 0.0
    """Probability that a message is held back for ``stale_delay_range`` (several
    election timeouts): it arrives after its sender's ballot has likely been superseded."""
    late_dup: float = 0.0
    """Probability that a duplicate (see ``dup``) is replayed ``stale_delay_range`` later."""
    stale_delay_range: tuple[float, float] = (0.4, 1.5)


@dataclass(slots=True)
class NodeClock:
    """A node's own monotonic clock: it reads ``origin_local + rate * (t - origin_t)``
    at virtual time ``t`` (piecewise: a rate change starts a new piece)."""

    rate: float = 1.0
    origin_t: float = 0.0
    origin_local: float = 0.0

    def read(self, t: float) -> float:
        """The clock's reading at virtual time ``t``."""
        return self.origin_local + (t - self.origin_t) * self.rate

    def when(self, local: float) -> float:
        """The first virtual time at which the clock reads at least ``local``."""
        t = self.origin_t + (local - self.origin_local) / self.rate
        while self.read(t) < local:  # floating point: never fire a timer early
            t = math.nextafter(t, math.inf)
        return t

    def set_rate(self, t: float, rate: float) -> None:
        """From virtual time ``t`` on, run at ``rate`` (the reading stays continuous)."""
        self.origin_local = self.read(t)
        self.origin_t = t
        self.rate = rate


@dataclass(slots=True)
class _Process:
    node_id: int
    factory: NodeFactory
    storage: MemoryStorage
    node: Node | None = None
    up: bool = False
    incarnation: int = 0
    crashable: bool = True
    tick_at: float | None = None
    paused_until: float = 0.0
    """While ``now`` is below this, the process is frozen: events for it wait."""
    driver: ReadyDriver | None = None
    """This incarnation's Ready driver (None while down)."""
    clock: NodeClock | None = None
    """This node's own clock (None: it reads virtual time exactly)."""


_DELIVER, _TICK, _FSYNC, _CALL = range(4)


class Simulator:
    """Drives pure nodes over a faulty simulated network and disk, deterministically."""

    def __init__(
        self,
        seed: int,
        *,
        faults: NetworkFaults | None = None,
        disk_latency: tuple[float, float] = (0.0001, 0.001),
        trace: bool = True,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = 0.0
        self.faults = faults or NetworkFaults()
        self.disk_latency = disk_latency
        self.procs: dict[int, _Process] = {}
        self.blocked: set[tuple[int, int]] = set()
        """Directed (src, dst) pairs whose messages the network drops (partitions)."""
        self.tracing = trace
        self.trace: list[TraceEvent] = []
        self.tap: Callable[[TraceEvent], None] | None = None
        """Given every trace event as it happens (tracing on or off), and besides them
        ``send``, ``dup``, ``tick``, ``persist`` and ``ready`` (a node was just driven):
        what a trace file needs (``pyxos.sim.traceout``). None: nothing is given."""
        self.observers: list[Callable[[int, list[Entry]], None]] = []
        """Called with (node id, committed entries) after every Ready that has any."""
        self.send_observers: list[Callable[[int, Message], None]] = []
        """Called with (sender, message) for every message put on the network."""
        self.stats = {
            "sent": 0,
            "delivered": 0,
            "dropped": 0,
            "duplicated": 0,
            "fsyncs": 0,
            "stale_delayed": 0,
        }
        self.stale_ballot: dict[str, int] = {}
        """Messages of an older ballot received, per message type, summed over every
        node incarnation (nodes count them in their ``stale_ballot``)."""
        self._queue: list[tuple[float, int, int, Any, Any, Any]] = []
        self._seq = 0
        self._link_last: dict[tuple[int, int], float] = {}
        self.stopped = False
        self.torn_writes = False
        """Crashes keep a random prefix of the unsynced writes (disk faults)."""
        self.fsync_fault: Callable[[int], bool] | None = None
        """Asked at each fsync completion; True makes that fsync fail (the node stops)."""
        self.ack_before_sync = False
        """Broken driver for the mutation test: replies leave before the fsync."""

    # -- setup ---------------------------------------------------------------------

    def add_node(self, node_id: int, factory: NodeFactory, *, crashable: bool = True) -> None:
        """Add a process and start it now."""
        if node_id in self.procs:
            raise ValueError(f"node {node_id} exists")
        proc = _Process(node_id, factory, MemoryStorage(), crashable=crashable)
        self.procs[node_id] = proc
        self._start(proc)

    def node(self, node_id: int) -> Node | None:
        """The live node object of ``node_id`` (None while it is down)."""
        return self.procs[node_id].node

    def live_nodes(self) -> list[int]:
        """Ids of the processes that are up."""
        return [p.node_id for p in self.procs.values() if p.up]

    # -- clocks --------------------------------------------------------------------

    def local_time(self, node_id: int) -> float:
        """What ``node_id``'s own clock reads now."""
        clock = self.procs[node_id].clock
        return self.now if clock is None else clock.read(self.now)

    def set_clock_rate(self, node_id: int, rate: float) -> None:
        """From now on, ``node_id``'s clock runs at ``rate`` (1.0: true time)."""
        if rate <= 0:
            raise ValueError("a clock rate must be positive")
        proc = self.procs[node_id]
        if proc.clock is None:
            proc.clock = NodeClock()
        proc.clock.set_rate(self.now, rate)
        self._log("clock", node_id, None, round(rate, 6))
        self._retime(proc)

    def reboot_clock(self, node_id: int, reading: float) -> None:
        """Make ``node_id``'s clock read ``reading`` now (a machine reboot restarts its
        monotonic clock; only a node that is down may see this)."""
        proc = self.procs[node_id]
        if proc.up:
            raise ValueError("a running node's monotonic clock never jumps")
        clock = proc.clock or NodeClock()
        proc.clock = NodeClock(clock.rate, self.now, reading)

    def _local(self, proc: _Process) -> float:
        clock = proc.clock
        return self.now if clock is None else clock.read(self.now)

    def _retime(self, proc: _Process) -> None:
        # The pending timer was converted at the old rate: tick now, and the node's
        # deadline is converted again at the new one.
        if proc.up and proc.node is not None:
            proc.tick_at = self.now
            self._push(self.now, _TICK, proc.node_id, proc.incarnation, None)

    def stale_ballot_counts(self) -> dict[str, int]:
        """Stale-ballot messages received per message type: crashed incarnations'
        counts plus the live nodes' (see ``Replica.stale_ballot``)."""
        total = dict(self.stale_ballot)
        for proc in self.procs.values():
            for name, count in _stale_counts(proc.node).items():
                total[name] = total.get(name, 0) + count
        return total

    # -- faults --------------------------------------------------------------------

    def crash(self, node_id: int, keep_unsynced: int | None = None) -> None:
        """Crash a node: it loses its memory, its unsynced writes and pending sends.

        ``keep_unsynced`` writes of the unsynced ones survive (default: none, or a random
        prefix when ``torn_writes`` is on)."""
        proc = self.procs[node_id]
        if not proc.up:
            return
        if keep_unsynced is None:
            pending = len(proc.storage.unsynced)
            keep_unsynced = self.rng.randint(0, pending) if self.torn_writes and pending else 0
        for name, count in _stale_counts(proc.node).items():
            self.stale_ballot[name] = self.stale_ballot.get(name, 0) + count
        proc.up = False
        proc.node = None
        proc.incarnation += 1
        proc.storage.crash(keep=keep_unsynced)
        proc.driver = None  # with it, the sends waiting for an fsync
        proc.tick_at = None
        self._log("crash", node_id, None, None)

    def restart(self, node_id: int) -> None:
        """Restart a crashed node from its durable storage."""
        proc = self.procs[node_id]
        if proc.up:
            return
        self._log("restart", node_id, None, None)
        self._start(proc)

    def pause(self, node_id: int, duration: float) -> None:
        """Freeze a node (like SIGSTOP or a long GC pause): it keeps its memory, and every
        delivery, timer and fsync completion for it waits until it resumes."""
        proc = self.procs[node_id]
        proc.paused_until = max(proc.paused_until, self.now + duration)
        self._log("pause", node_id, None, round(duration, 6))

    def resume_all(self) -> None:
        """End every pause now."""
        for proc in self.procs.values():
            proc.paused_until = min(proc.paused_until, self.now)

    def partition(self, groups: Iterable[Iterable[int]]) -> None:
        """Nodes in different groups stop hearing each other (others unaffected)."""
        sets = [set(g) for g in groups]
        for i, a in enumerate(sets):
            for b in sets[i + 1 :]:
                for x in a:
                    for y in b:
                        self.blocked.add((x, y))
                        self.blocked.add((y, x))
        self._log("partition", None, None, [sorted(g) for g in sets])

    def block(self, src: int, dst: int) -> None:
        """Drop every message from ``src`` to ``dst`` (one direction)."""
        self.blocked.add((src, dst))

    def heal(self) -> None:
        """Remove every partition."""
        self.blocked.clear()
        self._log("heal", None, None, None)

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` at virtual time ``when`` (nemesis actions, client timers)."""
        self._push(max(when, self.now), _CALL, fn, None, None)

    # -- running -------------------------------------------------------------------

    def run(self, until: float, stop: Callable[[], bool] | None = None) -> None:
        """Process events up to virtual time ``until`` or until ``stop()`` is true."""
        queue = self._queue
        while queue and not self.stopped:
            if queue[0][0] > until:
                break
            when, _, kind, a, b, c = heapq.heappop(queue)
            self.now = when
            if kind != _CALL:
                proc = self.procs.get(a)
                if proc is not None and proc.paused_until > when:
                    self._push(proc.paused_until, kind, a, b, c)
                    continue
            if kind == _DELIVER:
                self._deliver(a, b, c)
            elif kind == _TICK:
                self._on_tick(a, b)
            elif kind == _FSYNC:
                self._on_fsync(a, b, c)
            else:
                a()
            if stop is not None and stop():
                return
        if not self.stopped:
            self.now = max(self.now, until)

    def invoke(self, node_id: int, fn: Callable[[Node], None]) -> bool:
        """Feed a live node an input now (``fn(node)``) and drive its Ready; False if down."""
        proc = self.procs[node_id]
        if not proc.up or proc.node is None or proc.paused_until > self.now:
            return False
        proc.node.tick(self._local(proc))
        fn(proc.node)
        self._drive(proc)
        return True

    def send_external(self, src: int, dst: int, msg: Message) -> None:
        """Put a message on the network on behalf of ``src`` (for harnesses)."""
        self._transmit(src, dst, msg)

    # -- internals -----------------------------------------------------------------

    def _push(self, when: float, kind: int, a: Any, b: Any, c: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, kind, a, b, c))

    def _log(self, kind: str, a: Any, b: Any, detail: Any) -> None:
        if self.tracing:
            self.trace.append((self.now, kind, a, b, detail))
        if self.tap is not None:
            self.tap((self.now, kind, a, b, detail))

    def _start(self, proc: _Process) -> None:
        node_rng = random.Random(self.rng.getrandbits(64))
        local = self._local(proc)
        proc.node = proc.factory(proc.node_id, proc.storage, node_rng, local)
        proc.up = True
        proc.paused_until = 0.0
        proc.driver = ReadyDriver(
            _SimEffects(self, proc), proc.node, ack_before_sync=self.ack_before_sync
        )
        proc.tick_at = None
        proc.node.tick(local)
        self._drive(proc)

    def _deliver(self, dst: int, msg: Message, incarnation: int | None) -> None:
        proc = self.procs.get(dst)
        if (
            proc is None
            or not proc.up
            or proc.node is None
            or (incarnation is not None and proc.incarnation != incarnation)
        ):
            self.stats["dropped"] += 1
            self._log("lost", getattr(msg, "src", None), dst, msg)
            return
        self.stats["delivered"] += 1
        self._log("recv", getattr(msg, "src", None), dst, msg)
        proc.node.tick(self._local(proc))
        proc.node.step(msg)
        self._drive(proc)

    def _on_tick(self, node_id: int, incarnation: int) -> None:
        proc = self.procs[node_id]
        if not proc.up or proc.node is None or proc.incarnation != incarnation:
            return
        proc.tick_at = None
        if self.tap is not None:
            self.tap((self.now, "tick", node_id, None, None))
        proc.node.tick(self._local(proc))
        self._drive(proc)

    def _drive(self, proc: _Process) -> None:
        assert proc.driver is not None
        proc.driver.drive()
        if self.tap is not None:
            self.tap((self.now, "ready", proc.node_id, None, None))

    def _wake_at(self, proc: _Process, deadline: float | None) -> None:
        if deadline is not None and proc.clock is not None:
            deadline = proc.clock.when(deadline)  # the node's time -> virtual time
        if deadline is not None and (proc.tick_at is None or deadline < proc.tick_at):
            proc.tick_at = deadline
            self._push(max(deadline, self.now), _TICK, proc.node_id, proc.incarnation, None)

    def _save_snapshot(self, proc: _Process, slot: int, data: bytes) -> None:
        driver = proc.driver
        assert driver is not None
        if self.torn_writes and self.rng.random() < 0.05:
            self._log("snapshot-fail", proc.node_id, None, slot)
            driver.snapshot_failed(slot)  # changes nothing: no compaction
            return
        proc.storage.save_snapshot(slot, data)
        proc.storage.compact(slot)
        self.stats["snapshots"] = self.stats.get("snapshots", 0) + 1
        self.stats["max_log_entries"] = max(
            self.stats.get("max_log_entries", 0), len(proc.storage.accepted)
        )
        driver.snapshot_saved(slot)

    def _start_fsync(self, proc: _Process) -> None:
        assert proc.driver is not None
        latency = self.rng.uniform(*self.disk_latency)
        target = proc.driver.written
        self._push(self.now + latency, _FSYNC, proc.node_id, proc.incarnation, target)

    def _on_fsync(self, node_id: int, incarnation: int, target: int) -> None:
        proc = self.procs[node_id]
        if not proc.up or proc.incarnation != incarnation or proc.driver is None:
            return
        if self.fsync_fault is not None and self.fsync_fault(node_id):
            self._log("fsync-fail", node_id, None, None)
            self.crash(node_id)
            return
        proc.storage.sync(target - proc.driver.synced)
        entries = len(proc.storage.accepted)
        if entries > self.stats.get("max_log_entries", 0):
            self.stats["max_log_entries"] = entries
        self.stats["fsyncs"] += 1
        proc.driver.fsync_done()

    def _transmit(self, src: int, dst: int, msg: Message) -> None:
        self.stats["sent"] += 1
        if self.tap is not None:
            self.tap((self.now, "send", src, dst, msg))
        for observe in self.send_observers:
            observe(src, msg)
        proc = self.procs.get(dst)
        incarnation = proc.incarnation if proc is not None else -1
        if src == dst:
            self._push(self.now, _DELIVER, dst, msg, incarnation)
            return
        if (src, dst) in self.blocked:
            self.stats["dropped"] += 1
            self._log("drop", src, dst, msg)
            return
        f = self.faults
        rng = self.rng
        if f.drop and rng.random() < f.drop:
            self.stats["dropped"] += 1
            self._log("drop", src, dst, msg)
            return
        copies = 1
        if f.dup and rng.random() < f.dup:
            copies = 2
            self.stats["duplicated"] += 1
            if self.tap is not None:
                self.tap((self.now, "dup", src, dst, msg))
        for copy in range(copies):
            delay = rng.uniform(f.min_delay, f.max_delay)
            if f.long_delay and rng.random() < f.long_delay:
                delay = rng.uniform(*f.long_delay_range)
            late = f.late_dup if copy else f.stale_delay
            if late and rng.random() < late:
                # Held for several election timeouts (a sender's queue across the
                # receiver's restart, a replay): no FIFO order holds for it, and it
                # reaches whichever incarnation of the receiver is up by then.
                self.stats["stale_delayed"] += 1
                when = self.now + rng.uniform(*f.stale_delay_range)
                self._push(when, _DELIVER, dst, msg, None)
                continue
            when = self.now + delay
            if not f.reorder:
                link = (src, dst)
                when = max(when, self._link_last.get(link, 0.0))
                self._link_last[link] = when
            self._push(when, _DELIVER, dst, msg, incarnation)


class _SimEffects:
    """The simulator's side of the Ready driver (``pyxos.driver.Effects``) for one
    node incarnation: its simulated disk, the simulated network, virtual timers."""

    def __init__(self, sim: Simulator, proc: _Process) -> None:
        self.sim = sim
        self.proc = proc

    def write(self, persist: Persist) -> None:
        """Unsynced until the next fsync completes."""
        self.proc.storage.write(persist)
        if self.sim.tap is not None:
            self.sim.tap((self.sim.now, "persist", self.proc.node_id, None, persist))

    def start_fsync(self) -> None:
        """Completes after a random disk latency (an event)."""
        self.sim._start_fsync(self.proc)

    def send(self, send: Send) -> None:
        """Onto the simulated network."""
        src = self.proc.node_id
        for dst in send.to:
            self.sim._transmit(src, dst, send.msg)

    def committed(self, entries: list[Entry]) -> None:
        """To the safety checkers."""
        sim = self.sim
        src = self.proc.node_id
        sim._log("commit", src, None, entries)
        for observe in sim.observers:
            observe(src, entries)

    def save_snapshot(self, slot: int, data: bytes) -> None:
        """Written at once (or failed, with disk faults on)."""
        self.sim._save_snapshot(self.proc, slot, data)

    def checkpoint(self) -> int | None:
        """Nothing to truncate: the memory storage compacts as the snapshot lands."""
        return None

    def truncate(self, index: int) -> None:
        """Never asked (no checkpoints)."""

    def wake_at(self, deadline: float | None) -> None:
        """A tick event at the virtual time the node's clock shows ``deadline``."""
        self.sim._wake_at(self.proc, deadline)

    def fail(self, error: BaseException) -> None:
        """A storage error stops the node, as in the server."""
        self.sim._log("storage-fail", self.proc.node_id, None, repr(error))
        self.sim.crash(self.proc.node_id)


def _stale_counts(node: Node | None) -> dict[str, int]:
    counts = getattr(node, "stale_ballot", None)
    return counts if isinstance(counts, dict) else {}


def format_trace(trace: Iterable[TraceEvent], limit: int | None = None) -> str:
    """Render a trace as readable lines (the last ``limit`` events when given)."""
    events = list(trace)
    if limit is not None and len(events) > limit:
        skipped = len(events) - limit
        events = events[-limit:]
        lines = [f"... {skipped} earlier events not shown"]
    else:
        lines = []
    for when, kind, a, b, detail in events:
        ms = f"{when * 1000:10.3f}ms"
        if kind in ("recv", "drop", "lost"):
            lines.append(f"{ms} {kind:<9} {a}->{b} {_short(detail)}")
        elif kind == "commit":
            lines.append(f"{ms} {kind:<9} node {a}: {_short(detail)}")
        elif kind in ("crash", "restart"):
            lines.append(f"{ms} {kind:<9} node {a}")
        else:
            lines.append(f"{ms} {kind:<9} {_short(detail) if detail is not None else ''}".rstrip())
    return "\n".join(lines)


def _short(obj: Any, width: int = 160) -> str:
    text = repr(obj)
    return text if len(text) <= width else text[: width - 3] + "..."
