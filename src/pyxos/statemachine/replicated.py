"""The replication layer's state machine: batches, client sessions and snapshots
around any :class:`~pyxos.statemachine.base.Application`.

Theory of operation
-------------------
A slot value is a *batch*: the msgpack array of ``(client, seq, command)`` triples the
leader collected in one pass (``encode_batch``), encoded once; the same bytes go to the
WAL and to every acceptor. ``b""`` is the no-op a new leader fills a gap with.
:meth:`ReplicatedApp.apply` decodes a chosen batch once and hands each command's bytes
to the application's ``apply``; it returns one ``Applied(client, seq, result)`` per
command, ready for the reply.

Exactly once: every client numbers its commands ``seq = 1, 2, ...`` and has at most
one outstanding at a time. Per client, the layer keeps the last ``Applied`` (the
client's *session*):

- ``seq`` above the last: apply, record the new ``Applied``;
- ``seq`` equal to the last: a retry of a command already chosen (perhaps in an earlier
  slot under an earlier leader); answer the recorded result, apply nothing;
- ``seq`` below the last: a stale duplicate (the client moved on); answer an error,
  apply nothing.

The table keeps at most ``max_sessions`` clients and evicts the least recently used
(in slot order of their commands, so every replica evicts the same one). An evicted
client that retries is treated as new. Keep ``max_sessions`` well above the number of
clients active within a retry timeout, and the same on every replica.

Validity is the proposer's job (``validate`` on the leader), not the learner's: a
replica of another version must not refuse a chosen command its leader accepted. A slot
value that does not decode as a batch cannot come from a correct leader; it consumes
its slot, produces no results and is counted in ``malformed``. Nothing here raises on a
chosen value: a replica that crashed on one would crash again on every restart. An
exception from the application's ``apply`` becomes that command's error answer
(recorded in the session like any result): every exception, ``BaseException``
subclasses of the application's own (and ``asyncio.CancelledError``, ``GeneratorExit``)
included, since one that escaped would crash every replica at the same slot, and again
at every restart. Only :data:`PROCESS_EXITS` (``KeyboardInterrupt``, ``SystemExit``)
propagate: they are about the process, not the command (a Ctrl-C lands wherever the
process happens to be), so recording them as the command's answer would make this
replica's answer differ from the others'. A state interrupted half-way through a batch
refuses to apply any more (``RuntimeError``): the node restarts from its snapshot and
its log.

One snapshot blob holds both halves (never pickle: it arrives from peers): the
``applied_slot``, the sessions in LRU order, and the application's own ``snapshot()``
bytes. Restoring it and applying the following slots gives the same state and the same
results, byte for byte, as never having snapshotted.

State digest (the simulator's divergence check, docs/architecture.md, *Evidence*):
``state_digest()`` covers the session table *and* the application. The sessions' part
is the sum modulo 2**64 of one BLAKE2b hash per session, updated in O(1) per command
once ``track_digest()`` was called; the application's part is its ``state_digest()``
if it has one, else a hash of its ``snapshot()``. LRU order and ``applied_slot`` are not
hashed: digests are compared at equal applied slots, and an LRU order that differs
shows up as soon as it evicts different sessions.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from hashlib import blake2b
from typing import ClassVar, Final, Generic, TypeVar

import msgspec

from pyxos.statemachine.base import Application, Applied

__all__ = [
    "DEFAULT_MAX_SESSIONS",
    "PROCESS_EXITS",
    "ReplicatedApp",
    "ReplicatedAppWithoutDedup",
    "decode_batch",
    "encode_batch",
]

DEFAULT_MAX_SESSIONS: Final = 100_000
"""Default bound on the client sessions the layer remembers."""

SNAPSHOT_VERSION: Final = 2

PROCESS_EXITS: Final = (KeyboardInterrupt, SystemExit)
"""Exceptions from the application that end the process instead of answering the
command (see the module notes); every other one becomes an error answer."""

A = TypeVar("A", bound=Application)

BatchEntry = tuple[int, int, bytes]
"""One command of a batch: ``(client, seq, command bytes)``."""


class _Snapshot(msgspec.Struct, frozen=True, array_like=True, tag="app"):
    """Snapshot format: ``sessions`` least recently used first; ``app`` is the
    application's own ``snapshot()``."""

    version: int
    applied_slot: int
    sessions: list[Applied]
    app: bytes


