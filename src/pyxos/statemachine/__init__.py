"""Application state machines: pure, deterministic, fed the chosen slot values in order.

``base`` holds the ``StateMachine`` protocol and ``Applied``; ``kv`` the replicated
key-value store with client sessions for exactly-once commands.
"""

from pyxos.statemachine.base import Applied, StateMachine
from pyxos.statemachine.kv import (
    DEFAULT_LIST_LIMIT,
    DEFAULT_MAX_SESSIONS,
    MAX_KEY_BYTES,
    MAX_LIST_BYTES,
    MAX_LIST_ENTRIES,
    MAX_VALUE_BYTES,
    OPS,
    Command,
    KVStore,
    KVStoreWithoutDedup,
    Result,
    decode_batch,
    decode_result,
    encode_batch,
    encode_result,
    validate_command,
)

__all__ = [
    "DEFAULT_LIST_LIMIT",
    "DEFAULT_MAX_SESSIONS",
    "MAX_KEY_BYTES",
    "MAX_LIST_BYTES",
    "MAX_LIST_ENTRIES",
    "MAX_VALUE_BYTES",
    "OPS",
    "Applied",
    "Command",
    "KVStore",
    "KVStoreWithoutDedup",
    "Result",
    "StateMachine",
    "decode_batch",
    "decode_result",
    "encode_batch",
    "encode_result",
    "validate_command",
]
