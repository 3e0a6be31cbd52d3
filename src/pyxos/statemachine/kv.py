"""The replicated key-value store: commands, results, client sessions and snapshots.

Theory of operation
-------------------
A client command is a ``Command(client, seq, op, key, value, expected)``. The leader
checks each command with ``validate_command`` when it is proposed, encodes the commands
that arrived together once with ``encode_batch``, and proposes those bytes as one slot
value. ``KVStore.apply`` decodes a chosen batch once and runs its commands in order,
returning one ``Applied(client, seq, result)`` per command with the result already
encoded (``encode_result``), ready for the reply.

Validity is the proposer's job, not the replica's. ``apply`` does not re-run
``validate_command``: if it did, replicas of two versions with different limits could
disagree about the same chosen batch. It only refuses what it cannot carry out (an op
it does not know, a put or cas without a value) with an error result, the same on every
replica. A slot value that does not decode at all cannot come from a correct leader,
which only proposes batches it encoded; ``apply`` consumes the slot, returns no results
(there is nobody known to answer) and counts it in ``KVStore.malformed``. It never
raises on a chosen value: a replica that crashed on one would crash again on restart.

Exactly once: every client numbers its commands ``seq = 1, 2, ...`` and has at most
one outstanding at a time (run several logical clients to pipeline). Per client, the
store keeps the last seq applied and its encoded result (the client's *session*):

- ``seq`` above the last: apply, record ``(seq, result)``;
- ``seq`` equal to the last: a retry of a command that was already chosen (perhaps in
  an earlier slot under an earlier leader); answer the recorded result, apply nothing;
- ``seq`` below the last: the client has moved on, so this is a stale duplicate;
  answer an error, apply nothing.

The sessions table keeps at most ``max_sessions`` clients and evicts the least recently
used one (by slot order of their commands, so every replica evicts the same one). An
evicted client that retries is treated as new: its retry is applied again. Keep
``max_sessions`` well above the number of clients active within a retry timeout, and
configure it the same on every replica.

``list`` is paginated, as etcd's range is: a command names a ``limit`` (0: the
largest page, ``MAX_LIST_ENTRIES``) and a key to start ``after`` (exclusive; ``None``:
from the first key with the prefix). A page ends at ``limit`` entries or once it holds
``MAX_LIST_BYTES`` of keys and values (never empty if anything matches, so a page of
very large values still makes progress), and its result says ``more`` when entries
follow; the caller continues with ``after`` = the last key of the page. Nothing is
ever cut off silently.

A snapshot is the msgpack encoding of the keys and values, the sessions in LRU order
and ``applied_slot`` (never pickle: a snapshot arrives from peers). Restoring it and
applying the following slots gives the same state and the same results, byte for byte,
as never having snapshotted.

State digest: ``state_digest()`` is a 64-bit fingerprint of the keys and values *and*
the session table (each session's client, last seq and result), so that the simulator
can compare replicas at every applied slot. It is the sum, modulo 2**64, of one
BLAKE2b hash per key and per session: order-independent, so each write updates it in
O(1) (subtract the old entry's hash, add the new one's) once ``track_digest()`` has
been called; untracked, ``state_digest()`` computes it from scratch and ``apply`` pays
nothing. The sessions' LRU order is not hashed; an order that differs between replicas
shows up as soon as it evicts different sessions. ``applied_slot`` is not hashed
either: digests are compared at equal applied slots.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Sequence
from hashlib import blake2b
from typing import ClassVar, Final

import msgspec

from pyxos.statemachine.base import Applied

__all__ = [
    "DEFAULT_LIST_LIMIT",
    "DEFAULT_MAX_SESSIONS",
    "MAX_KEY_BYTES",
    "MAX_LIST_BYTES",
    "MAX_LIST_ENTRIES",
    "MAX_VALUE_BYTES",
    "OPS",
    "Command",
    "KVStore",
    "KVStoreWithoutDedup",
    "Result",
    "decode_batch",
    "decode_result",
    "encode_batch",
    "encode_result",
    "validate_command",
]

MAX_KEY_BYTES: Final = 1024
"""Longest key, in UTF-8 bytes."""

MAX_VALUE_BYTES: Final = 1024 * 1024
"""Longest value (and cas ``expected``), in UTF-8 bytes."""

MAX_LIST_ENTRIES: Final = 10_000
"""The largest ``limit`` of one ``list`` page (also the page size of ``limit=0``)."""

DEFAULT_LIST_LIMIT: Final = 1000
"""The page size clients and the HTTP API ask for unless told otherwise."""

MAX_LIST_BYTES: Final = 4 * 1024 * 1024
"""A ``list`` page stops growing once its keys and values hold this many UTF-8 bytes
(it has at least one entry), so that a page always fits in one reply frame."""

DEFAULT_MAX_SESSIONS: Final = 100_000
"""Default bound on the client sessions a ``KVStore`` remembers."""

OPS: Final = frozenset({"get", "put", "delete", "cas", "list"})
"""Every op a ``Command`` may carry."""

SNAPSHOT_VERSION: Final = 1


class Command(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One client command; ``(client, seq)`` makes its retries idempotent.

    - ``get(key)``: read ``key``.
    - ``put(key, value)``: set ``key`` to ``value``.
    - ``delete(key)``: remove ``key``.
    - ``cas(key, expected, value)``: set ``key`` to ``value`` if its current value is
      ``expected``; ``expected=None`` means "only if ``key`` is absent".
    - ``list(key, limit, after)``: one page of the entries whose key starts with the
      prefix ``key`` (``""``: all), in key order, beginning after the key ``after``
      (``None``: at the first); at most ``limit`` entries (0: ``MAX_LIST_ENTRIES``).
    """

    client: int
    seq: int
    op: str
    key: str
    value: str | None = None
    expected: str | None = None
    limit: int = 0
    after: str | None = None


