"""The replicated key-value store: one application of the contract in ``base``.

Theory of operation
-------------------
A KV command is a ``Command(client, seq, op, key, value, expected, limit, after)``
encoded with msgpack; those bytes are the application's command (``put``, ``delete``,
``cas``, and ``get``/``list`` when sent through the log) and query (``get`` and
``list``) bytes. The ``(client, seq)`` inside it only mirror the request's: the
replication layer's session table (``statemachine.replicated``), keyed by the
request's ``(client, seq)``, is what makes a retry apply once. ``KVStore.validate``
runs ``validate_command`` on the leader, so a command that breaks a limit never
reaches the log; ``KVStore.reject`` encodes a refusal as ``Result(ok=False, error)``,
which is what KV clients have always decoded.

``apply`` does not re-run ``validate_command``: replicas of two versions with different
limits must not disagree about a chosen command. It only refuses what it cannot carry
out (an op it does not know, a put or cas without a value, bytes that are not a
command) with an error result, the same on every replica, and never raises.

``list`` is paginated, as etcd's range is: a command names a ``limit`` (0: the
largest page, ``MAX_LIST_ENTRIES``) and a key to start ``after`` (exclusive; ``None``:
from the first key with the prefix). A page ends at ``limit`` entries or once it holds
``MAX_LIST_BYTES`` of keys and values (never empty if anything matches, so a page of
very large values still makes progress), and its result says ``more`` when entries
follow; the caller continues with ``after`` = the last key of the page. Nothing is
ever cut off silently.

A snapshot is the msgpack encoding of the keys and values (never pickle: a snapshot
arrives from peers); the layer wraps it with the sessions and the applied slot.

State digest: ``state_digest()`` is a 64-bit fingerprint of the keys and values, the
sum modulo 2**64 of one BLAKE2b hash per key: order-independent, so each write updates
it in O(1) once ``track_digest()`` has been called; untracked, it is computed from
scratch and ``apply`` pays nothing.

JSON codec (``POST /v1/app/command`` and ``/v1/app/query``): a command or query is the
object ``{"op", "key", "value", "expected", "limit", "after"}`` (only ``op`` and
``key`` required), a result the object of ``Result``'s fields.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from hashlib import blake2b
from typing import Any, ClassVar, Final

import msgspec

from pyxos.core.messages import ClientRequest
from pyxos.statemachine import replicated

__all__ = [
    "DEFAULT_LIST_LIMIT",
    "MAX_KEY_BYTES",
    "MAX_LIST_BYTES",
    "MAX_LIST_ENTRIES",
    "MAX_VALUE_BYTES",
    "OPS",
    "QUERY_OPS",
    "Command",
    "KVStore",
    "Result",
    "client_request",
    "decode_batch",
    "decode_command",
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

OPS: Final = frozenset({"get", "put", "delete", "cas", "list"})
"""Every op a ``Command`` may carry."""

SNAPSHOT_VERSION: Final = 2


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
    """Snapshot format of the application's state: the keys and values."""

    version: int
    values: dict[str, str]


_encoder = msgspec.msgpack.Encoder()
_command_decoder = msgspec.msgpack.Decoder(Command)
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


def encode_batch(commands: Sequence[Command]) -> bytes:
    """Encode KV ``commands`` as one slot value of the replication layer (each as
    ``(client, seq, its encoding)``; commands are not validated here)."""
    encode = _encoder.encode
    return replicated.encode_batch([(c.client, c.seq, encode(c)) for c in commands])


def decode_batch(data: bytes) -> list[Command]:
    """Decode a slot value made by ``encode_batch`` into its KV commands; raise
    ``msgspec.DecodeError`` if ``data`` is not one."""
    decode = _command_decoder.decode
    return [decode(command) for _, _, command in replicated.decode_batch(data)]


def decode_command(data: bytes) -> Command:
    """Decode one KV command; ``msgspec.DecodeError`` if ``data`` is not one."""
    return _command_decoder.decode(data)


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


QUERY_OPS: Final = frozenset({"get", "list"})
"""The ops clients send as queries (``ClientRequest.query``): answered without the log."""


def client_request(command: Command, src: int = 0) -> ClientRequest:
    """The request that carries ``command`` (from ``src``; clients send 0): get and
    list as queries, everything else as a command through the log."""
    return ClientRequest(
        src, command.client, command.seq, _encoder.encode(command), command.op in QUERY_OPS
    )


