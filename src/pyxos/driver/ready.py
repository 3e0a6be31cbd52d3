"""The Ready driver: carries out a pure node's ``Ready`` in the order that makes it safe.

Theory of operation
-------------------
The core performs no I/O (docs/architecture.md, *The core's contract*): after each
input its driver calls ``ready()`` and must persist, send, apply and snapshot in a
fixed order, then ``advance()``. That order, and group commit, are what make an
acknowledgement mean "durable on a quorum" (docs/architecture.md, *Storage* and
*Server runtime*). This module is the one place that order is written down. The
server (asyncio, a real WAL, sockets) and the simulator (virtual time, simulated
disk and network) both run it; each supplies only the effects, through
:class:`Effects`, so every simulator seed checks the very driver the server runs.
It is pure like the core: no asyncio, no clock, no threads; it only counts and
orders, and the host reports back when an fsync or a snapshot write completes.

``drive()`` carries out one ``Ready``:

1. ``persist`` is written (``Effects.write``: appended, not yet durable) and numbered
   ``written``, unless all it holds is the chosen watermark (a hint, safe to lose:
   ``core/ready.py``): that record starts no fsync and holds back no reply, and the
   next fsync makes it durable with the rest (a leader at one client did two fsyncs
   per command, one of them for the watermark, and each follower one per Commit:
   bench/profiles/);
2. ``send_now`` leaves at once (a proposer's Accept, Commit, Decided);
3. ``send_after_sync`` leaves at once only if everything written is already durable
   and nothing older waits; otherwise it waits, tagged with ``written``, until an
   fsync covering that write completes (FIFO: replies never overtake each other). A
   leader's own Accepted is one of these, addressed to itself: it counts its own vote
   only once it is durable;
4. ``committed`` goes to ``Effects.committed`` (the service node applied it already and
   put its client replies in ``send_now``);
5. the fsync starts if none is in flight;
6. ``advance()``; then the snapshot, if the node handed one over, is written
   (``Effects.save_snapshot``), and the node's next deadline goes to
   ``Effects.wake_at``.

Group commit: at most ONE fsync is in flight. It covers every write issued before it
started, so when the host reports it done (``fsync_done``) ``synced`` becomes the
``written`` count captured at its start; the waiting sends up to there leave, and if
more was written meanwhile the next fsync starts at once, covering all of that. Under
load each fsync thus covers whatever accumulated during the previous one.

A host may hold the next fsync back for a moment (``hold_fsync``, then
``release_fsync``): the server does so while it carries out what a reported fsync
released, so that the next one starts where it did before it reported that fsync one
event-loop pass sooner, one pass later, covering the requests read meanwhile (bigger
groups: bench/profiles/FINDINGS.md). Holding only delays an fsync; nothing leaves
earlier.

Snapshots: one write at a time; a snapshot handed over meanwhile replaces any other
waiting one (the newest covers more). Once the host reports it durable
(``snapshot_saved``) the node may compact below it (``snapshot_durable``), and then, if
the WAL has a sealed segment, the whole acceptor state is written again as a
checkpoint (``Effects.checkpoint``), numbered like any write: once the fsync covering
it completes, the segments before it go (``Effects.truncate``). A snapshot that fails
to write changes nothing; the node takes another later.

Failure: an error of a storage effect (``write``, ``start_fsync``, ``checkpoint``,
``truncate``, or a failed fsync reported by the host) is fatal. After fsyncgate a node
must never carry on as if the write were durable: the driver stops (``failed``),
calls ``Effects.fail`` once and does nothing more. One exception: a log that ran out
of space keeps every record it could not make durable (``storage/wal.py``,
``WALDiskFull``); the host then reports ``fsync_postponed`` (nothing more is durable,
nothing waiting leaves) and later ``retry_fsync`` (the server's disk-full handling,
``server/diskfull.py``).

``ack_before_sync`` is a deliberately broken driver for the simulator's mutation test
(acceptor replies leave before the fsync): the checks must catch it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

from pyxos.core.messages import Entry
from pyxos.core.ready import Node, Persist, Send

__all__ = ["DriverCounters", "Effects", "ReadyDriver"]


class Effects(Protocol):
    """What a host (the server, the simulator) does for the driver."""

    def write(self, persist: Persist) -> None:
        """Append ``persist`` to the log; durable only once a later fsync completes.
        Raising is fatal."""
        ...

    def start_fsync(self) -> None:
        """Start one fsync covering every write so far; report its end with
        ``fsync_done()`` or ``fsync_failed(error)`` (possibly before returning).
        Raising is fatal."""
        ...

    def send(self, send: Send) -> None:
        """Deliver ``send`` (to peers, clients, or back to this node as a new input)."""
        ...

    def committed(self, entries: list[Entry]) -> None:
        """Chosen entries, in slot order, just applied (for observers)."""
        ...

    def save_snapshot(self, slot: int, data: bytes) -> None:
        """Start writing a snapshot durably; report its end with ``snapshot_saved`` or
        ``snapshot_failed`` (possibly before returning)."""
        ...

    def checkpoint(self) -> int | None:
        """If the log has a sealed segment, write the whole acceptor state again and
        return the log index it starts at (the segments before it may go once it is
        durable); None: nothing to truncate. Raising is fatal."""
        ...

    def truncate(self, index: int) -> None:
        """Delete the log segments before ``index`` (a checkpoint is durable). Raising
        is fatal."""
        ...

    def wake_at(self, deadline: float | None) -> None:
        """The node wants ``tick`` again by ``deadline`` (its own clock), if any."""
        ...

    def fail(self, error: BaseException) -> None:
        """A fatal error: stop the node (called once)."""
        ...


@dataclass(slots=True)
class DriverCounters:
    """What the driver did (monotonic counters, for status and tests)."""

    readies: int = 0
    """Non-empty ``Ready`` values carried out."""
    fsyncs: int = 0
    """Completed fsyncs (each covering every record written before it started)."""
    snapshots: int = 0
    """Snapshots written durably."""


class ReadyDriver:
    """Drives one pure node's ``Ready`` through a host's :class:`Effects`.

    One driver per node incarnation: a restart starts a new one. ``fatal`` names the
    exceptions of the storage effects that stop the node (anything else is a bug and
    propagates to the host).
    """

    def __init__(
        self,
        effects: Effects,
        node: Node | None = None,
        *,
        counters: DriverCounters | None = None,
        fatal: tuple[type[BaseException], ...] = (Exception,),
        ack_before_sync: bool = False,
    ) -> None:
        self.effects = effects
        self.node = node
        """The node being driven (set before the first ``drive``)."""
        self.counters = counters if counters is not None else DriverCounters()
        self.fatal = fatal
        self.ack_before_sync = ack_before_sync
        # Group commit. Invariant: synced <= written; fsync_in_flight iff the host runs
        # one, covering the writes up to _fsync_target.
        self.written = 0
        """Writes issued (``persist`` records and checkpoints)."""
        self.synced = 0
        """Writes durable: every one up to here is covered by a completed fsync."""
        self.fsync_in_flight = False
        self._fsync_target = 0
        self.waiting: deque[tuple[int, list[Send]]] = deque()
        """(writes that must be durable first, sends) in issue order."""
        self.truncate_at: tuple[int, int] | None = None
        """(write number of a checkpoint, its first log index): truncate once synced."""
        self.snapshot_in_flight = False
        self.snapshot_next: tuple[int, bytes] | None = None
        """A snapshot handed over while another was being written (the newest wins)."""
        self.closed = False
        """No fsync or snapshot starts any more (the host is shutting down)."""
        self.fsync_held = False
        """No fsync starts until ``release_fsync`` (see ``hold_fsync``)."""
        self.failed: BaseException | None = None
        """The fatal error that stopped the driver, if any."""

    # -- inputs from the host --------------------------------------------------------

    def drive(self) -> None:
        """Carry out the node's current ``Ready`` (see the module docstring), then
        ``advance()``."""
        if self.failed is not None:
            return
        node = self.node
        assert node is not None, "no node to drive"
        effects = self.effects
        r = node.ready()
        if r:
            self.counters.readies += 1
            persist = r.persist
            if persist:
                try:
                    effects.write(persist)
                except self.fatal as e:
                    self._fail(e)
                    return
                if (
                    persist.accepted
                    or persist.promised is not None
                    or persist.fences
                    or persist.rebuilt >= 0
                ):
                    self.written += 1
                # else only the chosen watermark: a hint, safe to lose; no fsync for it
            for send in r.send_now:
                effects.send(send)
            if r.send_after_sync:
                if (self.synced >= self.written and not self.waiting) or self.ack_before_sync:
                    for send in r.send_after_sync:
                        effects.send(send)
                else:
                    self.waiting.append((self.written, list(r.send_after_sync)))
            if r.committed:
                effects.committed(r.committed)
            self._start_fsync()
            if self.failed is not None:
                return
        snapshot = r.snapshot
        node.advance()
        if snapshot is not None:
            self._save_snapshot(*snapshot)
            if self.failed is not None:
                return
        effects.wake_at(node.next_deadline())

    def fsync_done(self) -> None:
        """The fsync in flight completed: everything written before it is durable."""
        if self.failed is not None or not self.fsync_in_flight:
            return
        self.fsync_in_flight = False
        self.counters.fsyncs += 1
        target = self._fsync_target
        self.synced = target
        if self.truncate_at is not None and self.truncate_at[0] <= target:
            index = self.truncate_at[1]
            self.truncate_at = None
            try:
                self.effects.truncate(index)
            except self.fatal as e:
                self._fail(e)
                return
        waiting = self.waiting
        while waiting and waiting[0][0] <= target:
            _, sends = waiting.popleft()
            for send in sends:
                self.effects.send(send)
        self._start_fsync()

    def fsync_failed(self, error: BaseException) -> None:
        """The fsync in flight failed: fatal (the pages may have been dropped)."""
        self.fsync_in_flight = False
        self._fail(error)

    def fsync_postponed(self) -> None:
        """The fsync in flight could not complete, but the log kept every record to
        write again (a full disk): nothing more is durable and nothing waiting leaves;
        the next ``retry_fsync`` (or any later fsync) covers it all."""
        self.fsync_in_flight = False

    def hold_fsync(self) -> None:
        """Start no fsync until ``release_fsync`` (one is wanted meanwhile: it waits)."""
        self.fsync_held = True

    def release_fsync(self) -> None:
        """End a ``hold_fsync``: the fsync wanted meanwhile, if any, starts now."""
        self.fsync_held = False
        self._start_fsync()

    def retry_fsync(self) -> None:
        """Start the fsync a ``fsync_postponed`` left undone (if none is in flight)."""
        self._start_fsync()

    def snapshot_saved(self, slot: int) -> None:
        """The snapshot of ``slot`` is durable: the node may compact below it."""
        self.snapshot_in_flight = False
        if self.closed or self.failed is not None:
            return
        self.counters.snapshots += 1
        durable = getattr(self.node, "snapshot_durable", None)
        if durable is not None:
            durable(slot)
        self._checkpoint()
        if self.failed is None and self.snapshot_next is not None:
            self._save_snapshot(*self.snapshot_next)

    def snapshot_failed(self, slot: int) -> None:
        """The snapshot of ``slot`` was not written: nothing changes (no compaction)."""
        self.snapshot_in_flight = False
        if self.closed or self.failed is not None:
            return
        failed = getattr(self.node, "snapshot_failed", None)
        if failed is not None:
            failed(slot)
        if self.snapshot_next is not None:
            self._save_snapshot(*self.snapshot_next)

    def close(self) -> None:
        """Start no more fsyncs or snapshots (the host shuts down)."""
        self.closed = True

    def wrote(self) -> None:
        """The host wrote a record outside ``persist`` that must become durable in
        time (a ``LEARNED`` record, ``storage.durable``): it is counted as a write, so
        an fsync starts for it (nothing waits on it)."""
        self.written += 1

    def waiting_sends(self) -> int:
        """Messages waiting for an fsync."""
        return sum(len(sends) for _, sends in self.waiting)

    # -- internals -------------------------------------------------------------------

    def _start_fsync(self) -> None:
        if self.fsync_in_flight or self.synced >= self.written or self.closed:
            return
        if self.fsync_held:
            return
        if self.failed is not None:
            return
        self.fsync_in_flight = True
        self._fsync_target = self.written
        try:
            self.effects.start_fsync()
        except self.fatal as e:
            self.fsync_in_flight = False
            self._fail(e)

    def _save_snapshot(self, slot: int, data: bytes) -> None:
        self.snapshot_next = (slot, data)
        if self.snapshot_in_flight or self.closed:
            return
        self.snapshot_next = None
        self.snapshot_in_flight = True
        self.effects.save_snapshot(slot, data)

    def _checkpoint(self) -> None:
        if self.truncate_at is not None:
            return  # one at a time; the next snapshot tries again
        try:
            first = self.effects.checkpoint()
        except self.fatal as e:
            self._fail(e)
            return
        if first is None:
            return
        self.written += 1
        self.truncate_at = (self.written, first)
        self._start_fsync()

    def _fail(self, error: BaseException) -> None:
        if self.failed is not None:
            return
        self.failed = error
        self.effects.fail(error)