class Result(msgspec.Struct, frozen=True, array_like=True):
    """The outcome of one command.

    - get: ``ok``, ``value`` (``None`` if the key is absent).
    - put: ``ok``.
    - delete: ``ok``, ``value`` = the deleted value (``None`` if the key was absent).
    - cas: ``ok`` if the current value was ``expected`` (and is now the new value);
      otherwise not ``ok`` and ``value`` = the current value (``None``: absent).
    - list: ``ok``, ``values`` = one page of ``(key, value)`` pairs sorted by key;
      ``more`` if entries with the prefix follow the page (continue after its last key).
    - a stale request or a command the store cannot carry out: not ``ok``, ``error``.
    """

    ok: bool
    value: str | None = None
    values: list[tuple[str, str]] | None = None
    error: str | None = None
    more: bool = False


class _KVSnapshot(msgspec.Struct, frozen=True, array_like=True, tag="kv"):
    """Snapshot format: ``sessions`` are ``(client, seq, result)``, least recent first."""

    version: int
    applied_slot: int
    values: dict[str, str]
    sessions: list[tuple[int, int, bytes]]


_encoder = msgspec.msgpack.Encoder()
_batch_decoder = msgspec.msgpack.Decoder(list[Command])
_result_decoder = msgspec.msgpack.Decoder(Result)
_snapshot_decoder = msgspec.msgpack.Decoder(_KVSnapshot)

# The results that carry nothing but ``ok``, encoded once.
_OK: Final = _encoder.encode(Result(ok=True))
_NOT_OK: Final = _encoder.encode(Result(ok=False))

_DIGEST_MASK: Final = (1 << 64) - 1


def _value_hash(key: str, value: str) -> int:
    """One key's share of the state digest."""
    h = blake2b(_encoder.encode((key, value)), digest_size=8, person=b"kv-value")
    return int.from_bytes(h.digest(), "little")


def _session_hash(client: int, seq: int, result: bytes) -> int:
    """One client session's share of the state digest."""
    h = blake2b(_encoder.encode((client, seq, result)), digest_size=8, person=b"kv-sess")
    return int.from_bytes(h.digest(), "little")


def encode_batch(commands: Sequence[Command]) -> bytes:
    """Encode ``commands`` as one slot value (commands are not validated here)."""
    if not isinstance(commands, list | tuple):
        commands = list(commands)
    return _encoder.encode(commands)


