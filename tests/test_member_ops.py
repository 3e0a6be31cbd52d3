"""Member operations at the leader (statemachine/members.py): list, add, promote,
remove, replace asked of any node as client commands, checked and done by the leader's
MemberDesk, on pure service nodes wired by a lossless in-memory network."""

import json
import random

from pyxos.core.membership import Configuration
from pyxos.core.messages import ClientReply, ClientRequest, Message
from pyxos.core.replica import Replica, ReplicaConfig
from pyxos.statemachine.kv import KVStore
from pyxos.statemachine.members import (
    MEMBER_MAGIC,
    MemberOp,
    decode_member_op,
    encode_member_op,
)
from pyxos.statemachine.service import ServiceNode

CFG = ReplicaConfig(election_timeout=(0.1, 0.2), heartbeat_interval=0.02, window=8)
FOUNDING = Configuration(0, (1, 2, 3), alpha=8)
CLIENT = 1 << 40
"""The address of the test's client (any id that is not a node)."""


class Net:
    """Pure service nodes; every message delivered at the next step, none lost."""

    def __init__(self, ids: list[int]) -> None:
        self.nodes: dict[int, ServiceNode] = {}
        self.down: set[int] = set()
        self.now = 0.0
        self.replies: dict[int, ClientReply] = {}
        self.seq = 0
        self.inbox: list[tuple[int, Message]] = []
        for i in ids:
            self.start(i)

    def start(self, node_id: int) -> None:
        replica = Replica(node_id, FOUNDING, random.Random(node_id), config=CFG, now=self.now)
        self.nodes[node_id] = ServiceNode(replica, KVStore(), snapshot_every=10**9)

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now += 0.005
            inbox, self.inbox = self.inbox, []
            for dst, msg in inbox:
                if dst == CLIENT and isinstance(msg, ClientReply):
                    self.replies[msg.seq] = msg
                elif dst in self.nodes and dst not in self.down and msg.src not in self.down:
                    self.nodes[dst].step(msg)
            for node_id, node in self.nodes.items():
                if node_id in self.down:
                    continue
                node.tick(self.now)
                r = node.ready()
                for send in r.send_now + r.send_after_sync:
                    self.inbox.extend((dst, send.msg) for dst in send.to)
                node.advance()

    def leader(self) -> int:
        leaders = [i for i, n in self.nodes.items() if n.replica.is_leader and i not in self.down]
        return leaders[0] if len(leaders) == 1 else 0

    def ask(self, at: int, op: MemberOp | bytes, seconds: float = 1.5) -> ClientReply:
        """Send a member operation to node ``at``; run until its answer."""
        self.seq += 1
        command = op if isinstance(op, bytes) else encode_member_op(op)
        self.nodes[at].step(ClientRequest(CLIENT, 77, self.seq, command))
        for _ in range(int(seconds / 0.05)):
            self.run(0.05)
            if self.seq in self.replies:
                return self.replies.pop(self.seq)
        raise AssertionError(f"no answer to {op!r} within {seconds} s")


def elected(ids: list[int]) -> Net:
    net = Net(ids)
    for _ in range(40):
        net.run(0.05)
        if net.leader():
            return net
    raise AssertionError("no leader")


def body(reply: ClientReply) -> dict[str, object]:
    return json.loads(reply.result)  # type: ignore[no-any-return]


def test_list_at_any_node_is_the_leaders_view() -> None:
    net = elected([1, 2, 3])
    follower = next(i for i in (1, 2, 3) if i != net.leader())
    reply = net.ask(follower, MemberOp(op="list"))
    assert reply.ok and reply.error is None
    doc = body(reply)
    assert doc["voters"] == [1, 2, 3] and doc["learners"] == []
    assert doc["node"] == net.leader(), "forwarded to the leader, answered there"


