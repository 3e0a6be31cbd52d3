"""The contract between the replicated log and an application state machine.

Theory of operation
-------------------
Multi-Paxos chooses one opaque value per slot; the driver applies the chosen values to a
``StateMachine`` in slot order, exactly once. A slot value is a *batch*: the leader
encodes the commands that arrived together once, and that one ``bytes`` value is what
the acceptors store and the learners apply. An empty value (``b""``) is the no-op a new
leader uses to fill a slot it found empty in phase 1; applying it only advances
``applied_slot``.

A state machine is pure: no I/O, no clock, no randomness, no dependence on iteration
order that is not itself part of the state. Every replica that applies the same slots
from the same snapshot therefore reaches the same state and produces the same results,
byte for byte. That is what lets any replica answer a client and lets a lagging replica
start from a peer's ``snapshot()`` instead of the whole log.

``apply`` returns one ``Applied`` per command, carrying the *encoded* result, so that
the driver can put it straight into a reply without decoding or re-encoding it.

Calling ``apply`` with any slot but ``applied_slot`` is caller misuse (the driver lost
track of the log) and raises ``ValueError``; a well-formed call never raises.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import msgspec

__all__ = ["Applied", "StateMachine"]


class Applied(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The outcome of one client command: ``result`` is already encoded for the reply.

    ``(client, seq)`` identify the request the driver answers with ``result``.
    """

    client: int
    seq: int
    result: bytes


@runtime_checkable
class StateMachine(Protocol):
    """A deterministic application fed with the chosen slot values, in slot order."""

    @property
    def applied_slot(self) -> int:
        """The next slot to apply: every slot below it has been applied, none above."""
        ...

    def apply(self, slot: int, value: bytes) -> list[Applied]:
        """Apply the chosen ``value`` of ``slot`` (a batch of commands; ``b""`` = no-op).

        ``slot`` must equal ``applied_slot``, which then advances by one; any other slot
        (a gap or a repeat) raises ``ValueError``. Returns one ``Applied`` per command
        that produced a reply, in batch order.
        """
        ...

    def snapshot(self) -> bytes:
        """The whole state, ``applied_slot`` included, as bytes for ``restore``."""
        ...

    def restore(self, data: bytes) -> None:
        """Replace the whole state with that of ``snapshot()``; raise ``ValueError``
        if ``data`` is not a snapshot of this kind of state machine."""
        ...
