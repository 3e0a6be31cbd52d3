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
- Expiry: a grant lasts ``ttl`` units of *log time*, the host's count of applied
  commands (``Replicated.log_time``), not seconds on any clock. Every replica applies
  the same commands in the same order, so every replica agrees at which point of the
  log a grant ran out; a wall-clock expiry would be decided by each replica's own
  clock, and replicas whose clocks differ would disagree about who holds the lock (the
  state would diverge). Log time advances with every command of the node's objects,
  and, so that an abandoned lock also expires on a quiet cluster, with the ticks the
  leader's embedded node submits every ``tick_interval`` seconds (``pyxos.embedded``).
  So ``ttl`` bounds the lock's life by activity *and* (with ticks on) roughly by
  ``ttl * tick_interval`` seconds, whichever comes first; safety never depends on it,
  only on the fencing tokens.
"""

from __future__ import annotations

from typing import Any

import msgspec

from pyxos.objects.base import Replicated, query, replicated

__all__ = ["Counter", "Lock", "LockState", "Queue", "ReplicatedDict"]


class Counter(Replicated):
    """A replicated integer counter."""

    value: int = 0

    @replicated
    def incr(self, by: int = 1) -> int:
        """Add ``by``; return the new value."""
        self.value += by
        return self.value

    @replicated
    def decr(self, by: int = 1) -> int:
        """Subtract ``by``; return the new value."""
        self.value -= by
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


class LockState(msgspec.Struct, frozen=True):
    """What a lock looks like at one point of the log."""

    holder: str | None
    """Who holds it (None: free, or the last grant expired)."""
    token: int
    """The fencing token of the current (or last) grant; 0 before the first."""
    expires: int
    """The log time at which the current grant runs out."""
    now: int
    """The log time of this answer."""


class Lock(Replicated):
    """A lease lock with fencing tokens, expiring by log time (see the module notes)."""

    holder: str | None = None
    token: int = 0
    expires: int = 0

    def _held(self) -> bool:
        return self.holder is not None and self.log_time < self.expires

    @replicated
    def acquire(self, owner: str, ttl: int) -> int | None:
        """Take the lock for ``ttl`` units of log time: the fencing token of the grant,
        or None if someone else holds it. The holder calling again extends its grant
        and keeps its token."""
        if ttl < 1:
            raise ValueError(f"ttl must be at least 1, not {ttl}")
        if self._held() and self.holder != owner:
            return None
        if not self._held():
            self.token += 1
            self.holder = owner
        self.expires = self.log_time + ttl
        return self.token

    @replicated
    def renew(self, owner: str, token: int, ttl: int) -> bool:
        """Extend the grant ``token`` of ``owner`` by ``ttl`` from now; False if that
        grant is no longer the current one (it expired, or was released)."""
        if ttl < 1:
            raise ValueError(f"ttl must be at least 1, not {ttl}")
        if not self._held() or self.holder != owner or self.token != token:
            return False
        self.expires = self.log_time + ttl
        return True

    @replicated
    def release(self, owner: str, token: int) -> bool:
        """Give back the grant ``token``; False if it was no longer current."""
        if not self._held() or self.holder != owner or self.token != token:
            return False
        self.holder = None
        self.expires = self.log_time
        return True

    @query
    def state(self) -> LockState:
        """The lock now (linearizable): holder, token, expiry and log time."""
        holder = self.holder if self._held() else None
        return LockState(holder, self.token, self.expires, self.log_time)


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