def test_add_promote_remove_replace() -> None:
    net = elected([1, 2, 3])
    leader = net.leader()
    net.start(4)
    reply = net.ask(leader, MemberOp(op="add", node=4, address="127.0.0.1:7004"))
    assert reply.error is None, reply.error
    assert body(reply)["configuration"]["learners"] == [4]  # type: ignore[index]
    assert body(reply)["configuration"]["addresses"] == {"4": "127.0.0.1:7004"}  # type: ignore[index]
    net.run(0.3)
    reply = net.ask(leader, MemberOp(op="promote", node=4))
    assert reply.error is None, reply.error
    net.run(0.3)
    assert net.nodes[leader].replica.configuration.voters == (1, 2, 3, 4)
    # remove a follower, then replace another by a new id
    others = [i for i in (1, 2, 3) if i != leader]
    reply = net.ask(leader, MemberOp(op="remove", node=others[0]))
    assert reply.error is None, reply.error
    net.run(0.3)
    net.start(5)
    reply = net.ask(leader, MemberOp(op="replace", node=others[1], new=5, address="h:5"))
    assert reply.error is None, reply.error
    net.run(0.3)
    assert net.nodes[leader].replica.configuration.voters == tuple(sorted([leader, 4, 5]))
    # a retry of a change already made is answered as done, not refused
    again = net.ask(leader, MemberOp(op="remove", node=others[0]))
    assert again.error is None and "already removed" in str(body(again)["done"])


def test_promote_refuses_a_learner_that_is_not_running() -> None:
    net = elected([1, 2, 3])
    leader = net.leader()
    net.nodes[leader].members.catchup_seconds = 0.3
    net.start(4)
    net.down.add(4)
    assert net.ask(leader, MemberOp(op="add", node=4, address="h:4")).error is None
    reply = net.ask(leader, MemberOp(op="promote", node=4))
    assert reply.error is not None and "did not answer" in reply.error
    assert 4 not in net.nodes[leader].replica.membership.latest.voters


def test_promote_refuses_a_learner_that_is_behind() -> None:
    net = elected([1, 2, 3])
    leader = net.leader()
    desk = net.nodes[leader].members
    desk.catchup_seconds = 0.2
    net.start(4)
    assert net.ask(leader, MemberOp(op="add", node=4, address="h:4")).error is None
    net.run(0.2)
    # Node 4 answers, but claims to know nothing: it is behind.
    behind = net.nodes[4].replica
    behind.first_unchosen = 0
    real_progress = desk._progress

    def frozen() -> dict[str, object]:
        return {**real_progress(), "first_unchosen": 0}

    net.nodes[4].members._progress = frozen  # type: ignore[method-assign]
    reply = net.ask(leader, MemberOp(op="promote", node=4))
    assert reply.error is not None and "not caught up" in reply.error, reply.error


def test_one_change_at_a_time() -> None:
    net = elected([1, 2, 3])
    leader = net.leader()
    node = net.nodes[leader]
    net.seq += 2
    a, b = net.seq - 1, net.seq
    node.step(ClientRequest(CLIENT, 5, a, encode_member_op(MemberOp(op="add", node=4))))
    net.run(0.01)  # the first one is in its progress round, or proposed
    node.replica.config_change = 99  # as if proposed and not chosen yet
    node.step(ClientRequest(CLIENT, 5, b, encode_member_op(MemberOp(op="add", node=5))))
    net.run(0.05)
    reply = net.replies.pop(b)
    assert reply.error is not None and "one change at a time" in reply.error


def test_a_change_that_leaves_no_live_quorum_is_refused() -> None:
    net = elected([1, 2, 3])
    leader = net.leader()
    others = [i for i in (1, 2, 3) if i != leader]
    net.down.add(others[0])
    # Removing the live follower would leave voters {leader, dead}: no live majority.
    reply = net.ask(leader, MemberOp(op="remove", node=others[1]))
    assert reply.error is not None and "no live quorum" in reply.error, reply.error
    assert f"not from [{others[0]}]" in reply.error
    # Removing the dead one leaves {leader, live follower}: fine.
    reply = net.ask(leader, MemberOp(op="remove", node=others[0]))
    assert reply.error is None, reply.error


def test_bad_requests_get_clear_errors_and_the_node_keeps_serving() -> None:
    net = elected([1, 2, 3])
    leader = net.leader()
    cases = {
        MEMBER_MAGIC + b"\xff\x00garbage": "malformed member operation",
        encode_member_op(MemberOp(op="explode", node=1)): "unknown member operation",
        encode_member_op(MemberOp(op="promote", node=9)): "is not a learner",
        encode_member_op(MemberOp(op="remove", node=9)): "is not a member",
        encode_member_op(MemberOp(op="add", node=2)): "already a voter",
        encode_member_op(MemberOp(op="add", node=0)): "node id >= 1",
        encode_member_op(MemberOp(op="add", node=4, address="nohost")): "is not host:port",
        encode_member_op(MemberOp(op="replace", node=9, new=10)): "is not a voter",
    }
    for command, expected in cases.items():
        reply = net.ask(leader, command)
        assert reply.error is not None and expected in reply.error, (expected, reply.error)
    assert net.ask(leader, MemberOp(op="list")).error is None


