"""pyxos.client: async and blocking clients of the replicated KV store.

Theory of operation
-------------------
The client engine (``pyxos.client.engine``) decides what happens to a command that is
not answered at once: leader discovery, redirects, backoff, retries with the same
``(client_id, seq)`` so a retried write applies once, and ``OutcomeUnknown`` when no
answer comes in time. ``AsyncClient`` (``pyxos.client.aio``, one connection per node)
and ``ClientPool`` sessions (``pyxos.client.mux``, many logical clients over few
connections) are its transports over the binary protocol; ``LocalClients``
(``pyxos.client.local``) is its transport for code beside a node (the HTTP API).
``Client`` (``pyxos.client.sync``) wraps ``AsyncClient`` for blocking code.
``HistoryFile`` writes the operations a client records as JSON lines for the
linearizability checker.
"""

from pyxos.client.aio import (
    DEFAULT_CLUSTER,
    AsyncClient,
    ClientError,
    CommandRejected,
    ListPage,
    NotKeyValue,
    OutcomeUnknown,
    new_client_id,
)
from pyxos.client.engine import NodeUnavailable, NoLeader
from pyxos.client.history import HistoryFile
from pyxos.client.local import LocalClients
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
    "LocalClients",
    "NoLeader",
    "NodeUnavailable",
    "NotKeyValue",
    "OutcomeUnknown",
    "Session",
    "new_client_id",
]
