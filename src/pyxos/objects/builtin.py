"""The replicated objects users reach for: a counter, a dict, a lock, a FIFO queue.

Theory of operation
-------------------
Each is an ordinary :class:`~pyxos.objects.base.Replicated` class, written exactly as a
user would write their own (no private hooks), so each doubles as an example.

The lock (:class:`Lock`) hands out *fencing tokens* and expires by *log time*:

- Every grant gets a token one above the previous grant's, so tokens increase in log
  order. A holder passes its token to whatever the lock protects, and the protected
  resource refuses any token below the highest it has seen. That, not the lock, is what
  makes a paused holder harmless: a holder that stalls past its expiry, while another
  was granted the lock, still believes it holds it; its late writes carry a lower token
  and are refused (Kleppmann's argument against locks without fencing).
- Expiry: a grant lasts ``ttl`` units of the lock's *log time*: the number of
  commands applied to the lock (``acquire``, ``renew``, ``release``, whatever their
  outcome) plus the ticks applied while it exists; a grant made at log time ``t``
  holds through ``t + ttl``. Every replica applies the same commands in the same
  order, so every replica agrees at which point of the log a grant ran out; a
  wall-clock expiry would be decided by each replica's own clock, and replicas whose
  clocks differ would disagree about who holds the lock (the state would diverge).
  Without ticks a lock ages only by the commands on it (the attempts of those waiting
  for it age it); so that an abandoned lock also expires on a quiet cluster, the
  leader's embedded node submits a tick every ``tick_interval`` seconds
  (``pyxos.embedded``), and each tick moves every lock's clock by one. ``ttl`` thus
  bounds a grant by activity *and* (with ticks on) by about ``ttl * tick_interval``
  seconds, whichever comes first; safety never depends on it, only on the tokens.
  Under ``pyxos serve`` (a factory returning an ``ObjectHost``) no node submits ticks
  (the ticker is the embedded node's), so there a lock ages only by the commands on it:
  by design, expiry is by log time, never a clock. An abandoned grant ends after
  ``ttl`` attempts of those waiting for it; for expiry on a quiet cluster, a client
  submits ``tick_command()`` on a timer of its own (an ordinary command: it passes
  ``validate``), with the effect of the embedded leader's ticks.

The lock's operations and their semantics are those of the lock model being written
for the linearizability checker (issue 10, item 4): ``acquire(owner, ttl) -> token |
None``, ``release(owner, token) -> bool`` and the ``holder()`` query; ``renew`` and
``state()`` are extras.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from pyxos.objects.base import Replicated, query, replicated

__all__ = ["Counter", "Lock", "LockHolder", "LockState", "Queue", "ReplicatedDict"]


_INT64: Final = range(-(2**63), 2**63)


def _int64(value: int) -> int:
    """``value``, or ``OverflowError`` if msgpack cannot carry it as a signed 64-bit
    integer. A state field holding a larger int encodes in no snapshot: every replica
    would fail at its next snapshot, so a command must not put it there."""
    if value not in _INT64:
        raise OverflowError(f"{value} is outside the signed 64-bit range of a counter")
    return value


class Counter(Replicated):
    """A replicated integer counter."""

    value: int = 0

    @replicated
    def incr(self, by: int = 1) -> int:
        """Add ``by``; return the new value. ``OverflowError`` (the value unchanged) if
        the sum leaves the range of a signed 64-bit integer."""
        self.value = _int64(self.value + by)
        return self.value

    @replicated
    def decr(self, by: int = 1) -> int:
        """Subtract ``by``; return the new value. ``OverflowError`` (the value
        unchanged) if the difference leaves the range of a signed 64-bit integer."""
        self.value = _int64(self.value - by)
        return self.value

    @replicated
    def set(self, value: int) -> int:
        """Set the value; return the previous one."""
        old, self.value = self.value, value
        return old

    @query
    def get(self) -> int:
        """The current value (linearizable)."""
        return self.value


class ReplicatedDict(Replicated):
    """A replicated ``dict`` from ``str`` keys to msgpack values (``Any``: nested
    lists, dicts, strings, numbers, bytes, bools and None; tuples come back as lists)."""

    data: dict[str, Any] = {}

    @replicated
    def set(self, key: str, value: Any) -> None:
        """``d[key] = value``."""
        self.data[key] = value

    @replicated
    def update(self, items: dict[str, Any]) -> None:
        """Set every key of ``items``, in one command (atomically)."""
        self.data.update(items)

    @replicated
    def pop(self, key: str, default: Any = None) -> Any:
        """Remove ``key``; return its value, or ``default`` if it was absent."""
        return self.data.pop(key, default)

    @replicated
    def setdefault(self, key: str, value: Any) -> Any:
        """Set ``key`` to ``value`` unless present; return the value it now has."""
        return self.data.setdefault(key, value)

    @replicated
    def cas(self, key: str, expected: Any, value: Any, absent: bool = False) -> bool:
        """Set ``key`` to ``value`` if it holds ``expected`` (if it is absent, with
        ``absent=True``); return whether it did."""
        if absent:
            if key in self.data:
                return False
        elif key not in self.data or self.data[key] != expected:
            return False
        self.data[key] = value
        return True

    @replicated
    def clear(self) -> int:
        """Remove every key; return how many there were."""
        n = len(self.data)
        self.data.clear()
        return n

    @query
    def get(self, key: str, default: Any = None) -> Any:
        """``d.get(key, default)`` (linearizable)."""
        return self.data.get(key, default)

    @query
    def contains(self, key: str) -> bool:
        """``key in d``."""
        return key in self.data

    @query
    def keys(self) -> list[str]:
        """The keys, in insertion order."""
        return list(self.data)

    @query
    def items(self) -> dict[str, Any]:
        """A copy of the whole dict."""
        return dict(self.data)

    @query
    def size(self) -> int:
        """``len(d)``."""
        return len(self.data)


class LockHolder(msgspec.Struct, frozen=True):
    """Who holds a lock, with the fencing token of the grant."""

    owner: str
    token: int


class LockState(msgspec.Struct, frozen=True):
    """What a lock looks like at one point of the log."""

    holder: str | None
    """Who holds it (None: free, or the last grant expired)."""
    token: int
    """The fencing token of the last grant; 0 before the first."""
    expires: int
    """The last log time of the lock at which the current grant still holds."""
    now: int
    """The lock's log time: the commands applied to it so far, ticks included."""


