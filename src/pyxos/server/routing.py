"""Where what a node sends goes: back to itself, to a client, or to a peer.

Theory of operation
-------------------
A ``Send`` names node ids; the router encodes its message once for every destination
(a frame over the limit is dropped, counted and logged: the protocol tolerates a lost
message, an exception would abandon the Ready half done) and hands it on:

- to this node itself: queued and delivered as one input batch at the end of the
  event-loop pass (``call_soon``), never stepped re-entrantly, as the simulator
  delivers it as a separate event (a leader's own ``Accepted`` after its fsync);
- to a client id (``>= CLIENT_ID_BASE``): the client port (``server.clients``); the
  replies of one pass for one connection (``ClientReplies``) leave as one frame, or
  one frame per reply for a client of protocol 1 (``net.codec``);
- to a peer: its link (``pyxos.net.link.PeerLinks``); not a member: dropped. A
  ``ClientReplies`` goes one frame per reply: the peer protocol is unchanged.

Messages from a peer link are fed to the node only if they name that peer as their
sender; the others are dropped and counted (docs/architecture.md, *Network*).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial

from pyxos.core.messages import ClientReplies, Message
from pyxos.core.ready import Send
from pyxos.net.codec import encode_message, encode_replies
from pyxos.net.link import PeerLinks
from pyxos.server.clients import CLIENT_ID_BASE, ClientPort
from pyxos.server.effects import DriverStats

__all__ = ["Router"]

logger = logging.getLogger("pyxos.server")


class Router:
    """Routes a node's ``Send`` values; ``feed`` hands messages back to the node."""

    def __init__(
        self,
        node_id: int,
        stats: DriverStats,
        clients: ClientPort,
        feed: Callable[[list[Message]], None],
    ) -> None:
        self.node_id = node_id
        self.stats = stats
        self.clients = clients
        self.feed = feed
        self.links: PeerLinks | None = None
        """The peer links (set once they exist)."""
        self.loop: asyncio.AbstractEventLoop | None = None
        self._local: list[Message] = []
        self._local_scheduled = False

    def send(self, send: Send) -> None:
        """Deliver one ``Send``: to ourselves (next pass), a client, or a peer link."""
        me = self.node_id
        msg = send.msg
        to = send.to
        if len(to) == 1 and to[0] >= CLIENT_ID_BASE:
            # Client replies, one message per connection and pass on a leader: straight
            # to the connection, a ClientReplies as one frame (client protocol 2).
            clients = self.clients
            conn = clients.connections.get(to[0])
            if conn is not None:
                if type(msg) is ClientReplies:
                    data = self.encode(msg, to[0] not in clients.single)
                else:
                    data = self.encode(msg)
                if data:
                    conn.send(data)
                return
        frame: bytes | None = None  # encoded once, for every destination
        links = self.links
        for dst in to:
            if dst == me:
                if type(msg) is ClientReplies:
                    self._local.extend(msg.replies)
                else:
                    self._local.append(msg)
                if not self._local_scheduled and self.loop is not None:
                    self._local_scheduled = True
                    self.loop.call_soon(self._deliver_local)
            elif dst >= CLIENT_ID_BASE:
                # A sink (in-process client) or a connection (then encoded, rare).
                self.clients.deliver(dst, msg, partial(self.encode, msg, False))
            elif links is not None:
                # A broadcast (Accept, Commit) to every peer: one frame, no call per
                # peer but the link's send (a peer that is not a member: dropped).
                if frame is None:
                    frame = self.encode(msg, False)
                if frame:
                    try:  # noqa: SIM105 (contextlib.suppress: three calls per send)
                        links.send(dst, frame)
                    except KeyError:
                        pass

    def encode(self, msg: Message, batched: bool = True) -> bytes:
        """The frame of ``msg``; empty (dropped, counted, logged) if it is over the limit.

        A ``ClientReplies`` is one frame if ``batched`` (a client connection of client
        protocol 2), else one frame per reply (``net.codec.encode_replies``): peers
        and older clients get replies one by one. The protocol tolerates a lost
        message; an exception here would abandon the Ready half done.
        """
        try:
            if type(msg) is ClientReplies:
                return encode_replies(msg, batched=batched)
            return encode_message(msg)
        except ValueError as e:
            self.stats.oversized_dropped += 1
            logger.error("node %d: dropped a message: %s", self.node_id, e)
            return b""

    def deliver_local(self) -> None:
        """Feed the messages this node sent itself now, not at the end of the pass."""
        msgs, self._local = self._local, []
        if msgs:
            self.feed(msgs)

    def _deliver_local(self) -> None:
        self._local_scheduled = False
        self.deliver_local()

    def on_peer_messages(self, peer: int, msgs: list[Message]) -> None:
        """Messages from a peer link: a peer speaks only for itself."""
        # A peer speaks only for itself: a message naming another sender is dropped and
        # counted, never stepped. (Client requests and replies do come from peers: a
        # follower forwards its clients' requests to the leader and relays the reply.)
        if all(m.src == peer for m in msgs):
            self.feed(msgs)
            return
        good = [m for m in msgs if m.src == peer]
        self.stats.dropped_peer_messages += len(msgs) - len(good)
        if good:
            self.feed(good)
