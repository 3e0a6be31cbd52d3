"""Applications and the layer that replicates them.

``base`` holds the application contract (``Application``) and ``Applied``;
``replicated`` the replication layer's state machine (``ReplicatedApp``: batches,
exactly-once client sessions, one snapshot blob); ``kv`` the key-value store, one
application; ``loader`` finds an application by its import path; ``service`` the
service node (replica + state machine + client requests).
"""

from pyxos.statemachine.base import Application, Applied, StateMachine
from pyxos.statemachine.kv import (
    DEFAULT_LIST_LIMIT,
    MAX_KEY_BYTES,
    MAX_LIST_BYTES,
    MAX_LIST_ENTRIES,
    MAX_VALUE_BYTES,
    OPS,
    Command,
    KVStore,
    Result,
    decode_batch,
    decode_result,
    encode_batch,
    encode_result,
    validate_command,
)
from pyxos.statemachine.loader import DEFAULT_APP, load_factory, make_app
from pyxos.statemachine.replicated import (
    DEFAULT_MAX_SESSIONS,
    ReplicatedApp,
    ReplicatedAppWithoutDedup,
)

__all__ = [
    "DEFAULT_APP",
    "DEFAULT_LIST_LIMIT",
    "DEFAULT_MAX_SESSIONS",
    "MAX_KEY_BYTES",
    "MAX_LIST_BYTES",
    "MAX_LIST_ENTRIES",
    "MAX_VALUE_BYTES",
    "OPS",
    "Application",
    "Applied",
    "Command",
    "KVStore",
    "ReplicatedApp",
    "ReplicatedAppWithoutDedup",
    "Result",
    "StateMachine",
    "decode_batch",
    "decode_result",
    "encode_batch",
    "encode_result",
    "load_factory",
    "make_app",
    "validate_command",
]