def decode_batch(data: bytes) -> list[Command]:
    """Decode a slot value made by ``encode_batch``; raise ``msgspec.DecodeError`` if
    ``data`` is not one."""
    return _batch_decoder.decode(data)


def encode_result(result: Result) -> bytes:
    """Encode ``result`` for a client reply."""
    return _encoder.encode(result)


def decode_result(data: bytes) -> Result:
    """Decode a reply's result; raise ``msgspec.DecodeError`` if ``data`` is not one."""
    return _result_decoder.decode(data)


def _utf8_size(text: str, what: str) -> int:
    if text.isascii():  # O(1) in CPython: a flag on the string
        return len(text)
    try:
        return len(text.encode())
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid UTF-8 text (it has a lone surrogate)") from None


def validate_command(cmd: Command) -> None:
    """Raise ``ValueError`` saying what is wrong if ``cmd`` must not be proposed.

    Checks: a known op; a non-empty key (only ``list`` takes the empty prefix) of at
    most ``MAX_KEY_BYTES``; a value, of at most ``MAX_VALUE_BYTES``, for put and cas
    and none for the other ops; an ``expected`` only for cas, of at most
    ``MAX_VALUE_BYTES``.
    """
    op = cmd.op
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}: expected one of {', '.join(sorted(OPS))}")
    if not cmd.key and op != "list":
        raise ValueError(f"{op}: the key is empty")
    size = _utf8_size(cmd.key, "key")
    if size > MAX_KEY_BYTES:
        raise ValueError(f"{op}: the key is {size} bytes, more than {MAX_KEY_BYTES}")
    if op == "put" or op == "cas":
        if cmd.value is None:
            raise ValueError(f"{op}: a value is required")
        size = _utf8_size(cmd.value, "value")
        if size > MAX_VALUE_BYTES:
            raise ValueError(f"{op}: the value is {size} bytes, more than {MAX_VALUE_BYTES}")
    elif cmd.value is not None:
        raise ValueError(f"{op}: takes no value")
    if op == "cas":
        if cmd.expected is not None:
            size = _utf8_size(cmd.expected, "expected value")
            if size > MAX_VALUE_BYTES:
                raise ValueError(
                    f"cas: the expected value is {size} bytes, more than {MAX_VALUE_BYTES}"
                )
    elif cmd.expected is not None:
        raise ValueError(f"{op}: takes no expected value (only cas does)")
    if op == "list":
        if not 0 <= cmd.limit <= MAX_LIST_ENTRIES:
            raise ValueError(
                f"list: the limit is {cmd.limit}, expected 1 to {MAX_LIST_ENTRIES} (0: the most)"
            )
        if cmd.after is not None:
            size = _utf8_size(cmd.after, "start-after key")
            if size > MAX_KEY_BYTES:
                raise ValueError(
                    f"list: the start-after key is {size} bytes, more than {MAX_KEY_BYTES}"
                )
    elif cmd.limit != 0 or cmd.after is not None:
        raise ValueError(f"{op}: takes no limit or start-after key (only list does)")


def _stale(seq: int) -> bytes:
    return _encoder.encode(Result(ok=False, error=f"stale request: seq {seq} already superseded"))


