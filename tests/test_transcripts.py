"""Transcript tests: scripted scenarios whose every message is printed and compared with
a golden file in ``tests/testdata`` (after etcd-io/raft's ``testdata/*.txt``).

Regenerate after an intended protocol change with ``PYXOS_UPDATE_TRANSCRIPTS=1`` and
read the diff: it is the protocol change, message by message.
"""

import os
from pathlib import Path

import msgspec
import pytest

from pyxos.core.messages import ClientRequest
from pyxos.core.quorum import Majority
from pyxos.core.replica import ReplicaConfig, Role
from pyxos.sim.kv import service_node_factory
from pyxos.sim.world import Simulator, format_trace
from pyxos.statemachine.kv import Command
from pyxos.statemachine.service import ServiceNode

DATA = Path(__file__).parent / "testdata"
CLIENT = 100
enc = msgspec.msgpack.Encoder()


def cluster(seed: int) -> Simulator:
    sim = Simulator(seed, disk_latency=(0.001, 0.001))
    config = ReplicaConfig(election_timeout=(0.1, 0.2), heartbeat_interval=0.05)
    factory = service_node_factory(Majority([1, 2, 3]), config, snapshot_every=10_000)
    for i in (1, 2, 3):
        sim.add_node(i, factory)
    return sim


def leader_of(sim: Simulator) -> int:
    for i in sim.live_nodes():
        node = sim.node(i)
        if isinstance(node, ServiceNode) and node.replica.role is Role.LEADER:
            return i
    raise AssertionError("no leader")


def put(sim: Simulator, seq: int, key: str, value: str) -> None:
    cmd = enc.encode(Command(CLIENT, seq, "put", key, value))
    sim.send_external(CLIENT, leader_of(sim), ClientRequest(CLIENT, CLIENT, seq, cmd))


def scenario_election_and_write() -> str:
    sim = cluster(1)
    sim.run(0.5)
    put(sim, 1, "a", "1")
    sim.run(0.52)
    return format_trace(sim.trace)


def crash_after_accept(seed: int) -> tuple[Simulator, int]:
    """A write reaches the followers' acceptors, but no Accepted reaches the leader,
    which then crashes: the next leader must find the value in phase 1 and re-propose it."""
    sim = cluster(seed)
    sim.run(0.5)
    old = leader_of(sim)
    for follower in (1, 2, 3):
        if follower != old:
            sim.block(follower, old)
    put(sim, 1, "a", "1")
    sim.run(0.55)
    sim.crash(old)
    sim.heal()
    sim.run(1.2)
    return sim, old


def scenario_leader_crash_and_reproposal() -> str:
    sim, old = crash_after_accept(2)
    sim.restart(old)
    sim.run(1.4)
    return format_trace(sim.trace)


SCENARIOS = {
    "election_and_write": scenario_election_and_write,
    "leader_crash_and_reproposal": scenario_leader_crash_and_reproposal,
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_transcript(name: str) -> None:
    text = SCENARIOS[name]() + "\n"
    path = DATA / f"{name}.txt"
    if os.environ.get("PYXOS_UPDATE_TRANSCRIPTS") or not path.exists():
        path.write_text(text)
    assert text == path.read_text(), f"transcript {name} changed; see {path}"


def test_reproposal_scenario_keeps_the_write_that_reached_a_quorum() -> None:
    sim, old = crash_after_accept(2)
    new = leader_of(sim)
    assert new != old
    node = sim.node(new)
    assert isinstance(node, ServiceNode)
    assert node.app.get_local("a") == "1", "the accepted write was re-proposed and chosen"
    sim.restart(old)
    sim.run(1.6)
    restarted = sim.node(old)
    assert isinstance(restarted, ServiceNode)
    assert restarted.app.get_local("a") == "1", "the restarted node caught up"
