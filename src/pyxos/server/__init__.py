"""pyxos.server: the node runtime that drives the pure protocol on real sockets and disks.

Theory of operation
-------------------
``Config`` (``config``) holds every setting of one node, read from TOML and validated.
``NodeServer`` (``node``) drives one ``ServiceNode`` exactly like the simulator does:
persist to the write-ahead log (``durable``: the core's ``Persist`` records as WAL
records, group commit with one fsync in flight), send, wait for the fsync before any
acceptor reply leaves, apply, advance. Peers talk over ``pyxos.net`` links; clients over
the same framing on their own port, or HTTP (``http``). ``run(config)`` is both the
programmatic entry point and what ``python -m pyxos.server`` calls.
"""

from pyxos.server.config import Config, ConfigError
from pyxos.server.node import CLIENT_ID_BASE, NodeFailed, NodeServer, NodeStartupError
from pyxos.server.process import run
from pyxos.storage.durable import AcceptorStateLost, DurableAcceptor, DurableStateError

__all__ = [
    "CLIENT_ID_BASE",
    "AcceptorStateLost",
    "Config",
    "ConfigError",
    "DurableAcceptor",
    "DurableStateError",
    "NodeFailed",
    "NodeServer",
    "NodeStartupError",
    "run",
]