class Lock(Replicated):
    """A lease lock with fencing tokens, expiring by log time (see the module notes).

    The semantics are those of the checker's lock model (issue 10, item 4):
    ``acquire``, ``release`` and the ``holder`` query, with the lock's own log time.
    """

    holder_: str | None = None
    token: int = 0
    expires: int = 0
    now: int = 0

    def _advance(self) -> None:
        """One command on this lock: its clock moves, and an expired grant ends."""
        self.now += 1
        if self.holder_ is not None and self.now > self.expires:
            self.holder_ = None

    def on_log_tick(self) -> None:
        """A tick moves this lock's clock like a command does."""
        self._advance()

    @replicated
    def acquire(self, owner: str, ttl: int) -> int | None:
        """Take the lock for the next ``ttl`` units of its log time: the fencing token
        of the grant, or None if someone else holds it. The holder calling again renews
        its grant and keeps its token."""
        if ttl < 1:
            raise ValueError(f"ttl must be at least 1, not {ttl}")
        self._advance()
        if self.holder_ is None:
            self.token += 1
            self.holder_ = owner
        elif self.holder_ != owner:
            return None
        self.expires = self.now + ttl
        return self.token

    @replicated
    def renew(self, owner: str, token: int, ttl: int) -> bool:
        """Extend the grant ``token`` of ``owner`` to ``ttl`` from now; False if that
        grant is no longer the current one (it expired, or was released)."""
        if ttl < 1:
            raise ValueError(f"ttl must be at least 1, not {ttl}")
        self._advance()
        if self.holder_ != owner or self.token != token:
            return False
        self.expires = self.now + ttl
        return True

    @replicated
    def release(self, owner: str, token: int) -> bool:
        """Give back the grant ``token``; False if it was no longer current."""
        self._advance()
        if self.holder_ != owner or self.token != token:
            return False
        self.holder_ = None
        return True

    @query
    def holder(self) -> LockHolder | None:
        """The holder and its token as of the last command on the lock (a grant whose
        time ran out shows until the next command or tick), or None if free."""
        if self.holder_ is None:
            return None
        return LockHolder(self.holder_, self.token)

    @query
    def state(self) -> LockState:
        """The whole lock: holder, token, expiry and the lock's log time."""
        return LockState(self.holder_, self.token, self.expires, self.now)


class Queue(Replicated):
    """A replicated FIFO queue of msgpack values."""

    items: list[Any] = []
    head: int = 0
    """Index of the first item in ``items`` (popped items are dropped in bulk)."""

    @replicated
    def put(self, item: Any) -> int:
        """Append ``item``; return the queue's length."""
        self.items.append(item)
        return len(self.items) - self.head

    @replicated
    def get(self, default: Any = None) -> Any:
        """Remove and return the first item, or ``default`` if the queue is empty."""
        if self.head >= len(self.items):
            return default
        item = self.items[self.head]
        self.head += 1
        if self.head >= 1024 and self.head * 2 >= len(self.items):
            del self.items[: self.head]
            self.head = 0
        return item

    @query
    def peek(self, default: Any = None) -> Any:
        """The first item without removing it, or ``default``."""
        return self.items[self.head] if self.head < len(self.items) else default

    @query
    def size(self) -> int:
        """The number of items."""
        return len(self.items) - self.head

    @query
    def contents(self) -> list[Any]:
        """Every item, first to last, without removing any."""
        return self.items[self.head :]
