"""Embedded pyxos nodes: a node inside the program's own process (asyncio, or a
blocking facade on a background thread), hosting replicated objects or any
application; see docs/architecture.md, *Replicated objects*."""

from pyxos.embedded.blocking import BlockingNode, BlockingProxy
from pyxos.embedded.node import (
    DEFAULT_CLUSTER,
    CommandRejected,
    EmbeddedNode,
    NodeStopped,
    OutcomeUnknown,
    Session,
    node_config,
)

__all__ = [
    "DEFAULT_CLUSTER",
    "BlockingNode",
    "BlockingProxy",
    "CommandRejected",
    "EmbeddedNode",
    "NodeStopped",
    "OutcomeUnknown",
    "Session",
    "node_config",
]