class KVStore:
    """The in-memory key-value store, an ``Application`` (see the module notes).

    Wrap it in a :class:`~pyxos.statemachine.replicated.ReplicatedApp` (the service
    does) to get slots, batches and exactly-once sessions.
    """

    def __init__(self) -> None:
        # key -> value; every key and value was validated by the proposer.
        self._values: dict[str, str] = {}
        # The digest of the keys and values kept up to date by every write, or None.
        self._digest: int | None = None

    # -- the application contract ------------------------------------------------------

    def apply(self, command: bytes) -> bytes:
        """Carry out one encoded ``Command``; return its encoded ``Result``."""
        # One function per command on the hot path: decoding and the ops inline.
        try:
            cmd = _command_decoder.decode(command)
        except msgspec.DecodeError as e:
            return _encoder.encode(Result(ok=False, error=f"not a KV command: {e}"))
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

    def query(self, q: bytes) -> bytes:
        """Answer an encoded ``get`` or ``list`` ``Command`` from the applied state."""
        try:
            cmd = _command_decoder.decode(q)
        except msgspec.DecodeError as e:
            return _encoder.encode(Result(ok=False, error=f"not a KV query: {e}"))
        if cmd.op == "get":
            value = self._values.get(cmd.key)
            return _OK if value is None else _encoder.encode(Result(ok=True, value=value))
        if cmd.op == "list":
            entries, more = self.list_page(cmd.key, cmd.limit, cmd.after)
            return _encoder.encode(Result(ok=True, values=entries, more=more))
        return _encoder.encode(Result(ok=False, error=f"{cmd.op!r} is not a query"))

    def validate(self, command: bytes) -> str | None:
        """Why the encoded command must not be proposed (``validate_command``), or None."""
        try:
            cmd = _command_decoder.decode(command)
        except msgspec.DecodeError as e:
            return str(e)
        # The common case, a put within the limits, passes every rule of
        # validate_command: checked here inline, as this runs on the leader once per
        # command. A command of at most MAX_KEY_BYTES bytes holds no key or value
        # longer than that in UTF-8 (they are parts of it); otherwise an ASCII
        # string's length is its size in UTF-8.
        if cmd.op == "put":
            key, value = cmd.key, cmd.value
            if (
                key
                and value is not None
                and cmd.expected is None
                and cmd.limit == 0
                and cmd.after is None
                and (
                    len(command) <= MAX_KEY_BYTES
                    or (
                        len(key) <= MAX_KEY_BYTES
                        and len(value) <= MAX_VALUE_BYTES
                        and key.isascii()
                        and value.isascii()
                    )
                )
            ):
                return None
        try:
            validate_command(cmd)
        except ValueError as e:
            return str(e)
        return None

    def reject(self, error: str) -> bytes:
        """A refusal as KV clients read it: ``Result(ok=False, error=error)``."""
        return _encoder.encode(Result(ok=False, error=error))

    def snapshot(self) -> bytes:
        """The keys and values as msgpack."""
        return _encoder.encode(_KVSnapshot(version=SNAPSHOT_VERSION, values=self._values))

    zero_copy_restore: ClassVar[bool] = True
    """``restore`` takes a ``memoryview`` too (``ReplicatedApp.restore`` then passes
    its part of a snapshot without copying it)."""

    def restore(self, data: bytes | memoryview) -> None:
        """Replace the keys and values with a ``snapshot()``; ``ValueError`` if it is
        not one (the state is then left as it was). ``data`` may be a view."""
        try:
            snap = _snapshot_decoder.decode(data)
        except msgspec.DecodeError as e:
            raise ValueError(f"not a KV store snapshot: {e}") from None
        if snap.version != SNAPSHOT_VERSION:
            raise ValueError(
                f"KV store snapshot version {snap.version}; this version reads only "
                f"{SNAPSHOT_VERSION}"
            )
        self._values = snap.values
        if self._digest is not None:
            self._digest = self._full_digest()

    def track_digest(self) -> None:
        """Keep ``state_digest()`` up to date on every write from now on (O(1) each)."""
        self._digest = self._full_digest()

    def state_digest(self) -> int:
        """The 64-bit digest of the keys and values (see the module notes)."""
        return self._digest if self._digest is not None else self._full_digest()

    # -- the JSON codec (HTTP) ---------------------------------------------------------

    def json_command(self, doc: Any) -> bytes:
        """An encoded command from ``{"op", "key", ...}``; ``ValueError`` if it is not one."""
        return _encoder.encode(_from_json(doc))

    def json_query(self, doc: Any) -> bytes:
        """An encoded ``get`` or ``list`` from ``{"op", "key", ...}``."""
        cmd = _from_json(doc)
        if cmd.op not in QUERY_OPS:
            raise ValueError(f"a query is a get or a list, not {cmd.op!r}")
        validate_command(cmd)
        return _encoder.encode(cmd)

    def json_result(self, result: bytes) -> Any:
        """The ``Result`` as a JSON object."""
        return msgspec.to_builtins(msgspec.structs.asdict(_result_decoder.decode(result)))

    # -- local reads -------------------------------------------------------------------

    def _full_digest(self) -> int:
        return sum(_value_hash(k, v) for k, v in self._values.items()) & _DIGEST_MASK

    def _value_written(self, key: str, old: str | None, new: str | None) -> None:
        """Update the tracked digest for ``key`` going from ``old`` to ``new``."""
        digest = self._digest
        assert digest is not None
        if old is not None:
            digest -= _value_hash(key, old)
        if new is not None:
            digest += _value_hash(key, new)
        self._digest = digest & _DIGEST_MASK

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

    def __len__(self) -> int:
        """The number of keys stored."""
        return len(self._values)


class _JsonCommand(msgspec.Struct, forbid_unknown_fields=True):
    op: str
    key: str
    value: str | None = None
    expected: str | None = None
    limit: int = 0
    after: str | None = None


def _from_json(doc: Any) -> Command:
    try:
        c = msgspec.convert(doc, _JsonCommand)
    except msgspec.ValidationError as e:
        raise ValueError(f"not a KV command: {e}") from None
    return Command(0, 0, c.op, c.key, c.value, c.expected, c.limit, c.after)
