"""The server's side of the Ready driver: a real WAL, its fsync thread, snapshot files.

Theory of operation
-------------------
The order in which a ``Ready`` is carried out is ``pyxos.driver.ReadyDriver``'s, the
same object the simulator runs (docs/architecture.md, *The core's contract*). This
module is only its effects (``pyxos.driver.Effects``) on real storage:

- ``write`` appends to the WAL (``DurableAcceptor.write``: buffered only);
- ``start_fsync`` first writes what the pass sent, then runs ``DurableAcceptor.sync``
  in the node's one fsync thread on a busy leader, on the loop thread itself on a
  follower and on a leader that is all but idle (one small write to sync, no other
  proposal in flight: one client); at most one is in flight (group commit), and its
  end goes back to the driver on the event loop (``fsync_done`` or, fatally,
  ``fsync_failed``: the WAL then refuses every later call and the node stops). The
  thread reports with one ``call_soon_threadsafe``; what the report released to the
  node itself (a leader's own Accepted) is fed at once (``after_fsync``);
- ``save_snapshot`` writes the file in a thread of its own
  (``storage.snapshot.write_snapshot``: temporary file, fsync, rename, directory
  fsync), keeps the newest two, and reports back (``snapshot_saved`` /
  ``snapshot_failed``);
- ``checkpoint`` rewrites the whole acceptor state once the WAL has a sealed segment,
  and ``truncate`` deletes the segments before it in the fsync thread once the driver
  saw the checkpoint durable (``DurableAcceptor.truncate_before``);
- ``send``, ``wake_at`` and ``fail`` are the node runtime's (sockets, the loop's timer,
  a fail-stop).

A full disk is the one storage error that is not fatal: an fsync that ran out of space
with the WAL still usable is ``fsync_postponed``, a snapshot that did not fit is
failed; both mark ``disk_full`` (``server.diskfull``), which pauses the node and
retries them until space returns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pyxos.core.messages import Entry
from pyxos.core.ready import Persist, Send
from pyxos.driver import DriverCounters, ReadyDriver
from pyxos.net.link import flush_pending
from pyxos.server.diskfull import DiskFull
from pyxos.server.metrics import NodeMetrics
from pyxos.server.tracefile import NodeTracer
from pyxos.storage.durable import DurableAcceptor
from pyxos.storage.snapshot import prune_snapshots, write_snapshot
from pyxos.storage.wal import is_disk_full

__all__ = ["DriverStats", "ServerEffects"]

logger = logging.getLogger("pyxos.server")


@dataclass(slots=True)
class DriverStats(DriverCounters):
    """What the driver did (monotonic counters, for status and tests): the Ready
    driver's own (``readies``, ``fsyncs``, ``snapshots``) and the runtime's."""

    inputs: int = 0
    """Input batches fed (received chunks, timer ticks, self-deliveries)."""
    leader_inline_fsyncs: int = 0
    """Fsyncs a leader did on its loop thread, all but idle (``ServerEffects.start_fsync``)."""
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


class ServerEffects:
    """The Ready driver's effects on this node's WAL, fsync thread and snapshot files.

    ``open(loop, durable)`` once the storage is open; ``close()`` at shutdown. The node
    runtime supplies ``send`` (sockets), ``wake`` (its timer) and ``fail`` (stop).
    """

    def __init__(
        self,
        node_id: int,
        snapshot_dir: Path,
        stats: DriverStats,
        metrics: NodeMetrics,
        *,
        send: Callable[[Send], None],
        wake: Callable[[float | None], None],
        fail: Callable[[BaseException], None],
    ) -> None:
        self.node_id = node_id
        self.snapshot_dir = snapshot_dir
        self.stats = stats
        self.metrics = metrics
        self._send = send
        self._wake = wake
        self._fail = fail
        self.driver: ReadyDriver | None = None
        """The driver these effects serve (set right after both exist)."""
        self.tracer: NodeTracer | None = None
        """Writes this node's side of the run (``pyxos serve --trace``); None: off."""
        self.loop: asyncio.AbstractEventLoop | None = None
        self.durable: DurableAcceptor | None = None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"pyxos-fsync-{node_id}")
        """The fsync thread (opening the storage and truncating the WAL run there too)."""
        self._snapshot_executor = ThreadPoolExecutor(
            1, thread_name_prefix=f"pyxos-snapshot-{node_id}"
        )
        self.inline_follower_fsync = True
        """A follower fsyncs on the loop thread (see ``start_fsync``)."""
        self.inline_leader_bytes = 512
        """A leader all but idle fsyncs on the loop thread too: one write to sync, holding
        at most this many bytes of values, and no other proposal in flight (one client,
        one write at a time; see ``start_fsync``). 0: never."""
        self._value_bytes = 0  # of the values written since the last fsync started
        self._inline_report = False  # an inline leader fsync released messages to itself
        self.fsync_future: concurrent.futures.Future[int] | None = None
        """The fsync running in the fsync thread (at most one: group commit)."""
        self.after_fsync: Callable[[], None] | None = None
        """Called on the loop once a thread's fsync was reported to the driver (the
        node delivers what it released to the node itself, and drives at once)."""
        self.disk_full = DiskFull(
            node_id,
            resume=lambda: wake(0.0),  # the timer fires at once: the node ticks again
            retry_fsync=lambda: self._driver.retry_fsync(),
            rewrite_snapshot=self.save_snapshot,
        )
        """Whether the disk is full; ``resume`` feeds the node again (``server.diskfull``)."""

    def open(self, loop: asyncio.AbstractEventLoop, durable: DurableAcceptor) -> None:
        """The storage is open: effects may run."""
        self.loop = loop
        self.durable = durable

    async def close(self) -> None:
        """Let the fsync in flight finish, stop the threads (a queued truncation
        finishes first), close the WAL."""
        self.disk_full.cancel()
        if self.fsync_future is not None:
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(self.fsync_future)
        self.executor.shutdown(wait=True)
        if self.durable is not None:
            self.durable.close()
        self._snapshot_executor.shutdown(wait=True)

    @property
    def _driver(self) -> ReadyDriver:
        assert self.driver is not None
        return self.driver

    def write(self, persist: Persist) -> None:
        """Append to the WAL (buffered)."""
        assert self.durable is not None
        self.durable.write(persist)
        for entry in persist.accepted:
            self._value_bytes += len(entry.value)
        if self.tracer is not None:
            self.tracer.persisted(persist)

    def start_fsync(self) -> None:
        """One fsync; its end goes back to the driver.

        A leader's runs in the fsync thread (the loop keeps taking requests and sending
        while it runs); a follower's runs right here on the loop thread and reports
        before returning (the driver's contract allows it), when ``inline_follower_fsync``
        is on: a follower has nothing else to do meanwhile that cannot wait in its socket
        buffers, and the hand-off to a thread and back (a future, two wake-ups, the GIL
        changing hands) cost it more CPU than the write itself (bench/profiles/).

        A leader that is all but idle does the same (``inline_leader_bytes``): with one
        client, one write at a time, nothing can arrive meanwhile that the fsync does not
        hold up anyway, and the thread's hand-offs were most of the leader's system calls
        and context switches per write (bench/profiles/lat-1c-strace.txt). What the fsync
        released to the leader itself is fed once the pass is carried out (``pass_done``).
        Under load (a bigger write, or other proposals in flight) the thread keeps the
        loop serving while the disk works.

        Either way what the pass sent leaves first: the followers' fsyncs then run beside
        ours, and the fsync thread does not take the GIL from their writes.
        """
        assert self.loop is not None and self.durable is not None
        value_bytes, self._value_bytes = self._value_bytes, 0
        flush_pending(self.loop)
        leading = self._leading()
        if self.inline_follower_fsync and (not leading or self._all_but_idle(value_bytes)):
            try:
                self._timed_sync()
            except Exception as e:
                self._synced(e)
            else:
                self._synced(None)
                if leading:
                    self._inline_report = True
                    self.stats.leader_inline_fsyncs += 1
            return
        future = self.executor.submit(self._timed_sync)
        self.fsync_future = future
        future.add_done_callback(self._report_from_thread)

    def _report_from_thread(self, future: concurrent.futures.Future[int]) -> None:
        # In the fsync thread: one hand-off straight to the loop. run_in_executor's
        # chained futures took two passes (copy the state into an asyncio future,
        # then call its callbacks), and its callback then queued more passes.
        loop = self.loop
        assert loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(self._on_synced, future)

    def _all_but_idle(self, value_bytes: int) -> bool:
        driver = self._driver
        replica = getattr(driver.node, "replica", None)
        return (
            replica is not None
            and value_bytes <= self.inline_leader_bytes
            and driver.written - driver.synced == 1
            and len(replica.in_flight) <= 1
        )

    def _leading(self) -> bool:
        replica = getattr(self._driver.node, "replica", None)
        return replica is None or bool(replica.is_leader)

    def _timed_sync(self) -> int:
        assert self.durable is not None
        start = time.perf_counter()
        index = self.durable.sync()
        self.metrics.fsync_seconds.observe(time.perf_counter() - start)
        return index

    def _on_synced(self, future: concurrent.futures.Future[int]) -> None:
        if self.fsync_future is future:
            self.fsync_future = None
        if future.cancelled():
            return
        error = future.exception()
        if error is not None or self.after_fsync is None:
            self._synced(error)
            return
        # What the fsync released (the leader's own Accepted) is carried out right here
        # (``after_fsync``: the node steps it and drives), and the next fsync starts one
        # pass later, where it started before this report came sooner: it then covers
        # the requests read meanwhile too (group commit; driver/ready.py).
        driver = self._driver
        driver.hold_fsync()
        self._synced(None)
        self.after_fsync()
        assert self.loop is not None
        self.loop.call_soon(driver.release_fsync)

    def _synced(self, error: BaseException | None) -> None:
        wal = getattr(self.durable, "wal", None)
        if error is not None and is_disk_full(error) and wal is not None and not wal.failed:
            self._driver.fsync_postponed()  # the WAL kept the records: retried later
            self.disk_full.enter("wal", error)
        elif error is not None:
            self._driver.fsync_failed(error)
        else:
            self._driver.fsync_done()
            self.disk_full.clear("wal")

    def pass_done(self) -> None:
        """The pass's Ready was carried out: write now what it sent
        (``net.link.flush_pending``), not a pass later; then, if a leader's inline
        fsync released messages to itself, feed them (``after_fsync``)."""
        if self.loop is not None:
            flush_pending(self.loop)
        if self._inline_report and self.after_fsync is not None:
            self._inline_report = False
            self.after_fsync()

    def send(self, send: Send) -> None:
        """To a peer, a client, or back to this node (next pass)."""
        if self.tracer is not None:
            self.tracer.sent(send)
        self._send(send)

    def committed(self, entries: list[Entry]) -> None:
        """The service node applied them and queued the replies; a value this node did
        not accept itself (learned from a peer) is logged as ``LEARNED``, so that a
        forced recovery finds every value it knew chosen (``storage.durable``). A
        trace, if one is written, records them."""
        if self.tracer is not None:
            self.tracer.committed(entries)
        replica = getattr(self._driver.node, "replica", None)
        durable = self.durable
        if replica is None or durable is None:
            return
        accepted = replica.acceptor.accepted
        learned = []
        for e in entries:
            mine = accepted.get(e.slot)
            if mine is None or mine.value != e.value:
                learned.append(e)
        if learned:
            durable.write_learned(learned)
            # Buffered until an fsync: a follower catching up by fetching writes only
            # watermarks otherwise, which start none (driver/ready.py).
            self._driver.wrote()

    def save_snapshot(self, slot: int, data: bytes) -> None:
        """Write the snapshot in the snapshot thread, keep the newest two."""
        assert self.loop is not None
        directory = self.snapshot_dir

        def write() -> None:
            write_snapshot(directory, slot, b"", data)
            prune_snapshots(directory, keep=2)

        future = self.loop.run_in_executor(self._snapshot_executor, write)
        future.add_done_callback(lambda f: self._on_snapshot_saved(slot, f, data))

    def _on_snapshot_saved(self, slot: int, future: asyncio.Future[None], data: bytes) -> None:
        driver = self._driver
        if future.cancelled() or driver.closed:
            driver.snapshot_failed(slot)
            return
        error = future.exception()
        if error is not None and is_disk_full(error):
            driver.snapshot_failed(slot)
            self.disk_full.enter("snapshot", error, (slot, data))
        elif error is not None:
            logger.error("node %d: snapshot of slot %d not written: %s", self.node_id, slot, error)
            driver.snapshot_failed(slot)
        else:
            driver.snapshot_saved(slot)
            self.disk_full.clear("snapshot")

    def checkpoint(self) -> int | None:
        """After compaction, when the WAL has a sealed segment to delete: rewrite the
        acceptor state (buffered, like any write)."""
        replica = getattr(self._driver.node, "replica", None)
        durable = self.durable
        if replica is None or durable is None or durable.segments < 2:
            return None
        acceptor = replica.acceptor
        return durable.checkpoint(
            acceptor.promised,
            acceptor.accepted.values(),
            replica.first_unchosen,
            learned_from=replica.log_start,
        )

    def truncate(self, index: int) -> None:
        """Delete the WAL segments before ``index`` in the fsync thread (the WAL
        serializes truncation with sync anyway)."""
        durable, loop = self.durable, self.loop
        if durable is None or loop is None or self._driver.closed:
            return

        def done(future: asyncio.Future[int]) -> None:
            if future.cancelled():
                return
            error = future.exception()
            if error is not None:
                self._fail(error)
            else:
                self.stats.wal_segments_deleted += future.result()

        future = loop.run_in_executor(self.executor, durable.truncate_before, index)
        future.add_done_callback(done)

    def wake_at(self, deadline: float | None) -> None:
        """The node runtime's timer."""
        self._wake(deadline)

    def fail(self, error: BaseException) -> None:
        """A storage error: the node stops."""
        self._fail(error)
