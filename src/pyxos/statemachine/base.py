"""The application contract: what a user implements to have it replicated.

Theory of operation
-------------------
Multi-Paxos chooses one opaque value per slot; the replication layer
(:class:`~pyxos.statemachine.replicated.ReplicatedApp`) applies the chosen values in
slot order, exactly once, to an *application*. The application sees none of that: no
slots, no batches, no clients, no retries. It implements four methods on ``bytes``:

- ``apply(command) -> result``: carry out one command. Deterministic: it may depend
  only on the application's state and ``command`` (no clock, no randomness, no I/O, no
  iteration order that is not itself part of the state), so every replica that applies
  the same commands from the same snapshot reaches the same state and returns the same
  result bytes. An exception raised by ``apply`` is caught and becomes an error answer
  (the same on every replica); the state must not be left half-changed by it. That
  holds for ``BaseException`` subclasses too, but ``KeyboardInterrupt`` and
  ``SystemExit``: those are about the process, not the command, and stop the node.
- ``query(q) -> result``: answer a read-only question from the current state. It never
  enters the log: the leader serves it under its lease, or once a quorum confirmed its
  leadership after the query arrived (read-index), and in both cases once every slot
  below the read index is applied, so the answer is linearizable.
- ``snapshot() -> bytes`` and ``restore(data)``: the whole application state and back.
  ``restore`` raises ``ValueError`` for data that is not such a snapshot.

Optional methods, looked up once when the application is wrapped:

- ``validate(command) -> str | None``: run on the leader before a command is proposed;
  a string is the reason it is refused (the client gets it as an error), so garbage
  never reaches the log. Must not change state.
- ``reject(error) -> bytes``: how this application's results express a refusal (a
  failed ``validate``, or an exception in ``apply`` or ``query``). Without it the client
  gets the error alone (``ClientReply.error``) and empty result bytes.
- ``state_digest() -> int``: a cheap 64-bit fingerprint of the state for the
  simulator's divergence check (equal states, equal digests). Without it the layer
  hashes ``snapshot()``.
- A JSON codec, for the HTTP endpoints ``POST /v1/app/command`` and ``/v1/app/query``:
  ``json_command(doc) -> bytes``, ``json_query(doc) -> bytes`` (raise ``ValueError``
  for a document they cannot take) and ``json_result(result) -> JSON value``.

Everything generic lives in the layer, not in the application: batching (a slot value
is a batch of ``(client, seq, command)``), exactly-once client sessions (a retried
``(client, seq)`` is answered from the session table, never applied twice; the table
is snapshotted in one blob with the application's own snapshot), linearizable reads,
snapshots and compaction, and InstallSnapshot. The key-value store
(:class:`~pyxos.statemachine.kv.KVStore`) is one application like any other.

Commands, queries and results are bytes on the wire. A typed Python API on top
serialises them with msgspec (typed structs), never pickle: a command arrives from
the network and a snapshot from a peer.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import msgspec

__all__ = ["Application", "Applied", "StateMachine"]


class Applied(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The outcome of one client command, as the replication layer answers it.

    ``(client, seq)`` identify the request; ``result`` is what the application's
    ``apply`` returned (bytes, put straight into the reply); ``error`` is set instead
    when the command could not be carried out (``apply`` raised, or a stale request).
    The session table keeps the last ``Applied`` of each client, so a retry is answered
    with these very bytes.
    """

    client: int
    seq: int
    result: bytes
    error: str | None = None


@runtime_checkable
class Application(Protocol):
    """What a user implements to have it replicated (see the module notes).

    The four methods below are required; ``validate``, ``reject``, ``state_digest`` and
    the JSON codec (``json_command``, ``json_query``, ``json_result``) are optional.
    """

    def apply(self, command: bytes) -> bytes:
        """Carry out ``command``, deterministically; return the result bytes."""
        ...

    def query(self, q: bytes) -> bytes:
        """Answer the read-only question ``q`` from the current state."""
        ...

    def snapshot(self) -> bytes:
        """The whole application state as bytes, for ``restore``."""
        ...

    def restore(self, data: bytes) -> None:
        """Replace the whole state with that of ``snapshot()``; ``ValueError`` if
        ``data`` is not one."""
        ...


@runtime_checkable
class StateMachine(Protocol):
    """What the replica's driver applies chosen slot values to, in slot order.

    :class:`~pyxos.statemachine.replicated.ReplicatedApp` is the one implementation:
    it turns an :class:`Application` into a state machine of slots and batches.
    """

    @property
    def applied_slot(self) -> int:
        """The next slot to apply: every slot below it has been applied, none above."""
        ...

    def apply(self, slot: int, value: bytes) -> list[Applied]:
        """Apply the chosen ``value`` of ``slot`` (a batch of commands; ``b""`` = no-op).

        ``slot`` must equal ``applied_slot``, which then advances by one; any other slot
        (a gap or a repeat) raises ``ValueError``. Returns one ``Applied`` per command,
        in batch order.
        """
        ...

    def snapshot(self) -> bytes:
        """The whole state, ``applied_slot`` included, as bytes for ``restore``."""
        ...

    def restore(self, data: bytes) -> None:
        """Replace the whole state with that of ``snapshot()``; raise ``ValueError``
        if ``data`` is not a snapshot of this kind of state machine."""
        ...
