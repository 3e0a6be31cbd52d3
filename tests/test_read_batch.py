"""The queries of one pass are one read: one read-index check, released and answered
together (statemachine/service.py, *Queries*; docs/architecture.md, *Reads*)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from pyxos.core.messages import ClientReplies, ClientReply, ClientRequest, ReadAck
from pyxos.core.quorum import Majority
from pyxos.core.replica import ReplicaConfig, Role
from pyxos.sim.kv import service_node_factory
from pyxos.sim.world import Simulator
from pyxos.statemachine.kv import Command, decode_result
from pyxos.statemachine.members import MemberOp, encode_member_op
from pyxos.statemachine.replicated import ReplicatedApp, encode_batch
from pyxos.statemachine.service import ServiceNode
from sim_helpers import RecordingClient

enc = msgspec.msgpack.Encoder()
IDS = [1, 2, 3]


def _leader_with_lease(seed: int = 5, lease: float | None = None) -> ServiceNode:
    """A simulated 3-node KV cluster's leader (holding its lease unless ``lease`` is
    0), with k1..k3 written.
    The test then drives it by hand (step, ready, advance): one call of ready() is
    one pass of the real server's loop."""
    sim = Simulator(seed)
    kw: dict[str, Any] = {} if lease is None else {"lease": lease}
    config = ReplicaConfig(election_timeout=(0.1, 0.2), heartbeat_interval=0.02, **kw)
    factory = service_node_factory(Majority(IDS), config, snapshot_every=10**9)
    for i in IDS:
        sim.add_node(i, factory)
    client = RecordingClient()
    sim.add_node(100, lambda *_: client, crashable=False)
    sim.run(0.5)
    (leader,) = [
        i for i in IDS if isinstance(n := sim.node(i), ServiceNode) and n.replica.is_leader
    ]
    for seq, key in enumerate(["k1", "k2", "k3"], start=1):
        cmd = enc.encode(Command(100, seq, "put", key, f"v{seq}"))
        sim.send_external(100, leader, ClientRequest(100, 100, seq, cmd))
    sim.run(sim.now + 0.2)
    assert sum(r.ok for r in client.replies) == 3
    node = sim.node(leader)
    assert isinstance(node, ServiceNode)
    return node


def _get(seq: int, key: str, src: int = 100) -> ClientRequest:
    return ClientRequest(src, src, seq, enc.encode(Command(src, seq, "get", key)), True)


def _replies(ready: Any) -> dict[int, ClientReply]:
    return {s.msg.seq: s.msg for s in ready.send_now if isinstance(s.msg, ClientReply)}


def test_the_queries_of_one_pass_take_one_read_index_check_and_are_answered_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node = _leader_with_lease()
    replica = node.replica
    assert replica.lease_until > replica.now
    calls: list[object] = []
    real_read = replica.read

    def counting_read(token: object) -> bool:
        calls.append(token)
        return real_read(token)

    monkeypatch.setattr(replica, "read", counting_read)
    for seq, key in [(11, "k1"), (12, "k2"), (13, "absent"), (14, "k3")]:
        node.step(_get(seq, key))
    assert node.reads_pending == 4
    r = node.ready()
    assert len(calls) == 1, "one read (one read-index check) for the pass's four queries"
    assert len(r.reads) == 1 and r.reads[0][1] is True
    replies = _replies(r)
    node.advance()
    assert sorted(replies) == [11, 12, 13, 14]
    values = {seq: decode_result(rep.result).value for seq, rep in replies.items()}
    assert values == {11: "v1", 12: "v2", 13: None, 14: "v3"}
    assert all(rep.ok and rep.error is None for rep in replies.values())
    assert not replica.pending_reads and node.reads_pending == 0


def test_queries_that_arrive_while_leading_are_refused_together_if_it_steps_down() -> None:
    node = _leader_with_lease()
    for seq in (21, 22):
        node.step(_get(seq, "k1"))
    node.replica._become_follower(0)  # deposed before the end of the pass
    assert node.replica.role is Role.FOLLOWER
    r = node.ready()
    replies = _replies(r)
    node.advance()
    assert sorted(replies) == [21, 22]
    assert not any(rep.ok for rep in replies.values())
    assert node.reads_pending == 0


def test_without_a_lease_the_batch_waits_for_its_probe_and_is_then_answered() -> None:
    node = _leader_with_lease(lease=0.0)
    replica = node.replica
    for seq in (31, 32, 33):
        node.step(_get(seq, "k2"))
    r = node.ready()
    assert not _replies(r), "no answer before a quorum confirmed the leadership"
    probe = replica.read_probe
    node.advance()
    assert len(replica.pending_reads) == 1 and node.reads_pending == 3

    node.step(ReadAck(next(p for p in IDS if p != node.node_id), replica.ballot, probe))
    r = node.ready()
    replies = _replies(r)
    node.advance()
    assert sorted(replies) == [31, 32, 33]
    assert {decode_result(rep.result).value for rep in replies.values()} == {"v2"}