class KVStore:
    """An in-memory key-value ``StateMachine`` with client sessions for exactly-once.

    See the module notes. ``max_sessions`` bounds the client sessions kept (least
    recently used evicted first) and must be the same on every replica.
    """

    # Read once per batch, so the deliberately broken subclass costs the real one
    # nothing per command.
    _dedup: ClassVar[bool] = True

    def __init__(self, *, max_sessions: int = DEFAULT_MAX_SESSIONS) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, not {max_sessions}")
        self.max_sessions: Final = max_sessions
        # key -> value; every key and value was validated by the proposer.
        self._values: dict[str, str] = {}
        # client -> (last seq applied, its encoded result); least recently used first.
        # len(self._sessions) <= self.max_sessions.
        self._sessions: OrderedDict[int, tuple[int, bytes]] = OrderedDict()
        # Every slot < _applied_slot is applied, none >= it.
        self._applied_slot = 0
        self.malformed = 0
        """Slot values that did not decode as a batch (local counter, not in snapshots)."""
        # The state digest kept up to date by every write, or None when not tracked.
        self._digest: int | None = None

    def track_digest(self) -> None:
        """Keep ``state_digest()`` up to date on every write from now on (O(1) each)."""
        self._digest = self._full_digest()

    def state_digest(self) -> int:
        """The 64-bit digest of the keys, values and sessions (see the module notes)."""
        return self._digest if self._digest is not None else self._full_digest()

    def _full_digest(self) -> int:
        total = sum(_value_hash(k, v) for k, v in self._values.items())
        total += sum(_session_hash(c, s, r) for c, (s, r) in self._sessions.items())
        return total & _DIGEST_MASK

    @property
    def applied_slot(self) -> int:
        """The next slot to apply: every slot below it has been applied, none above."""
        return self._applied_slot

    def apply(self, slot: int, value: bytes) -> list[Applied]:
        """Apply the chosen batch ``value`` of ``slot``; see ``StateMachine.apply``."""
        if slot != self._applied_slot:
            kind = "a repeat" if slot < self._applied_slot else "a gap"
            raise ValueError(
                f"apply(slot={slot}) is {kind}: the next slot to apply is {self._applied_slot}"
            )
        self._applied_slot = slot + 1
        if not value:
            return []
        try:
            commands = _batch_decoder.decode(value)
        except msgspec.DecodeError:
            self.malformed += 1
            return []
        sessions = self._sessions
        dedup = self._dedup
        execute = self._execute
        applied: list[Applied] = []
        for cmd in commands:
            client = cmd.client
            seq = cmd.seq
            session = sessions.get(client)
            if session is None:
                result = execute(cmd)
                sessions[client] = (seq, result)
                if self._digest is not None:
                    self._digest += _session_hash(client, seq, result)
                if len(sessions) > self.max_sessions:
                    evicted, (old_seq, old_result) = sessions.popitem(last=False)
                    if self._digest is not None:
                        self._digest -= _session_hash(evicted, old_seq, old_result)
            else:
                sessions.move_to_end(client)
                last_seq = session[0]
                if seq > last_seq or not dedup:
                    result = execute(cmd)
                    sessions[client] = (seq, result)
                    if self._digest is not None:
                        self._digest += _session_hash(client, seq, result) - _session_hash(
                            client, last_seq, session[1]
                        )
                elif seq == last_seq:
                    result = session[1]
                else:
                    result = _stale(seq)
            applied.append(Applied(client, seq, result))
        if self._digest is not None:
            self._digest &= _DIGEST_MASK
        return applied

    def _value_written(self, key: str, old: str | None, new: str | None) -> None:
        """Update the tracked digest for ``key`` going from ``old`` to ``new``."""
        assert self._digest is not None
        if old is not None:
            self._digest -= _value_hash(key, old)
        if new is not None:
            self._digest += _value_hash(key, new)

    def _execute(self, cmd: Command) -> bytes:
        """Carry out ``cmd`` on the keys and values; return its encoded result."""
        values = self._values
        op = cmd.op
        key = cmd.key
        if op == "get":
            current = values.get(key)
            return _OK if current is None else _encoder.encode(Result(ok=True, value=current))
        if op == "put":
            if cmd.value is None:
                return _encoder.encode(Result(ok=False, error="put: a value is required"))
            if self._digest is not None:
                self._value_written(key, values.get(key), cmd.value)
            values[key] = cmd.value
            return _OK
        if op == "delete":
            old = values.pop(key, None)
            if self._digest is not None:
                self._value_written(key, old, None)
            return _OK if old is None else _encoder.encode(Result(ok=True, value=old))
        if op == "cas":
            if cmd.value is None:
                return _encoder.encode(Result(ok=False, error="cas: a value is required"))
            current = values.get(key)
            if current == cmd.expected:
                if self._digest is not None:
                    self._value_written(key, current, cmd.value)
                values[key] = cmd.value
                return _OK
            return _NOT_OK if current is None else _encoder.encode(Result(ok=False, value=current))
        if op == "list":
            entries, more = self.list_page(key, cmd.limit, cmd.after)
            return _encoder.encode(Result(ok=True, values=entries, more=more))
        return _encoder.encode(Result(ok=False, error=f"unknown op {op!r}"))

    def get_local(self, key: str) -> str | None:
        """The value of ``key`` in this replica's state, ``None`` if absent.

        A stale read: it reflects the slots applied here, touches no session and goes
        through no log. Linearizable reads are the replica's business (lease or
        read-index), which then calls this once ``applied_slot`` is far enough.
        """
        return self._values.get(key)

    def list_page(
        self, prefix: str, limit: int = 0, after: str | None = None
    ) -> tuple[list[tuple[str, str]], bool]:
        """One page of ``list``: ``((key, value) pairs sorted by key, more)``.

        The keys start with ``prefix`` and come after ``after`` (``None``: from the
        first); at most ``limit`` of them (0, or anything above ``MAX_LIST_ENTRIES``:
        ``MAX_LIST_ENTRIES``) and about ``MAX_LIST_BYTES`` (see the module notes).
        ``more`` says whether matching keys follow the page. A local read like
        ``get_local``; costs O(keys + limit log limit), not a sort of every key.
        """
        if limit <= 0 or limit > MAX_LIST_ENTRIES:
            limit = MAX_LIST_ENTRIES
        values = self._values
        if after is None:
            matching = (k for k in values if k.startswith(prefix))
        else:
            matching = (k for k in values if k > after and k.startswith(prefix))
        keys = heapq.nsmallest(limit + 1, matching)
        more = len(keys) > limit
        page: list[tuple[str, str]] = []
        size = 0
        for k in keys[:limit]:
            v = values[k]
            size += _utf8_size(k, "key") + _utf8_size(v, "value")
            if page and size > MAX_LIST_BYTES:
                more = True
                break
            page.append((k, v))
        return page, more

    def list_local(self, prefix: str) -> list[tuple[str, str]]:
        """Every ``(key, value)`` whose key starts with ``prefix``, sorted by key, with
        no bound: a local read for tests and tools (the service serves ``list_page``)."""
        values = self._values
        return [(k, values[k]) for k in sorted(k for k in values if k.startswith(prefix))]

    def session(self, client: int) -> tuple[int, bytes] | None:
        """``(last seq applied, its encoded result)`` for ``client``, or ``None``.

        Lets a driver answer a retry of an already applied command without proposing
        it again. Does not count as a use of the session.
        """
        return self._sessions.get(client)

    def __len__(self) -> int:
        """The number of keys stored."""
        return len(self._values)

    def snapshot(self) -> bytes:
        """The whole state (keys, sessions in LRU order, ``applied_slot``) as msgpack."""
        return _encoder.encode(
            _KVSnapshot(
                version=SNAPSHOT_VERSION,
                applied_slot=self._applied_slot,
                values=self._values,
                sessions=[(c, s, r) for c, (s, r) in self._sessions.items()],
            )
        )

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a ``snapshot()``; ``ValueError`` if it is not one.

        On error the state is left as it was. ``malformed`` is a local counter and is
        kept. Sessions beyond ``max_sessions`` are evicted, least recently used first.
        """
        try:
            snap = _snapshot_decoder.decode(data)
        except msgspec.DecodeError as e:
            raise ValueError(f"not a KV store snapshot: {e}") from None
        if snap.version != SNAPSHOT_VERSION:
            raise ValueError(
                f"KV store snapshot version {snap.version}; this version reads only "
                f"{SNAPSHOT_VERSION}"
            )
        if snap.applied_slot < 0:
            raise ValueError(f"KV store snapshot has a negative applied slot {snap.applied_slot}")
        sessions = OrderedDict((c, (s, r)) for c, s, r in snap.sessions)
        while len(sessions) > self.max_sessions:
            sessions.popitem(last=False)
        self._values = snap.values
        self._sessions = sessions
        self._applied_slot = snap.applied_slot
        if self._digest is not None:
            self._digest = self._full_digest()


class _NoDedupKVStore(KVStore):
    """DELIBERATELY BROKEN: applies every command, retries and stale duplicates too.

    Exists only so the simulator can prove its linearizability check catches a state
    machine that applies a retried command twice. Never use it to serve clients.
    """

    _dedup = False


KVStoreWithoutDedup = _NoDedupKVStore
"""The deliberately broken ``KVStore`` that does not deduplicate retries (mutation tests)."""
