"""pyxos.client: async and blocking clients of the replicated KV store.

Theory of operation
-------------------
``AsyncClient`` (``pyxos.client.aio``) speaks the binary protocol: leader discovery,
redirects, retries with the same ``(client_id, seq)`` so a retried write applies once,
and ``OutcomeUnknown`` when no answer comes in time. ``Client`` (``pyxos.client.sync``)
wraps it for blocking code. ``HistoryFile`` writes the operations a client records as
JSON lines for the linearizability checker.
"""

from pyxos.client.aio import (
    DEFAULT_CLUSTER,
    AsyncClient,
    ClientError,
    CommandRejected,
    ListPage,
    OutcomeUnknown,
    new_client_id,
)
from pyxos.client.history import HistoryFile
from pyxos.client.mux import ClientPool, Session
from pyxos.client.sync import Client

__all__ = [
    "DEFAULT_CLUSTER",
    "AsyncClient",
    "Client",
    "ClientError",
    "ClientPool",
    "CommandRejected",
    "HistoryFile",
    "ListPage",
    "OutcomeUnknown",
    "Session",
    "new_client_id",
]
