"""In-memory acceptor storage for the simulator, with the failure modes of a real disk.

Theory of operation
-------------------
A :class:`MemoryStorage` holds one node's durable acceptor state: the promised ballot,
the accepted entries and the chosen watermark. Writes land in an unsynced buffer, as
in a page cache; ``sync`` makes a prefix of them durable, as an fsync does for the
writes issued before it started. ``crash`` throws the unsynced writes away (or, when a
torn write is simulated, keeps a prefix of them), which is exactly what a power cut
does to a real disk. The state survives ``crash`` only as far as it was synced.
"""

from __future__ import annotations

from pyxos.core.ballot import ZERO, Ballot
from pyxos.core.messages import Entry
from pyxos.core.ready import FenceState, Persist

__all__ = ["MemoryStorage"]


class MemoryStorage:
    """Durable acceptor state of one simulated node."""

    def __init__(self) -> None:
        self.promised: Ballot = ZERO
        self.accepted: dict[int, Entry] = {}
        self.chosen = 0
        self.unsynced: list[Persist] = []
        """Records written but not yet covered by a completed sync, oldest first."""
        self.snapshot: tuple[int, bytes] | None = None
        """The latest durable snapshot: (slot, state-machine bytes)."""
        self.rebuilt_from = 0
        """The acceptor holds nothing trustworthy below this slot (after a rebuild)."""
        self.needs_rebuild = False
        """Recovery found this node's acceptor state corrupt or wiped: it must rebuild
        from its peers before it votes again."""
        self.bootstrapping = False
        """The disk was wiped and the node started again with the bootstrap flag
        (``--init``): the node asks its peers whether the cluster is new before it votes
        (``Replica(bootstrapping=True)``). Cleared by a finished rebuild or bootstrap."""
        self.fences: dict[int, FenceState] = {}
        """owner -> the fences this node holds against that node's ballots."""
        self.writes = 0
        self.syncs = 0

    def write(self, record: Persist) -> None:
        """Buffer a record (not durable until ``sync`` covers it)."""
        if record:
            self.unsynced.append(record)
            self.writes += 1

    def sync(self, count: int | None = None) -> None:
        """Make the oldest ``count`` unsynced records (default: all) durable."""
        n = len(self.unsynced) if count is None else count
        for record in self.unsynced[:n]:
            self._apply(record)
        del self.unsynced[:n]
        self.syncs += 1

    def crash(self, keep: int = 0) -> None:
        """Lose the unsynced records except the oldest ``keep`` (a torn write)."""
        for record in self.unsynced[:keep]:
            self._apply(record)
        self.unsynced.clear()

    def corrupt(self, *, keep_snapshot: bool) -> None:
        """A byte flipped in the log (or the whole disk was wiped): recovery can trust
        none of the acceptor state, and the node must rebuild before it votes."""
        self.promised = ZERO
        self.accepted.clear()
        self.unsynced.clear()
        self.chosen = 0
        self.rebuilt_from = 0
        self.fences = {}
        if not keep_snapshot:
            self.snapshot = None
        self.needs_rebuild = True

    def wipe(self) -> None:
        """The whole data directory is gone, and the operator starts the node again
        with the bootstrap flag: the disk looks exactly like a new node's."""
        self.corrupt(keep_snapshot=False)
        self.needs_rebuild = False
        self.bootstrapping = True

    def save_snapshot(self, slot: int, data: bytes) -> None:
        """Durably store a snapshot (atomic, like rename after fsync)."""
        if self.snapshot is None or slot > self.snapshot[0]:
            self.snapshot = (slot, data)

    def compact(self, slot: int) -> None:
        """Drop accepted entries below ``slot`` (a durable snapshot covers them)."""
        if self.snapshot is None or slot > self.snapshot[0]:
            raise ValueError(f"compaction to {slot} without a durable snapshot covering it")
        for s in [s for s in self.accepted if s < slot]:
            del self.accepted[s]

    def _apply(self, record: Persist) -> None:
        if record.promised is not None and record.promised > self.promised:
            self.promised = record.promised
        floor = self.snapshot[0] if self.snapshot is not None else 0
        for entry in record.accepted:
            if entry.slot >= floor:
                self.accepted[entry.slot] = entry
        self.chosen = max(self.chosen, record.chosen)
        if record.rebuilt >= 0:
            self.needs_rebuild = False
            self.bootstrapping = False
            self.rebuilt_from = max(self.rebuilt_from, record.rebuilt)
        for fence in record.fences:
            self.fences.setdefault(fence.owner, FenceState()).apply(fence)
