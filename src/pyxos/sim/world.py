"""The deterministic simulator: one seeded RNG, virtual time, node clocks, an event queue.

Theory of operation
-------------------
The simulator is a driver of pure nodes (anything with the core's ``step / tick /
ready / advance / next_deadline`` contract). It owns virtual time, every node's clock
and the only random number generator; nodes receive their own ``random.Random`` seeded from it.
Everything that happens is an event in one priority queue ordered by (virtual time,
sequence number), so a seed replays exactly, event for event.

Storage is the real thing: every process has a data directory on its own
:class:`~pyxos.storage.simfs.SimFileSystem`, opened at each start with
:func:`~pyxos.storage.durable.open_node_storage`, exactly as the server opens its own
(node marker; the WAL recovered, or started over for a rebuild when it is corrupt or
gone; the newest valid snapshot). The node factory builds the node from what that
recovered. Driving a node after each input is the server's own Ready driver
(:class:`~pyxos.driver.ReadyDriver`, one per node incarnation): the simulator only
supplies its effects (``_SimEffects``), so every seed checks the driver the server
runs, and models the overlap of fsync and sending faithfully:

- ``persist`` is appended to the node's :class:`~pyxos.storage.durable.DurableAcceptor`
  (buffered); one ``sync`` at a time is in flight and covers every write issued
  before it started (group commit). It *starts* at once (the WAL writes and fsyncs
  inside the file system's ``deferred`` mode) and completes after a random disk
  latency (``settle``); a crash in between may keep any part of it.
- ``send_now`` messages enter the network at once.
- ``send_after_sync`` messages wait until every write issued up to their Ready is
  durable; a crash before that drops them together with the unsynced writes (the
  crash discards the driver and what waits in it).
- ``committed`` entries go to the observers (the safety checkers) at once.
- a snapshot is written to the data directory's ``snapshots/`` (temporary file,
  fsync, rename, directory fsync) before the node may compact; then, if the WAL has
  a sealed segment, the driver checkpoints the acceptor state and the segments before
  it are deleted once the checkpoint is durable, as in the server.

A crash is a power loss: the file system keeps what was durable, and with disk faults
on (``torn_writes``) a random part of the rest (torn, reordered sectors). A storage
error (a failed fsync or write, a full disk) stops the node, as it must after
fsyncgate: the process ends, the machine and its page cache stay up.
``ack_before_sync`` is a deliberately broken driver, for the mutation test: it sends
acceptor replies before the fsync.

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
from pathlib import Path
from typing import Any

from pyxos.core.messages import Entry, Message
from pyxos.core.ready import Node, Persist, Send
from pyxos.driver import ReadyDriver
from pyxos.storage.durable import DurableAcceptor, DurableStateError, NodeStorage, open_node_storage
from pyxos.storage.simfs import SimFileSystem
from pyxos.storage.snapshot import prune_snapshots, write_snapshot
from pyxos.storage.wal import WAL, StorageError

__all__ = [
    "DATA_DIR",
    "SNAPSHOT_DIR",
    "NetworkFaults",
    "NodeClock",
    "NodeFactory",
    "Simulator",
    "TraceEvent",
    "format_trace",
]

NodeFactory = Callable[[int, NodeStorage, random.Random, float], Node]
"""Builds a node from (node id, what its storage recovered, its RNG, its start time)."""

DATA_DIR = Path("/data")
"""Every simulated node's data directory, on its own simulated file system."""
SNAPSHOT_DIR = DATA_DIR / "snapshots"
CLUSTER_ID = "sim"
SEGMENT_BYTES = 32 * 1024
"""Small WAL segments, so that a run rolls, checkpoints and truncates its logs."""
_STORAGE_ERRORS = (OSError, StorageError, DurableStateError)

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
    crash_lost: float = 0.0
    """Probability that a message a node sent, and the network has not delivered yet,
    is lost when the node loses power (it was still in the machine's send queue)."""
    crash_held: float = 0.0
    """Probability that such a message is held back instead, for ``crash_held_range``
    (in a switch's buffer, on a path that is failing over): it arrives after its
    sender has restarted, and maybe rebuilt its state."""
    crash_held_range: tuple[float, float] = (0.04, 0.2)


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
    fs: SimFileSystem
    durable: DurableAcceptor | None = None
    storage: NodeStorage | None = None
    """What the storage recovered at the last start."""
    initialize: bool = True
    """The next start may initialize an empty data directory (``--init``)."""
    rebuilding: bool = False
    """The node was rebuilding its acceptor state when last seen."""
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
        self.fsync_observers: list[Callable[[int], None]] = []
        """Called with the node id after each of its fsyncs completed and the node was
        driven (what waited for that fsync has been sent)."""
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
        """Crashes keep a random part of the unsynced writes (disk faults)."""
        self.fsync_fault: Callable[[int, Path], bool] | None = None
        """Asked with (node, path) at every fsync; True makes that fsync fail (EIO)."""
        self.ack_before_sync = False
        """Broken driver for the mutation test: replies leave before the fsync."""
        self.wal_class: type[WAL] = WAL
        """The WAL implementation every node runs (the storage mutants replace it)."""

    # -- setup ---------------------------------------------------------------------

    def add_node(self, node_id: int, factory: NodeFactory, *, crashable: bool = True) -> None:
        """Add a process and start it now."""
        if node_id in self.procs:
            raise ValueError(f"node {node_id} exists")
        fs = SimFileSystem()
        fs.fsync_fault = self._fsync_hook(node_id)
        proc = _Process(node_id, factory, fs, crashable=crashable)
        self.procs[node_id] = proc
        self._start(proc)

    def _fsync_hook(self, node_id: int) -> Callable[[Path], bool]:
        def hook(path: Path) -> bool:
            return self.fsync_fault is not None and self.fsync_fault(node_id, path)

        return hook

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

    def crash(self, node_id: int) -> None:
        """Power loss: the node loses its memory, its pending sends and whatever its
        disk had not made durable (with ``torn_writes``, a random part of that
        survives, torn and reordered). Also for a node that is already down."""
        proc = self.procs[node_id]
        if proc.up:
            self._stop(proc, power_loss=True)
            self._log("crash", node_id, None, None)
            self._strand(node_id)
        proc.fs.power_loss(self.rng if self.torn_writes else None)

    def wipe_init(self, node_id: int) -> None:
        """The operator wipes a down node's whole data directory; its next start has the
        bootstrap flag (``--init``), the command line it was first started with, so its
        disk looks exactly like a brand-new node's."""
        proc = self.procs[node_id]
        if proc.up:
            raise ValueError("wipe the data directory of a node that is down")
        proc.fs.wipe(DATA_DIR)
        proc.initialize = True
        self._log("wipe-init", node_id, None, None)

    def _strand(self, node_id: int) -> None:
        """What becomes of the messages a node that just lost power had sent and the
        network has not delivered yet (``crash_lost``, ``crash_held``): each is lost,
        held back for ``crash_held_range``, or delivered as it would have been."""
        f = self.faults
        if not (f.crash_lost or f.crash_held):
            return
        mine = sorted(
            (e for e in self._queue if e[2] == _DELIVER and _sender(e[4]) == node_id),
            key=lambda e: e[1],
        )
        if not mine:
            return
        gone: set[int] = set()
        held: list[tuple[float, Any, Any, Any]] = []
        for _, seq, _, dst, msg, incarnation in mine:
            if dst == node_id:
                continue  # to itself: the crash already dropped it
            roll = self.rng.random()
            if roll < f.crash_lost:
                gone.add(seq)
                self.stats["dropped"] += 1
                self._log("drop", node_id, dst, msg)
            elif roll < f.crash_lost + f.crash_held:
                gone.add(seq)
                when = self.now + self.rng.uniform(*f.crash_held_range)
                held.append((when, dst, msg, incarnation))
                self.stats["crash_held"] = self.stats.get("crash_held", 0) + 1
                self._log("held", node_id, dst, (round(when, 6), msg))
        if gone:
            self._queue[:] = [e for e in self._queue if e[1] not in gone]  # run() holds it
            heapq.heapify(self._queue)
        for when, dst, msg, incarnation in held:
            self._push(when, _DELIVER, dst, msg, incarnation)

    def in_flight(self, node_id: int) -> list[tuple[float, int, Message]]:
        """The messages ``node_id`` sent to others that the network has not delivered
        yet, as (when due, destination, message), in the order they were sent."""
        return [
            (e[0], e[3], e[4])
            for e in sorted(self._queue, key=lambda e: e[1])
            if e[2] == _DELIVER and e[3] != node_id and _sender(e[4]) == node_id
        ]

    def writes_in_flight(self, node_id: int) -> bool:
        """True if the node issued writes that are not durable yet."""
        driver = self.procs[node_id].driver
        return driver is not None and driver.synced < driver.written

    def rebuilding(self, node_id: int) -> bool:
        """True if the node is rebuilding its acceptor state or bootstrapping (as last
        seen, when down): it has no trustworthy acceptor state and does not vote."""
        proc = self.procs[node_id]
        replica = getattr(proc.node, "replica", None)
        if replica is not None:
            proc.rebuilding = bool(replica.rebuilding)
        return proc.rebuilding

    def _stop(self, proc: _Process, *, power_loss: bool = False) -> None:
        """The process ends; unless the power goes too, its machine, disk and page cache
        stay (and the fsyncs it started complete)."""
        self.rebuilding(proc.node_id)
        for name, count in _stale_counts(proc.node).items():  # the incarnation's counts
            self.stale_ballot[name] = self.stale_ballot.get(name, 0) + count
        proc.up = False
        proc.node = None
        proc.durable = None
        proc.storage = None
        proc.incarnation += 1
        proc.driver = None  # with it, the sends waiting for an fsync
        proc.tick_at = None
        if not power_loss:
            proc.fs.stop()

    def _fail(self, proc: _Process, error: BaseException) -> None:
        """A storage error is fatal: the node stops (it restarts and recovers later)."""
        self._log("disk-fail", proc.node_id, None, repr(error))
        self.stats["disk_failures"] = self.stats.get("disk_failures", 0) + 1
        self._stop(proc)

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
        try:
            storage = open_node_storage(
                DATA_DIR,
                CLUSTER_ID,
                proc.node_id,
                initialize=proc.initialize,
                snapshot_dir=SNAPSHOT_DIR,
                segment_bytes=SEGMENT_BYTES,
                fs=proc.fs,
                wal_class=self.wal_class,
            )
        except _STORAGE_ERRORS as e:
            self._log("start-fail", proc.node_id, None, repr(e))
            proc.fs.stop()
            return
        if storage.lost is not None:
            self._log("rebuild", proc.node_id, None, storage.lost)
        elif storage.state.report is not None and storage.state.report.torn_tail:
            self.stats["torn_tails"] = self.stats.get("torn_tails", 0) + 1
        proc.initialize = False
        proc.storage = storage
        proc.durable = storage.durable
        proc.rebuilding = storage.state.needs_rebuild or storage.state.bootstrapping
        proc.node = proc.factory(proc.node_id, storage, node_rng, local)
        proc.up = True
        proc.paused_until = 0.0
        proc.driver = ReadyDriver(
            _SimEffects(self, proc),
            proc.node,
            fatal=_STORAGE_ERRORS,
            ack_before_sync=self.ack_before_sync,
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
        try:
            write_snapshot(SNAPSHOT_DIR, slot, b"", data, fs=proc.fs)
            prune_snapshots(SNAPSHOT_DIR, keep=2, fs=proc.fs)
        except _STORAGE_ERRORS as e:
            # As in the server: a failed snapshot changes nothing (no compaction).
            self._log("snapshot-fail", proc.node_id, None, repr(e))
            driver.snapshot_failed(slot)
            return
        self.stats["snapshots"] = self.stats.get("snapshots", 0) + 1
        driver.snapshot_saved(slot)
        self._note_log_size(proc)

    def _checkpoint(self, proc: _Process) -> int | None:
        replica = getattr(proc.node, "replica", None)
        durable = proc.durable
        if replica is None or durable is None or durable.segments < 2:
            return None
        acceptor = replica.acceptor
        first: int = durable.checkpoint(
            acceptor.promised, acceptor.accepted.values(), replica.first_unchosen
        )
        return first

    def _truncate(self, proc: _Process, index: int) -> None:
        assert proc.durable is not None
        deleted = proc.durable.truncate_before(index)
        self.stats["wal_segments_deleted"] = self.stats.get("wal_segments_deleted", 0) + deleted

    def _note_log_size(self, proc: _Process) -> None:
        replica = getattr(proc.node, "replica", None)
        acceptor = getattr(replica if replica is not None else proc.node, "acceptor", None)
        if acceptor is not None:
            entries = len(acceptor.accepted)
            if entries > self.stats.get("max_log_entries", 0):
                self.stats["max_log_entries"] = entries

    def _start_fsync(self, proc: _Process) -> None:
        """The WAL writes and fsyncs at once, inside the file system's ``deferred``
        mode (a failure raises here: fatal); the fsync completes after a random disk
        latency."""
        assert proc.driver is not None and proc.durable is not None
        with proc.fs.deferred():
            proc.durable.sync()
        latency = self.rng.uniform(*self.disk_latency)
        self._push(self.now + latency, _FSYNC, proc.node_id, proc.incarnation, None)

    def _on_fsync(self, node_id: int, incarnation: int, _: Any) -> None:
        proc = self.procs[node_id]
        if not proc.up or proc.incarnation != incarnation or proc.driver is None:
            return
        proc.fs.settle()
        self.stats["fsyncs"] += 1
        self._note_log_size(proc)
        proc.driver.fsync_done()
        for observe in self.fsync_observers:
            observe(node_id)

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
        """Appended to the node's real WAL (buffered)."""
        assert self.proc.durable is not None
        self.proc.durable.write(persist)
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
        """Written at once to the simulated disk (temporary file, fsync, rename)."""
        self.sim._save_snapshot(self.proc, slot, data)

    def checkpoint(self) -> int | None:
        """The acceptor state written again once the WAL has a sealed segment."""
        return self.sim._checkpoint(self.proc)

    def truncate(self, index: int) -> None:
        """The WAL segments before ``index`` deleted."""
        self.sim._truncate(self.proc, index)

    def wake_at(self, deadline: float | None) -> None:
        """A tick event at the virtual time the node's clock shows ``deadline``."""
        self.sim._wake_at(self.proc, deadline)

    def fail(self, error: BaseException) -> None:
        """A storage error stops the node, as in the server."""
        self.sim._fail(self.proc, error)


def _sender(msg: Any) -> Any:
    return getattr(msg, "src", None)


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