class _Picky:
    """Answers queries by echoing them; raises on b"boom", returns a str on b"str"."""

    def apply(self, command: bytes) -> bytes:
        return command

    def query(self, q: bytes) -> bytes:
        if q == b"boom":
            raise ValueError("no answer")
        if q == b"str":
            return "text"  # type: ignore[return-value]
        if q == b"view":
            return memoryview(b"viewed")  # type: ignore[return-value]
        if q == b"interrupt":
            raise KeyboardInterrupt
        return q

    def snapshot(self) -> bytes:
        return b""

    def restore(self, data: bytes) -> None:
        pass


def test_query_batch_answers_each_query_as_query_does() -> None:
    state = ReplicatedApp(_Picky())
    state.apply(0, encode_batch([(1, 1, b"x")]))
    qs = [b"a", b"boom", b"view", b"str", b"b"]
    results, errors = state.query_batch(qs)
    singles = [state.query(q) for q in qs]
    assert results == [a.result for a in singles]
    assert errors == {i: a.error for i, a in enumerate(singles) if a.error is not None}
    assert results[2] == b"viewed" and type(results[2]) is bytes
    assert set(errors) == {1, 3} and "query raised ValueError: no answer" in errors[1]
    assert "query returned str, not bytes" in errors[3]
    with pytest.raises(KeyboardInterrupt):
        state.query_batch([b"a", b"interrupt"])


def test_one_failing_query_leaves_the_rest_of_its_batch_answered() -> None:
    node = _leader_with_lease()
    node.step(_get(41, "k1"))
    bad = ClientRequest(100, 100, 42, b"\xff not msgpack", True)
    node.step(bad)
    node.step(_get(43, "k3"))
    replies = _replies(node.ready())
    node.advance()
    assert decode_result(replies[41].result).value == "v1"
    assert decode_result(replies[43].result).value == "v3"
    assert replies[42].ok and not decode_result(replies[42].result).ok


def test_a_connections_queries_in_one_frame_are_answered_in_one_frame() -> None:
    """The server's way (``step_requests``, ``batch_replies``): the queries of a
    ClientRequests frame join the pass's read as they are (no copy naming the
    connection), and the answers for one connection leave as one ClientReplies."""
    node = _leader_with_lease()
    node.batch_replies = True
    conn_a, conn_b = 1_000_001, 1_000_002
    node.step_requests(conn_a, [_get(51, "k1", src=7), _get(52, "k2", src=7)])
    node.step_requests(conn_b, [_get(53, "k3", src=7)])
    assert node.reads_pending == 3
    r = node.ready()
    node.advance()
    by_dst = {s.to: s.msg for s in r.send_now if isinstance(s.msg, ClientReplies | ClientReply)}
    assert set(by_dst) == {(conn_a,), (conn_b,)}
    both = by_dst[(conn_a,)]
    assert isinstance(both, ClientReplies)
    assert [(x.seq, decode_result(x.result).value) for x in both.replies] == [
        (51, "v1"),
        (52, "v2"),
    ]
    one = by_dst[(conn_b,)]
    assert isinstance(one, ClientReply) and decode_result(one.result).value == "v3"


def test_a_member_list_sent_as_a_query_in_a_frame_is_the_member_desks() -> None:
    """A member operation that changes nothing travels as a query (``member list``):
    in a ClientRequests frame too it goes to the member desk, not the application (the
    KV store answered "not a KV query" when the frame's queries were queued unseen)."""
    node = _leader_with_lease()
    node.batch_replies = True
    conn = 1_000_003
    member_list = ClientRequest(7, 7, 61, encode_member_op(MemberOp(op="list")), True)
    node.step_requests(conn, [_get(60, "k1", src=7), member_list])
    r = node.ready()
    node.advance()
    replies = {m.seq: m for s in r.send_now for m in _unpack(s.msg)}
    assert decode_result(replies[60].result).value == "v1"
    answer = json.loads(replies[61].result)
    assert replies[61].ok and replies[61].error is None, replies[61]
    assert sorted(answer["voters"]) == IDS, answer


def _unpack(msg: object) -> list[ClientReply]:
    if isinstance(msg, ClientReplies):
        return list(msg.replies)
    return [msg] if isinstance(msg, ClientReply) else []
