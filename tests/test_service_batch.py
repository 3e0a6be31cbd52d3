"""The batch paths of the service node: ``step_requests`` (every request of one client
connection in one call) does exactly what stepping each request with its ``src`` set
does, at a leader and at a follower."""

from __future__ import annotations

import random

import msgspec

from pyxos.core.ballot import Ballot
from pyxos.core.messages import ClientReplies, ClientReply, ClientRequest, Commit, Message
from pyxos.core.quorum import Majority
from pyxos.core.ready import Send
from pyxos.core.replica import Replica, ReplicaConfig, Role
from pyxos.statemachine.kv import Command, KVStore
from pyxos.statemachine.service import ServiceNode

CFG = ReplicaConfig(election_timeout=(0.1, 0.2), heartbeat_interval=0.02)
CLIENT = 1_000_000  # a client connection id (never a member)
enc = msgspec.msgpack.Encoder()


def leader_of_1() -> ServiceNode:
    """A one-node cluster's node, leading."""
    replica = Replica(1, Majority([1]), random.Random(1), config=CFG, now=0.0)
    node = ServiceNode(replica, KVStore())
    t = 0.0
    while replica.role is not Role.LEADER:
        t += 0.05
        assert t < 5.0, "no leader"
        node.tick(t)
        node.ready()
        node.advance()
    return node


def follower_of_3() -> ServiceNode:
    """Node 2 of {1, 2, 3}, following node 3 (it heard a heartbeat)."""
    replica = Replica(2, Majority([1, 2, 3]), random.Random(2), config=CFG, now=0.0)
    node = ServiceNode(replica, KVStore())
    node.tick(0.01)
    node.step(Commit(3, Ballot(1, 3), 0))
    node.ready()
    node.advance()
    assert node.usable_leader() == 3
    return node


def put(client: int, seq: int, key: str = "k", value: str | None = "v") -> ClientRequest:
    """A put as a client sends it (``src`` 0: the node sets it)."""
    return ClientRequest(0, client, seq, enc.encode(Command(client, seq, "put", key, value)))


def get(client: int, seq: int, key: str = "k") -> ClientRequest:
    """A get, sent as a query."""
    return ClientRequest(0, client, seq, enc.encode(Command(client, seq, "get", key)), True)


def mixed() -> list[ClientRequest]:
    """Writes, a refused write, garbage, a query and a duplicate, interleaved."""
    return [
        put(7, 1),
        put(8, 1, value=None),  # refused by validate: a put needs a value
        ClientRequest(0, 9, 1, b"\x92garbage"),  # refused: not a command
        get(10, 1),
        put(11, 1, key="j"),
        put(7, 1),  # a duplicate of a request in flight: one entry in the batch
    ]


def run(node: ServiceNode, rounds: int = 3) -> list[tuple[tuple[int, ...], Message]]:
    """Drive ``node`` for a few passes (a one-node leader chooses on its own);
    everything it sent, in order, and the values it proposed."""
    out: list[tuple[tuple[int, ...], Message]] = []
    for _ in range(rounds):
        r = node.ready()
        sends: list[Send] = [*r.send_now, *r.send_after_sync]
        out += [(s.to, s.msg) for s in sends]
        if r.persist:
            out += [((0,), ClientRequest(0, 0, 0, a.value)) for a in r.persist.accepted]
        node.advance()
        for s in sends:
            if s.to == (node.node_id,):
                node.step(s.msg)
    return out


def test_a_leader_steps_a_batch_as_it_steps_each_request() -> None:
    one, batched = leader_of_1(), leader_of_1()
    for msg in mixed():
        one.step(msgspec.structs.replace(msg, src=CLIENT))
    batched.step_requests(CLIENT, mixed())
    assert batched.batch == one.batch
    assert batched.waiting == one.waiting == {(7, 1): CLIENT, (11, 1): CLIENT}
    assert (batched.requests, batched.rejected) == (one.requests, one.rejected) == (6, 2)
    out_one, out_batched = run(one), run(batched)
    assert out_batched == out_one
    replies = [m for to, m in out_one if to == (CLIENT,) and isinstance(m, ClientReply)]
    # Two refusals (with their errors), the query's answer, two results (7 and 11).
    assert sorted((r.client, r.ok, r.error is not None) for r in replies) == [
        (7, True, False),
        (8, True, True),
        (9, True, True),
        (10, True, False),
        (11, True, False),
    ]


