"""Ready: what a driver must do after feeding the core an input.

Theory of operation
-------------------
The core performs no I/O. After any input (``step``, ``tick``, ``propose``) the driver
calls ``ready()`` and carries out, in this order:

1. ``persist``: acceptor state to make durable (one write and one fsync for the whole
   Ready: group commit);
2. ``send_now``: messages that may leave at once, even while that fsync runs (a
   proposer's Accept, Commit and Decided messages, whose content does not depend on
   the acceptor state being persisted);
3. ``send_after_sync``: messages that leave only once ``persist`` is durable (Promise,
   Accepted, Nack and Prepare: they report or depend on a promise or an acceptance,
   and a crash before the fsync must not leave a promise the disk does not hold);
4. ``committed``: chosen values, in slot order, to apply exactly once;
5. ``reads``: linearizable reads that may now be served from the state machine
   (after ``committed`` is applied), or must be refused;
6. ``snapshot``: a state-machine snapshot covering every slot below its slot, to
   write durably (temporary file, fsync, rename, directory fsync); once it is durable
   the driver calls ``snapshot_durable(slot)``, and only then are the log and the
   acceptor's entries below that slot dropped. A snapshot that fails to write changes
   nothing;

and then calls ``advance()``. Messages addressed to the node itself are delivered back
to it with ``step`` like any other; this is how a leader counts its own acceptance only
once it is durable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from pyxos.core.ballot import ZERO, Ballot
from pyxos.core.messages import Entry, Fence, Message

__all__ = ["Fence", "FenceState", "Node", "Persist", "Ready", "Rng", "Send"]


class Rng(Protocol):
    """The randomness the core may use, injected by its driver (``random.Random`` fits)."""

    def random(self) -> float:
        """A float in [0, 1)."""
        ...

    def uniform(self, a: float, b: float) -> float:
        """A float between ``a`` and ``b``."""
        ...


@dataclass(slots=True)
class FenceState:
    """The fences an acceptor holds against one owner's ballots.

    Invariant: a ballot of the owner is refused iff ``up`` is non-empty or it is at
    most ``lifted``.
    """

    lifted: Ballot = ZERO
    """The highest bound any lifted fence left: the owner's ballots up to it are dead."""
    up: set[int] = field(default_factory=set)
    """Nonces of fences put up and not lifted yet: every ballot of the owner is refused."""

    def apply(self, fence: Fence) -> None:
        """Apply one recorded change (recovery replays them in order)."""
        if fence.bound is None:
            self.up.add(fence.nonce)
        else:
            self.up.discard(fence.nonce)
            self.lifted = max(self.lifted, fence.bound)

    def refuses(self, ballot: Ballot) -> bool:
        """True if a ballot of the owner must be neither promised nor accepted."""
        return bool(self.up) or ballot <= self.lifted

    def records(self, owner: int) -> list[Fence]:
        """The changes that rebuild this state from nothing (for a checkpoint)."""
        out = [Fence(owner, -1, self.lifted)] if self.lifted > ZERO else []
        return out + [Fence(owner, n) for n in sorted(self.up)]


class Persist(msgspec.Struct, array_like=True):
    """Acceptor state that must be durable before acceptor replies leave.

    ``promised`` is the new promised ballot (``None``: unchanged); ``accepted`` are the
    entries newly accepted; ``chosen`` the new first-unchosen slot (``-1``: unchanged;
    a watermark only, safe to lose); ``rebuilt`` marks the end of a rebuild (written
    together with the raised promise); ``fences`` are fences put up or lifted against
    other nodes' ballots (in order).
    """

    promised: Ballot | None = None
    accepted: list[Entry] = msgspec.field(default_factory=list)
    chosen: int = -1
    rebuilt: int = -1
    """A rebuild finished: the acceptor holds nothing trustworthy below this slot, and
    the state written from here on can be trusted (``-1``: no rebuild finished)."""
    fences: list[Fence] = msgspec.field(default_factory=list)
    """Fences put up (before a rebuild answer leaves) or lifted, oldest first."""

    def __bool__(self) -> bool:
        return (
            self.promised is not None
            or bool(self.accepted)
            or self.chosen >= 0
            or self.rebuilt >= 0
            or bool(self.fences)
        )

    def absorb(self, later: Persist) -> None:
        """Fold a later record into this one (the later values win)."""
        if later.promised is not None:
            self.promised = later.promised
        self.accepted.extend(later.accepted)
        self.chosen = max(self.chosen, later.chosen)
        self.rebuilt = max(self.rebuilt, later.rebuilt)
        self.fences.extend(later.fences)


@dataclass(slots=True)
class Send:
    """Send ``msg`` to every node id in ``to`` (encode once, deliver to each)."""

    to: tuple[int, ...]
    msg: Message


@dataclass(slots=True)
class Ready:
    """The outputs of the core since the last ``advance()``."""

    persist: Persist = field(default_factory=Persist)
    send_now: list[Send] = field(default_factory=list)
    send_after_sync: list[Send] = field(default_factory=list)
    committed: list[Entry] = field(default_factory=list)
    snapshot: tuple[int, bytes] | None = None
    """(slot, state-machine snapshot of every slot below ``slot``) to make durable."""
    reads: list[tuple[object, bool]] = field(default_factory=list)
    """(token, ok) of reads that may now be served from the applied state (ok) or
    must be refused because leadership was lost (not ok)."""

    def __bool__(self) -> bool:
        return bool(
            self.persist
            or self.send_now
            or self.send_after_sync
            or self.committed
            or self.snapshot is not None
            or bool(self.reads)
        )


class Node(Protocol):
    """The contract every pure protocol node offers its driver (simulator or server)."""

    @property
    def node_id(self) -> int:
        """This node's id."""
        ...

    def step(self, msg: Message) -> None:
        """Feed one received message."""
        ...

    def tick(self, now: float) -> None:
        """Advance the node's notion of time to ``now`` (monotonic seconds)."""
        ...

    def ready(self) -> Ready:
        """What the driver must do now (see the module docstring)."""
        ...

    def advance(self) -> None:
        """The driver has carried out the last ``ready()``."""
        ...

    def next_deadline(self) -> float | None:
        """The latest time at which ``tick`` must be called again, if any."""
        ...