class _SnapshotView(msgspec.Struct, frozen=True, array_like=True, tag="app"):
    """``_Snapshot`` as decoded: ``app`` a view of the input, not a copy of it."""

    version: int
    applied_slot: int
    sessions: list[Applied]
    app: memoryview


class _Entry(msgspec.Struct, array_like=True, frozen=True, gc=False, forbid_unknown_fields=True):
    """A ``BatchEntry`` as ``apply`` decodes it: the same three-element array on the
    wire, but not tracked by Python's cyclic garbage collector (a tuple is, until a
    collection untracks it): a batch of thousands of commands then triggers no
    collections while it is applied."""

    client: int
    seq: int
    command: bytes


_encoder = msgspec.msgpack.Encoder()
_batch_decoder = msgspec.msgpack.Decoder(list[BatchEntry])
_apply_decoder = msgspec.msgpack.Decoder(list[_Entry])
_snapshot_decoder = msgspec.msgpack.Decoder(_SnapshotView)
_DIGEST_MASK: Final = (1 << 64) - 1


def encode_batch(entries: Sequence[BatchEntry]) -> bytes:
    """Encode ``(client, seq, command)`` triples as one slot value."""
    if not isinstance(entries, list | tuple):
        entries = list(entries)
    return _encoder.encode(entries)


def decode_batch(value: bytes) -> list[BatchEntry]:
    """Decode a slot value made by ``encode_batch``; ``msgspec.DecodeError`` if it is not."""
    return _batch_decoder.decode(value)


def _as_result(value: object, what: str) -> bytes:
    """``value`` (what the application's ``what`` returned) as ``bytes``: bytes as they
    are, a ``bytearray`` or ``memoryview`` copied; ``TypeError`` naming ``what`` for
    anything else (a ``str`` that was not encoded, None). Checked before the value is
    kept: a ``str`` in the session table or the application's snapshot would encode,
    but no snapshot holding it could be restored (docs/architecture.md, *The
    application contract*)."""
    if type(value) is bytes:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"the application's {what} returned {type(value).__name__}, not bytes")


def _session_hash(applied: Applied) -> int:
    h = blake2b(_encoder.encode(applied), digest_size=8, person=b"app-sess")
    return int.from_bytes(h.digest(), "little")