def test_a_follower_forwards_a_batch_naming_the_connection() -> None:
    node = follower_of_3()
    node.step_requests(CLIENT, [put(7, 1), get(8, 1)])
    assert node.forwarded.keys() == {(7, 1), (8, 1)}
    assert {asker for asker, _, _ in node.forwarded.values()} == {CLIENT}
    r = node.ready()
    assert [(s.to, type(s.msg)) for s in r.send_now] == [((3,), ClientRequest)] * 2
    assert not node.batch and not node.waiting


def test_a_query_in_a_batch_leaves_the_writes_around_it_in_order() -> None:
    """A request the leader does not take in line (a query) is stepped in its place:
    the writes after it still join this pass's batch, in order."""
    node = leader_of_1()
    node.step_requests(CLIENT, [put(1, 1), get(2, 1), put(3, 1)])
    assert [client for client, _, _ in node.batch] == [1, 3]


def test_batch_replies_groups_the_replies_of_a_pass_per_destination() -> None:
    """With ``batch_replies`` a leader sends one ``ClientReplies`` per destination with
    more than one reply (in the order applied) and a plain ``ClientReply`` to one with
    a single reply: the same replies as without it."""
    plain, grouped = leader_of_1(), leader_of_1()
    grouped.batch_replies = True
    other = CLIENT + 1
    for node in (plain, grouped):
        node.step_requests(CLIENT, [put(1, 1), put(2, 1)])
        node.step_requests(other, [put(3, 1)])
        node.step_requests(CLIENT, [put(4, 1)])
    flat = [(to, m) for to, m in run(plain) if isinstance(m, ClientReply)]
    out = [(to, m) for to, m in run(grouped) if isinstance(m, ClientReply | ClientReplies)]
    assert [(to, type(m)) for to, m in out] == [((CLIENT,), ClientReplies), ((other,), ClientReply)]
    batch = out[0][1]
    assert isinstance(batch, ClientReplies) and batch.src == 1
    opened = [((CLIENT,), r) for r in batch.replies] + [out[1]]
    assert sorted(opened, key=lambda x: x[1].client) == sorted(flat, key=lambda x: x[1].client)
    assert [r.client for r in batch.replies] == [1, 2, 4]


def test_a_follower_relays_each_reply_of_a_batch() -> None:
    """A ``ClientReplies`` reaching a node (not sent between peers today, but a later
    version may) is relayed reply by reply, like single ones."""
    node = follower_of_3()
    node.step_requests(CLIENT, [put(7, 1), put(8, 1)])
    node.ready()
    node.advance()
    node.step(
        ClientReplies(3, [ClientReply(3, 7, 1, True, b"a", 3), ClientReply(3, 8, 1, True, b"b", 3)])
    )
    r = node.ready()
    assert [(s.to, s.msg.client) for s in r.send_now] == [((CLIENT,), 7), ((CLIENT,), 8)]  # type: ignore[union-attr]
    assert not node.forwarded


def test_batch_replies_groups_the_answers_to_queries_per_destination() -> None:
    """The queries released in one pass are answered like the writes: one
    ``ClientReplies`` per destination with several, the same answers as without."""
    plain, grouped = leader_of_1(), leader_of_1()
    grouped.batch_replies = True
    other = CLIENT + 1
    for node in (plain, grouped):
        node.step_requests(CLIENT, [put(1, 1, key="a", value="x")])
        run(node)  # the value is applied before the queries
        node.step_requests(CLIENT, [get(2, 1, key="a"), get(3, 1, key="b")])
        node.step_requests(other, [get(4, 1, key="a")])
    flat = [(to, m) for to, m in run(plain) if isinstance(m, ClientReply)]
    out = [(to, m) for to, m in run(grouped) if isinstance(m, ClientReply | ClientReplies)]
    assert [(to, type(m)) for to, m in out] == [((CLIENT,), ClientReplies), ((other,), ClientReply)]
    batch = out[0][1]
    assert isinstance(batch, ClientReplies)
    assert [r.client for r in batch.replies] == [2, 3]
    opened = [((CLIENT,), r) for r in batch.replies] + [out[1]]
    assert sorted(opened, key=lambda x: x[1].client) == sorted(flat, key=lambda x: x[1].client)
    assert len(flat) == 3 and all(m.ok for _, m in flat)
