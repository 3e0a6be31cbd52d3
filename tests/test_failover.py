"""Client-visible failover (issue 8, item 8): a follower that loses its leader answers
"no leader yet" at once instead of forwarding into silence, fails back what it had
forwarded, and clients then try another node quickly. No timing is asserted: the
tests count replies and attempts, and give the clients attempt timeouts far longer
than the test, so a request forwarded into silence shows up as a failure."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import msgspec

from pyxos.client import AsyncClient, ClientPool
from pyxos.client.engine import RetryState, next_attempt
from pyxos.core.ballot import Ballot
from pyxos.core.messages import ClientReply, ClientRequest, Commit
from pyxos.core.quorum import Majority
from pyxos.core.replica import Replica, ReplicaConfig, Role
from pyxos.statemachine.kv import Command, KVStore
from pyxos.statemachine.service import ServiceNode
from test_server_harness import (
    CLUSTER,
    client_addresses,
    cluster_configs,
    start_nodes,
    stop_nodes,
    wait_leader,
)

CFG = ReplicaConfig(election_timeout=(0.1, 0.2), heartbeat_interval=0.02)
CLIENT = 1_000_000  # a client connection id (never a member)
enc = msgspec.msgpack.Encoder()


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


def request(seq: int) -> ClientRequest:
    return ClientRequest(CLIENT, 7, seq, enc.encode(Command(7, seq, "put", "k", "v")))


def sent(node: ServiceNode) -> list[tuple[tuple[int, ...], object]]:
    r = node.ready()
    out = [(s.to, s.msg) for s in [*r.send_now, *r.send_after_sync]]
    node.advance()
    return out


def client_replies(out: list[tuple[tuple[int, ...], object]]) -> list[ClientReply]:
    return [m for to, m in out if to == (CLIENT,) and isinstance(m, ClientReply)]


def test_a_forwarded_request_is_failed_back_when_the_follower_times_out_on_its_leader() -> None:
    node = follower_of_3()
    node.step(request(1))
    out = sent(node)
    assert [(to, type(m)) for to, m in out] == [((3,), ClientRequest)]  # forwarded
    # Node 3 dies: no more heartbeats. The election timeout runs out; node 2 starts a
    # pre-vote, and the request it forwarded must not wait in silence.
    node.tick(1.0)
    assert node.replica.role is not Role.FOLLOWER
    (reply,) = client_replies(sent(node))
    assert (reply.ok, reply.seq, reply.leader) == (False, 1, 0)  # "no leader yet"
    assert not node.forwarded
    # A new request is answered at once, not forwarded to the node it lost.
    node.step(request(2))
    out = sent(node)
    assert not [m for _, m in out if isinstance(m, ClientRequest)]
    (reply,) = client_replies(out)
    assert (reply.ok, reply.seq, reply.leader) == (False, 2, 0)
    assert node.refused_no_leader == 2


def test_a_link_down_to_the_leader_fails_back_at_once_and_stops_forwarding() -> None:
    node = follower_of_3()
    node.step(request(1))
    assert [type(m) for _, m in sent(node)] == [ClientRequest]
    node.link_changed(3, False)  # the driver saw the connection to node 3 close
    (reply,) = client_replies(sent(node))
    assert (reply.ok, reply.leader) == (False, 0)
    node.step(request(2))
    (reply,) = client_replies(sent(node))
    assert (reply.ok, reply.seq, reply.leader) == (False, 2, 0)
    # The link comes back (the leader restarted, or it was a blip): forwarding resumes.
    node.link_changed(3, True)
    node.step(request(3))
    assert [(to, type(m)) for to, m in sent(node)] == [((3,), ClientRequest)]


def test_forwarded_requests_are_failed_back_naming_a_new_leader() -> None:
    node = follower_of_3()
    node.step(request(1))
    sent(node)
    node.step(Commit(1, Ballot(2, 1), 0))  # node 1 leads now, with a higher ballot
    (reply,) = client_replies(sent(node))
    assert (reply.ok, reply.leader) == (False, 1)  # go to node 1


def test_retry_rules_redirect_at_once_and_pause_briefly_on_no_leader() -> None:
    index_of = {1: 0, 2: 1, 3: 2}
    state = RetryState()
    rng = random.Random(0)
    # A redirect to a known leader: straight there, no pause.
    assert next_attempt(0, ClientReply(1, 7, 1, False, b"", 3), index_of, 3, state, rng) == (
        2,
        0.0,
    )
    # "No leader yet": the next node, after a pause of a few milliseconds that grows.
    state = RetryState()
    pauses = []
    for _ in range(8):
        index, pause = next_attempt(1, ClientReply(2, 7, 1, False, b"", 0), index_of, 3, state, rng)
        assert index == 2
        pauses.append(pause)
    assert 0 < pauses[0] <= 0.005 and max(pauses) <= 0.05
    assert pauses[-1] > pauses[0]
    # No answer at all: the next node; a pause only once every node stayed silent.
    state = RetryState()
    assert next_attempt(0, None, index_of, 3, state, rng) == (1, 0.0)
    assert next_attempt(1, None, index_of, 3, state, rng) == (2, 0.0)
    assert next_attempt(2, None, index_of, 3, state, rng)[1] > 0


# --- real nodes (in-process), the leader shut down ----------------------------------------


def test_after_the_leader_dies_followers_say_no_leader_and_clients_retry_elsewhere(
    tmp_path: Path,
) -> None:
    """With the election slowed down (so that it surely runs while the client asks),
    the client hears "no leader yet" from a follower and goes on to other nodes until
    the new leader answers. Before the fix the follower forwarded the write to the dead
    leader and nothing ever came back: the client, whose attempt timeout outlasts the
    test, gave up with OutcomeUnknown."""

    async def main() -> None:
        configs = cluster_configs(tmp_path, election_timeout=[1.0, 1.5], heartbeat_interval=0.05)
        nodes = await start_nodes(configs)
        try:
            leader = await wait_leader(nodes, timeout=15.0)
            i = nodes.index(leader)
            # The leader first, so the client's first try after the crash meets a dead
            # node and its next one a follower that lost its leader.
            addresses = client_addresses(configs)
            addresses = addresses[i:] + addresses[:i]
            slow = {"timeout": 30.0, "attempt_timeout": 30.0}
            async with (
                AsyncClient(addresses, cluster=CLUSTER, **slow) as c,
                ClientPool(addresses, cluster=CLUSTER, connections=1, **slow) as pool,
            ):
                session = pool.session()
                await c.put("before", "1")
                await session.put("before-pool", "1")
                assert c.answered_by == leader.config.node_id
                await leader.shutdown()  # every connection to it closes, as on SIGKILL

                put = asyncio.create_task(c.put("after", "2"))
                pooled = asyncio.create_task(session.put("after-pool", "2"))
                await asyncio.gather(put, pooled)

                assert c.no_leader_replies >= 1
                assert c.retries >= 2  # the dead node, then a refusal, then another try
                assert c.answered_by != leader.config.node_id
                assert pool.no_leader_replies >= 1
                assert await c.get("after") == "2"
                assert await c.get("after-pool") == "2"
                refused = sum(n.node.refused_no_leader for n in nodes if n.node and n.running)
                assert refused >= 2
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())