class ReplicatedApp(Generic[A]):
    """An application plus what replication adds: the applied slot, batches, sessions.

    Implements :class:`~pyxos.statemachine.base.StateMachine`; see the module notes.
    ``max_sessions`` must be the same on every replica.
    """

    # Read once per batch, so the deliberately broken subclass costs nothing per command.
    _dedup: ClassVar[bool] = True

    def __init__(self, app: A, *, max_sessions: int = DEFAULT_MAX_SESSIONS) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, not {max_sessions}")
        self.app: Final[A] = app
        """The application (its state, its ``apply`` and ``query``)."""
        self.max_sessions: Final = max_sessions
        # client -> its last Applied; least recently used first;
        # len(self._sessions) <= self.max_sessions.
        self._sessions: OrderedDict[int, Applied] = OrderedDict()
        # Every slot < _applied_slot is applied, none >= it.
        self._applied_slot = 0
        self.malformed = 0
        """Slot values that did not decode as a batch (local counter, not in snapshots)."""
        # The sessions' digest kept up to date by every command, or None (not tracked).
        self._digest: int | None = None
        self._apply_one: Callable[[bytes], bytes] = app.apply
        self._reject: Callable[[str], bytes] | None = getattr(app, "reject", None)
        self.validate: Callable[[bytes], str | None] | None = getattr(app, "validate", None)
        """The application's ``validate``, or None if it has none."""
        # Why this state may apply no more (a process exit cut a batch short), or None.
        self._interrupted: str | None = None

    # -- the StateMachine contract -----------------------------------------------------

    @property
    def applied_slot(self) -> int:
        """The next slot to apply: every slot below it has been applied, none above."""
        return self._applied_slot

    def apply(self, slot: int, value: bytes) -> list[Applied]:
        """Apply the chosen batch ``value`` of ``slot``; see ``StateMachine.apply``."""
        if self._interrupted is not None:
            raise RuntimeError(self._interrupted)
        if slot != self._applied_slot:
            kind = "a repeat" if slot < self._applied_slot else "a gap"
            raise ValueError(
                f"apply(slot={slot}) is {kind}: the next slot to apply is {self._applied_slot}"
            )
        self._applied_slot = slot + 1
        if not value:
            return []
        try:
            entries = _apply_decoder.decode(value)
        except msgspec.DecodeError:
            self.malformed += 1
            return []
        sessions = self._sessions
        dedup = self._dedup
        apply_one = self._apply_one
        digest = self._digest
        max_sessions = self.max_sessions
        applied: list[Applied] = []
        for entry in entries:
            client, seq, command = entry.client, entry.seq, entry.command
            session = sessions.get(client)
            if session is not None:
                sessions.move_to_end(client)
                if seq <= session.seq and dedup:
                    applied.append(session if seq == session.seq else self._stale(client, seq))
                    continue
            try:
                result = apply_one(command)
                if type(result) is not bytes:
                    result = _as_result(result, "apply")
                done = Applied(client, seq, result)
            except PROCESS_EXITS as e:
                self._interrupted = (
                    f"slot {slot} was cut short by {type(e).__name__} inside the "
                    "application's apply: this state is no longer a replica's; restart "
                    "from the snapshot and the log"
                )
                raise
            except BaseException as e:  # the application's bug becomes an answer
                done = self.failure(client, seq, f"apply raised {type(e).__name__}: {e}")
            sessions[client] = done
            applied.append(done)
            if digest is not None:
                digest += _session_hash(done)
                if session is not None:
                    digest -= _session_hash(session)
            if session is None and len(sessions) > max_sessions:
                _, evicted = sessions.popitem(last=False)
                if digest is not None:
                    digest -= _session_hash(evicted)
        if digest is not None:
            self._digest = digest & _DIGEST_MASK
        return applied

    def failure(self, client: int, seq: int, error: str) -> Applied:
        """The answer to ``(client, seq)`` that could not be carried out: ``error``,
        and the result bytes the application's ``reject`` makes of it (if it has one)."""
        reject = self._reject
        if reject is None:
            return Applied(client, seq, b"", error)
        try:
            return Applied(client, seq, _as_result(reject(error), "reject"), error)
        except PROCESS_EXITS:
            raise
        except BaseException as e:  # a broken reject: the error alone, no result bytes
            return Applied(client, seq, b"", f"{error} (and reject raised {type(e).__name__}: {e})")

    def _stale(self, client: int, seq: int) -> Applied:
        return self.failure(client, seq, f"stale request: seq {seq} already superseded")

    def query(self, q: bytes) -> Applied:
        """Answer the read-only question ``q`` from the applied state (client and seq
        0: the caller addresses the reply). An exception becomes an error answer
        (but :data:`PROCESS_EXITS`, which propagate)."""
        try:
            return Applied(0, 0, _as_result(self.app.query(q), "query"))
        except PROCESS_EXITS:
            raise
        except BaseException as e:  # the application's bug becomes an answer
            return self.failure(0, 0, f"query raised {type(e).__name__}: {e}")

    def query_batch(self, queries: Sequence[bytes]) -> tuple[list[bytes], dict[int, str]]:
        """Answer many read-only questions in one loop, each as :meth:`query` would:
        the result bytes of every query in order, and the errors of those that failed
        by their index (no answer object per query: the reads of one pass are served
        together)."""
        query = self.app.query
        results: list[bytes] = []
        append = results.append
        errors: dict[int, str] = {}
        for i, q in enumerate(queries):
            try:
                r = query(q)
                append(r if type(r) is bytes else _as_result(r, "query"))
            except PROCESS_EXITS:
                raise
            except BaseException as e:  # the application's bug becomes an answer
                failed = self.failure(0, 0, f"query raised {type(e).__name__}: {e}")
                append(failed.result)
                errors[i] = failed.error or ""
        return results, errors

    def session(self, client: int) -> tuple[int, bytes] | None:
        """``(last seq applied, its result)`` for ``client``, or ``None``.

        Does not count as a use of the session.
        """
        s = self._sessions.get(client)
        return None if s is None else (s.seq, s.result)

    @property
    def sessions(self) -> int:
        """The number of client sessions held."""
        return len(self._sessions)

    def snapshot(self) -> bytes:
        """One blob: ``applied_slot``, the sessions in LRU order, the application's state."""
        return _encoder.encode(
            _Snapshot(
                version=SNAPSHOT_VERSION,
                applied_slot=self._applied_slot,
                sessions=list(self._sessions.values()),
                app=_as_result(self.app.snapshot(), "snapshot()"),
            )
        )

    def restore(self, data: bytes | memoryview) -> None:
        """Replace the whole state with a ``snapshot()``; ``ValueError`` if it is not one.

        On error the layer's state is left as it was (the application's ``restore`` is
        called last). Sessions beyond ``max_sessions`` are evicted, least recent first.
        The application gets its part as ``bytes`` (a copy), or, if it says it takes a
        view (``zero_copy_restore = True``, as ``KVStore`` does), as a ``memoryview``
        into ``data``: at 1 GB of state that copy cost seconds of a restart.
        """
        try:
            snap = _snapshot_decoder.decode(data)
        except msgspec.DecodeError as e:
            raise ValueError(f"not a pyxos snapshot: {e}") from None
        if snap.version != SNAPSHOT_VERSION:
            raise ValueError(
                f"snapshot version {snap.version}; this version reads only {SNAPSHOT_VERSION}"
            )
        if snap.applied_slot < 0:
            raise ValueError(f"snapshot has a negative applied slot {snap.applied_slot}")
        sessions = OrderedDict((a.client, a) for a in snap.sessions)
        while len(sessions) > self.max_sessions:
            sessions.popitem(last=False)
        if getattr(self.app, "zero_copy_restore", False):
            restore_view: Callable[[memoryview], None] = self.app.restore  # type: ignore[assignment]
            restore_view(snap.app)
        else:
            self.app.restore(bytes(snap.app))
        self._sessions = sessions
        self._applied_slot = snap.applied_slot
        if self._digest is not None:
            self._digest = self._sessions_digest()

    # -- the state digest (simulator) --------------------------------------------------

    def track_digest(self) -> None:
        """Keep the sessions' digest up to date on every command from now on, and ask
        the application to do the same with its own if it can."""
        self._digest = self._sessions_digest()
        track = getattr(self.app, "track_digest", None)
        if track is not None:
            track()

    def state_digest(self) -> int:
        """The 64-bit digest of the sessions and the application (see the module notes)."""
        sessions = self._digest if self._digest is not None else self._sessions_digest()
        app_digest = getattr(self.app, "state_digest", None)
        if app_digest is not None:
            app = int(app_digest())
        else:
            h = blake2b(self.app.snapshot(), digest_size=8, person=b"app-state")
            app = int.from_bytes(h.digest(), "little")
        return (sessions + app) & _DIGEST_MASK

    def _sessions_digest(self) -> int:
        return sum(_session_hash(a) for a in self._sessions.values()) & _DIGEST_MASK


class _NoDedupReplicatedApp(ReplicatedApp[A]):
    """DELIBERATELY BROKEN: applies every command, retries and stale duplicates too.

    Exists only so the simulator can prove its linearizability check catches a layer
    that applies a retried command twice. Never use it to serve clients.
    """

    _dedup = False


ReplicatedAppWithoutDedup = _NoDedupReplicatedApp
"""The deliberately broken ``ReplicatedApp`` that does not deduplicate retries."""
