"""The acceptor: the only durable role of Paxos.

Theory of operation
-------------------
An acceptor keeps one promised ballot that covers every slot (its ``Prepare`` names
the first slot the proposer asks about) and, per slot, the ballot and value it last
accepted. The rules, exactly as Lamport states them:

- Prepare(b): if b >= promised, promise b (raise ``promised`` to b) and report every
  accepted entry from the requested slot on; otherwise refuse with a Nack carrying
  ``promised``. (b == promised repeats the same promise, so a duplicated Prepare is
  harmless.)
- Accept(b, slot, v): if b >= promised, accept: ``promised = b`` and
  ``accepted[slot] = (b, v)``; otherwise refuse.

Every change is recorded in a pending :class:`~pyxos.core.ready.Persist`; the owner
must make it durable before any reply that depends on it leaves the node. Single-decree
Paxos uses slot 0 only; Multi-Paxos uses the same object for every slot, so the rules
are written once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pyxos.core.ballot import ZERO, Ballot
from pyxos.core.messages import Entry
from pyxos.core.ready import Persist

__all__ = ["Acceptor"]


class Acceptor:
    """Promise and accept rules over slots, with a pending-persist record."""

    def __init__(self, promised: Ballot = ZERO, accepted: Iterable[Entry] = ()) -> None:
        self.promised: Ballot = promised
        """Highest ballot promised. Invariant: never decreases, and is durable before
        any Promise or Accepted that reports it leaves the node."""
        self.accepted: dict[int, Entry] = {e.slot: e for e in accepted}
        """slot -> last accepted entry. Invariant: ``accepted[s].ballot <= promised``."""
        self.pending = Persist()
        """Changes not yet handed to the driver for persisting."""

    def on_prepare(self, ballot: Ballot, slot: int) -> list[Entry] | None:
        """Apply the prepare rule; the accepted entries from ``slot`` on, or None on refusal."""
        if ballot < self.promised:
            return None
        if ballot > self.promised:
            self.promised = ballot
            self.pending.promised = ballot
        return [e for s, e in sorted(self.accepted.items()) if s >= slot]

    def on_accept(self, ballot: Ballot, slot: int, values: Sequence[bytes]) -> bool:
        """Apply the accept rule to ``values`` at consecutive slots from ``slot``."""
        if ballot < self.promised:
            return False
        if ballot > self.promised:
            self.promised = ballot
            self.pending.promised = ballot
        for i, value in enumerate(values):
            entry = Entry(slot + i, ballot, value)
            self.accepted[slot + i] = entry
            self.pending.accepted.append(entry)
        return True

    def forget_below(self, slot: int) -> None:
        """Drop accepted entries below ``slot`` (they are chosen and snapshotted)."""
        for s in [s for s in self.accepted if s < slot]:
            del self.accepted[s]

    def take_pending(self) -> Persist:
        """Hand the pending changes to the driver and start a new record."""
        pending, self.pending = self.pending, Persist()
        return pending
