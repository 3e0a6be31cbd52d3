"""A replicated service node: a Multi-Paxos replica, a state machine and its clients.

Theory of operation
-------------------
:class:`ServiceNode` is pure, like the replica it wraps, and offers the same driver
contract (``step / tick / ready / advance / next_deadline``), so the simulator and the
real server drive it identically. It adds what sits between clients and the log:

- **Client requests.** A ``ClientRequest`` at a node that does not lead is answered
  with a redirect naming the leader it knows. At the leader, the command is decoded once
  (to validate it; garbage gets an error reply and never reaches the log) and its
  original bytes join the batch of this pass. A duplicate of a request in flight here
  only updates where the reply goes. Any other retry goes through the log like a new
  command: exactly-once lives in one place, the state machine's session table, which
  answers a retry with the stored result instead of applying it again.
- **Batching.** Everything that arrived since the last ``ready()`` becomes *one* slot
  value: a msgpack array whose elements are the clients' own encoded commands
  (``msgspec.Raw``), so nothing is re-encoded. Batches grow with load by themselves;
  a lone client pays no wait.
- **Applying.** ``ready()`` applies the replica's newly chosen slots to the state
  machine in slot order, exactly once, and answers every request this node is holding
  with the encoded result (``send_now``: a chosen value is already durable on a
  quorum).
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from pyxos.core.messages import ClientReply, ClientRequest, Message
from pyxos.core.ready import Ready, Send
from pyxos.core.replica import Replica
from pyxos.statemachine.kv import Command, KVStore, Result, encode_result, validate_command

__all__ = ["ServiceNode"]

_command_decoder = msgspec.msgpack.Decoder(Command)
_raw_encoder = msgspec.msgpack.Encoder()


class ServiceNode:
    """A replica plus the state machine it feeds and the client requests it serves."""

    def __init__(
        self,
        replica: Replica,
        store: KVStore,
        *,
        max_batch: int = 4096,
        on_applied: Callable[[int, int], None] | None = None,
    ) -> None:
        self.replica = replica
        self.store: KVStore = store
        self.max_batch = max_batch
        self.waiting: dict[tuple[int, int], int] = {}
        """(client, seq) -> where to send its reply. Only requests this node proposed
        (or was asked about while they were in flight) are here."""
        self.batch: list[msgspec.Raw] = []
        self.on_applied = on_applied
        self.requests = 0
        self.rejected = 0
        if store.applied_slot > replica.first_unchosen:
            replica.skip_to(store.applied_slot)

    @property
    def node_id(self) -> int:
        """This node's id."""
        return self.replica.node_id

    def step(self, msg: Message) -> None:
        """Feed one message: client requests here, protocol messages to the replica."""
        if isinstance(msg, ClientRequest):
            self._on_request(msg)
        else:
            self.replica.step(msg)

    def tick(self, now: float) -> None:
        """Advance time."""
        self.replica.tick(now)

    def ready(self) -> Ready:
        """Propose this pass's batch, then apply what is chosen and add the replies."""
        replica = self.replica
        if self.batch:
            while self.batch:
                chunk, self.batch = self.batch[: self.max_batch], self.batch[self.max_batch :]
                if not replica.propose(_raw_encoder.encode(chunk)):
                    self._redirect_pending()
                    self.batch.clear()
        r = replica.ready()
        if r.committed:
            self._apply(r)
        return r

    def advance(self) -> None:
        """The driver carried out the last ``ready()``."""
        self.replica.advance()

    def next_deadline(self) -> float | None:
        """When ``tick`` must next be called."""
        return self.replica.next_deadline()

    # -- internals -------------------------------------------------------------------

    def _reply(self, dst: int, msg: ClientRequest, ok: bool, result: bytes = b"") -> None:
        reply = ClientReply(self.node_id, msg.client, msg.seq, ok, result, self.replica.leader)
        self.replica.post((dst,), reply)

    def _on_request(self, msg: ClientRequest) -> None:
        self.requests += 1
        if not self.replica.is_leader:
            self._reply(msg.src, msg, False)
            return
        try:
            cmd = _command_decoder.decode(msg.command)
            validate_command(cmd)
            if cmd.client != msg.client or cmd.seq != msg.seq:
                raise ValueError("request and command disagree on (client, seq)")
        except (msgspec.DecodeError, ValueError) as e:
            self.rejected += 1
            self._reply(msg.src, msg, True, encode_result(Result(ok=False, error=str(e))))
            return
        key = (msg.client, msg.seq)
        if key not in self.waiting:
            self.batch.append(msgspec.Raw(msg.command))
        self.waiting[key] = msg.src

    def _redirect_pending(self) -> None:
        for (client, seq), dst in self.waiting.items():
            reply = ClientReply(self.node_id, client, seq, False, b"", self.replica.leader)
            self.replica.post((dst,), reply)
        self.waiting.clear()

    def _apply(self, r: Ready) -> None:
        store = self.store
        waiting = self.waiting
        me = self.node_id
        leader = self.replica.leader
        sends = r.send_now
        for entry in r.committed:
            if entry.slot < store.applied_slot:
                continue  # covered by a restored snapshot
            for applied in store.apply(entry.slot, entry.value):
                dst = waiting.pop((applied.client, applied.seq), None)
                if dst is not None:
                    reply = ClientReply(
                        me, applied.client, applied.seq, True, applied.result, leader
                    )
                    sends.append(Send((dst,), reply))
            if self.on_applied is not None:
                self.on_applied(me, entry.slot)
