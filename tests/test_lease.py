"""Leader leases: reads skip the read-index round while a quorum-granted lease runs,
and a deposed leader's lease has run out before anyone else can lead."""

from __future__ import annotations

import msgspec
import pytest

from pyxos.core.messages import ClientRequest, Prepare
from pyxos.core.quorum import Majority
from pyxos.core.replica import Replica, ReplicaConfig, Role
from pyxos.sim.kv import service_node_factory
from pyxos.sim.mutants import REPLICA_MUTANTS
from pyxos.sim.world import Simulator
from pyxos.statemachine.kv import Command, decode_result
from pyxos.statemachine.service import ServiceNode
from sim_helpers import RecordingClient

enc = msgspec.msgpack.Encoder()
IDS = [1, 2, 3]


def _cluster(seed: int, replica_factory: type[Replica]) -> tuple[Simulator, RecordingClient]:
    sim = Simulator(seed)
    config = ReplicaConfig(election_timeout=(0.1, 0.2), heartbeat_interval=0.02)
    factory = service_node_factory(
        Majority(IDS), config, replica_factory=replica_factory, snapshot_every=10**9
    )
    for i in IDS:
        sim.add_node(i, factory)
    client = RecordingClient()
    sim.add_node(100, lambda *_: client, crashable=False)
    return sim, client


def _leader(sim: Simulator) -> int:
    (leader,) = [
        i
        for i in IDS
        if isinstance(n := sim.node(i), ServiceNode) and n.replica.role is Role.LEADER
    ]
    return leader


_seq = [0]


def _ask(sim: Simulator, to: int, op: str, key: str, value: str | None = None) -> int:
    _seq[0] += 1
    cmd = enc.encode(Command(100, _seq[0], op, key, value))
    sim.send_external(100, to, ClientRequest(100, 100, _seq[0], cmd))
    return _seq[0]


def _answer(client: RecordingClient, seq: int) -> str | bool | None:
    for reply in client.replies:
        if reply.seq == seq and reply.ok:
            return decode_result(reply.result).value
    return False  # no answer


def _stale_read_after_failover(replica_factory: type[Replica]) -> str | bool | None:
    """The old leader, cut off from its peers (clients still reach it), is asked for a
    key after the new leader has acknowledged a newer value for it."""
    sim, client = _cluster(4, replica_factory)
    sim.run(0.5)
    old = _leader(sim)
    seq = _ask(sim, old, "put", "k", "old")
    sim.run(sim.now + 0.1)
    assert _answer(client, seq) is None  # a put answers with no value
    sim.run(sim.now + 0.1)  # heartbeats: the lease is held now
    assert sim.node(old).replica.lease_until > sim.now  # type: ignore[union-attr]
    sim.partition([[old], [i for i in IDS if i != old]])
    sim.run(sim.now + 0.6)
    new = next(
        i
        for i in IDS
        if i != old and sim.node(i).replica.role is Role.LEADER  # type: ignore[union-attr]
    )
    seq = _ask(sim, new, "put", "k", "new")
    sim.run(sim.now + 0.05)
    assert _answer(client, seq) is None, "the new leader acknowledged the write"
    seq = _ask(sim, old, "get", "k")
    sim.run(sim.now + 0.3)
    return _answer(client, seq)


def test_a_deposed_leader_does_not_serve_a_stale_read() -> None:
    assert _stale_read_after_failover(Replica) is False, "no answer: its lease had run out"


def test_the_scenario_catches_a_lease_that_never_runs_out() -> None:
    assert _stale_read_after_failover(REPLICA_MUTANTS["eternal-lease"]) == "old"


def test_reads_under_a_lease_need_no_round_trip() -> None:
    sim, client = _cluster(5, Replica)
    sim.run(0.5)
    leader = _leader(sim)
    sim.run(sim.now + 0.1)
    node = sim.node(leader)
    assert isinstance(node, ServiceNode)
    assert node.replica.lease_until > sim.now
    probes_before = node.replica.read_probe
    seq = _ask(sim, leader, "get", "absent")
    sim.run(sim.now + 0.005)  # well under one network round trip plus a heartbeat
    assert _answer(client, seq) is None
    assert node.replica.read_probe == probes_before, "no read-index probe was needed"


def test_an_acceptor_promises_nobody_else_while_its_lease_runs() -> None:
    import random

    from pyxos.core.ballot import Ballot
    from pyxos.core.messages import Commit

    r = Replica(
        2, Majority(IDS), random.Random(1), config=ReplicaConfig(election_timeout=(0.1, 0.2))
    )
    r.tick(1.0)
    r.step(Commit(1, Ballot(3, 1), 0))
    r.advance()
    r.tick(1.05)
    r.step(Prepare(3, Ballot(9, 3), 0))
    assert not r.ready().send_after_sync, "no Promise during the lease"
    assert r.acceptor.promised != Ballot(9, 3)
    r.advance()
    r.tick(1.2)
    r.step(Prepare(3, Ballot(9, 3), 0))
    assert r.acceptor.promised == Ballot(9, 3), "after the lease, the prepare is promised"


@pytest.mark.parametrize("lease", [0.0])
def test_lease_zero_means_every_read_takes_the_read_index_round(lease: float) -> None:
    config = ReplicaConfig(election_timeout=(0.1, 0.2), lease=lease)
    assert config.lease_seconds == 0.0