def test_a_removed_id_is_never_reused() -> None:
    net = elected([1, 2, 3])
    leader = net.leader()
    net.start(4)
    assert net.ask(leader, MemberOp(op="add", node=4, address="h:4")).error is None
    net.run(0.3)
    assert net.ask(leader, MemberOp(op="remove", node=4)).error is None
    net.run(0.5)
    reply = net.ask(leader, MemberOp(op="add", node=4, address="h:4"))
    assert reply.error is not None and "never reused" in reply.error, reply.error


def test_decode_round_trip() -> None:
    op = MemberOp(op="replace", node=3, new=6, address="127.0.0.1:9")
    assert decode_member_op(encode_member_op(op)) == op


def test_a_retry_of_an_answered_request_gets_the_same_answer() -> None:
    net = elected([1, 2, 3])
    leader = net.leader()
    net.start(4)
    op = encode_member_op(MemberOp(op="add", node=4, address="h:4"))
    first = net.ask(leader, op)
    assert first.error is None and "add node 4" in str(body(first)["done"])
    net.nodes[leader].step(ClientRequest(CLIENT, 77, net.seq, op))  # the same (client, seq)
    net.run(0.05)
    again = net.replies.pop(net.seq)
    assert again.result == first.result


def test_quorum_sizes_of_a_change_and_a_learner_keeps_them() -> None:
    net = elected([1, 2, 3])
    leader = net.leader()
    net.start(4)
    assert net.ask(leader, MemberOp(op="add", node=4, address="h:4")).error is None
    net.run(0.3)
    bad = net.ask(leader, MemberOp(op="promote", node=4, q1=2, q2=2))
    assert bad.error is not None and "do not intersect" in bad.error, bad.error
    good = net.ask(leader, MemberOp(op="promote", node=4, q1=3, q2=2))
    assert good.error is None, good.error
    latest = net.nodes[leader].replica.membership.latest
    assert (latest.voters, latest.q1, latest.q2) == ((1, 2, 3, 4), 3, 2)
    net.start(5)
    assert net.ask(leader, MemberOp(op="add", node=5, address="h:5")).error is None
    latest = net.nodes[leader].replica.membership.latest
    assert (latest.learners, latest.q1, latest.q2) == ((5,), 3, 2), "a learner keeps the sizes"


def test_an_address_a_member_has_is_refused_for_a_new_node() -> None:
    # Found by the adversarial review: "member add 5 --addr <node 4's address>" was
    # made; node 5's links were dialed at node 4, whose handshake names node 4, so node
    # 5 could never be reached (or started: the port is taken), and its id was spent.
    net = elected([1, 2, 3])
    leader = net.leader()
    net.start(4)
    assert net.ask(leader, MemberOp(op="add", node=4, address="h:4")).error is None
    net.run(0.3)
    reply = net.ask(leader, MemberOp(op="add", node=5, address="h:4"))
    assert reply.error is not None and "is node 4's" in reply.error, reply.error
    reply = net.ask(leader, MemberOp(op="replace", node=leader, new=5, address="h:4"))
    assert reply.error is not None and "is node 4's" in reply.error, reply.error
    assert net.nodes[leader].replica.configuration.nodes == (1, 2, 3, 4)
    # The address of the voter being replaced is the new node's to take (same machine).
    assert net.ask(leader, MemberOp(op="promote", node=4)).error is None
    net.run(0.3)
    net.start(6)
    reply = net.ask(leader, MemberOp(op="replace", node=4, new=6, address="h:4"))
    assert reply.error is None, reply.error


def test_a_rebuilding_node_is_not_counted_live() -> None:
    # Adversarial review: a node rebuilding after a wiped disk answers the progress
    # round but accepts nothing until it has rebuilt; it was counted live, so removing
    # the healthy follower was made: voters {leader, rebuilding}, which choose nothing
    # more until the rebuild ends (and not at all if it cannot end).
    net = elected([1, 2, 3])
    leader = net.leader()
    healthy, rebuilding = [i for i in (1, 2, 3) if i != leader]
    net.nodes[rebuilding].replica.rebuilding = True
    reply = net.ask(leader, MemberOp(op="remove", node=healthy), seconds=3.0)
    assert reply.error is not None and "no live quorum" in reply.error, reply.error
    assert net.nodes[leader].replica.configuration.voters == (1, 2, 3)
