"""Replicated Python objects (``@replicated`` commands, ``@query`` reads) and the
objects users reach for: :class:`Counter`, :class:`ReplicatedDict`, :class:`Lock` with
fencing tokens, :class:`Queue`. Run them with ``pyxos.embedded.EmbeddedNode``; see
docs/architecture.md, *Replicated objects*."""

from pyxos.objects.base import (
    Binding,
    BoundMethod,
    NotAttached,
    ObjectHost,
    Replicated,
    ReplicatedError,
    decode_result,
    encode_call,
    query,
    replicated,
    tick_command,
)
from pyxos.objects.builtin import Counter, Lock, LockHolder, LockState, Queue, ReplicatedDict

__all__ = [
    "Binding",
    "BoundMethod",
    "Counter",
    "Lock",
    "LockHolder",
    "LockState",
    "NotAttached",
    "ObjectHost",
    "Queue",
    "Replicated",
    "ReplicatedDict",
    "ReplicatedError",
    "decode_result",
    "encode_call",
    "query",
    "replicated",
    "tick_command",
]
