"""What a running node shows of itself: its ports, its role, its pure node.

Theory of operation
-------------------
``NodeViews`` is the read-only face of ``pyxos.server.node.NodeServer`` (which
inherits it): the bound ports, the counters of the client connections, whether it
runs and leads. Every property reads the state the node server keeps (its driver,
client port, peer server, HTTP API); none changes anything, except the two setters
that the server's ``startup`` uses to hand the pure node and its WAL to the driver and
the effects.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pyxos.statemachine.service import ServiceNode
from pyxos.storage.durable import DurableAcceptor

if TYPE_CHECKING:
    from pyxos.driver import ReadyDriver
    from pyxos.net.link import FramedServer, PeerServer
    from pyxos.server.clients import ClientPort
    from pyxos.server.config import Config
    from pyxos.server.effects import ServerEffects
    from pyxos.server.http import HttpApi

__all__ = ["NodeViews"]


class NodeViews:
    """The read-only properties of a node server (see the module notes)."""

    config: Config
    driver: ReadyDriver
    effects: ServerEffects
    clients: ClientPort
    peer_server: PeerServer | None
    http: HttpApi | None
    _closing: bool

    @property
    def node(self) -> ServiceNode | None:
        """The pure node being driven (set by ``startup``)."""
        return self.driver.node  # type: ignore[return-value]

    @node.setter
    def node(self, node: ServiceNode | None) -> None:
        self.driver.node = node

    @property
    def durable(self) -> DurableAcceptor | None:
        """The node's durable acceptor state (its WAL; set by ``startup``)."""
        return self.effects.durable

    @durable.setter
    def durable(self, durable: DurableAcceptor | None) -> None:
        self.effects.durable = durable

    @property
    def client_counters(self) -> dict[str, int]:
        """Counters of the client connections."""
        return self.clients.counters

    @property
    def client_server(self) -> FramedServer | None:
        """The listening client port (after ``startup``)."""
        return self.clients.server

    @property
    def client_port(self) -> int:
        """The bound client port (after ``startup``; useful with port 0)."""
        assert self.clients.server is not None, "not started"
        return self.clients.server.port

    @property
    def peer_port(self) -> int:
        """The bound peer port (after ``startup``)."""
        assert self.peer_server is not None, "not started"
        return self.peer_server.port

    @property
    def snapshot_dir(self) -> Path:
        """Where this node's snapshot files live (beside the WAL)."""
        return self.config.data_dir / "snapshots"

    @property
    def http_port(self) -> int | None:
        """The bound HTTP port (None when the HTTP API is off)."""
        return None if self.http is None else self.http.port

    @property
    def running(self) -> bool:
        """True from a successful ``startup`` until ``shutdown`` (or a fatal error)."""
        return self.node is not None and not self._closing

    @property
    def is_leader(self) -> bool:
        """Whether this node leads right now."""
        return self.node is not None and self.node.replica.is_leader

    @property
    def leader(self) -> int:
        """The leader this node believes in (0: unknown)."""
        return 0 if self.node is None else self.node.replica.leader
