"""Leader leases: reads skip the read-index round while a quorum-granted lease runs,
and a deposed leader's lease has run out before anyone else can lead."""

from __future__ import annotations

import msgspec
import pytest

from pyxos.core.messages import ClientRequest, Prepare
from pyxos.core.quorum import Majority
from pyxos.core.ready import Node
from pyxos.core.replica import Replica, ReplicaConfig, Role
from pyxos.sim.kv import service_node_factory
from pyxos.sim.mutants import REPLICA_MUTANTS
from pyxos.sim.world import DATA_DIR, Simulator
from pyxos.statemachine.kv import QUERY_OPS, Command, decode_result
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
    sim.send_external(100, to, ClientRequest(100, 100, _seq[0], cmd, op in QUERY_OPS))
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


def _stale_read_after_an_acceptor_restarts(wipe: bool = False) -> str | bool | None:
    """Issue 9's stale read: X helped grant the old leader L its lease, crashes and
    restarts at once (having forgotten the grant), and promises Y, which has been cut off
    from L for a while and runs for leader right then. Y acknowledges put k=new; L, cut
    off from both, still within its lease, is asked for k."""
    sim, client = _cluster(4, Replica)
    sim.run(0.5)
    old = _leader(sim)
    x, y = [i for i in IDS if i != old]
    seq = _ask(sim, old, "put", "k", "old")
    sim.run(sim.now + 0.05)
    assert _answer(client, seq) is None
    sim.block(old, y)  # Y hears nothing from L; X keeps granting L its lease
    sim.block(y, old)
    sim.run(sim.now + 0.3)
    lease_until = sim.node(old).replica.lease_until  # type: ignore[union-attr]
    assert lease_until > sim.now + 0.05, "setup: L holds a lease granted by itself and X"
    sim.partition([[old], [x, y]])  # L is cut off from X too; clients still reach it
    sim.crash(x)
    if wipe:
        sim.procs[x].fs.wipe(DATA_DIR)
    sim.restart(x)

    def run_for_leader(node: Node) -> None:
        assert isinstance(node, ServiceNode)
        node.replica.election_deadline = node.replica.now  # Y's timer fires now

    sim.invoke(y, run_for_leader)
    deadline = sim.now + 1.0
    while not _leads(sim, y) and sim.now < deadline:
        sim.run(sim.now + 0.001)
    seq = _ask(sim, y, "put", "k", "new")
    sim.run(sim.now + 0.02)
    assert _answer(client, seq) is None, "Y acknowledged the write"
    seq = _ask(sim, old, "get", "k")
    sim.run(sim.now + 0.05)
    return _answer(client, seq)


def _leads(sim: Simulator, node_id: int) -> bool:
    node = sim.node(node_id)
    return isinstance(node, ServiceNode) and node.replica.role is Role.LEADER


def test_an_acceptor_that_restarts_promises_nobody_for_a_full_lease() -> None:
    # Before the fix the old leader answered "old" here (its lease still ran).
    assert _stale_read_after_an_acceptor_restarts() != "old"


def _restarted(now: float, **kw: object) -> Replica:
    import random

    config = ReplicaConfig(election_timeout=(0.1, 0.2))
    return Replica(2, Majority(IDS), random.Random(2), config=config, now=now, **kw)  # type: ignore[arg-type]


def test_a_restarted_acceptor_holds_its_promise_and_prevote_for_one_lease() -> None:
    from pyxos.core.ballot import Ballot
    from pyxos.core.messages import PreVote, PreVoteReply

    r = _restarted(5.0, promised=Ballot(3, 1))
    lease = r.config.lease_seconds
    r.tick(5.0 + lease / 2)
    r.step(PreVote(3, Ballot(9, 3)))
    r.step(Prepare(3, Ballot(9, 3), 0))
    ready = r.ready()
    replies = [s.msg for s in ready.send_now if isinstance(s.msg, PreVoteReply)]
    assert replies and not replies[0].granted, "no pre-vote during the hold"
    assert not ready.send_after_sync and r.acceptor.promised == Ballot(3, 1)
    r.advance()
    r.tick(5.0 + lease)
    r.step(Prepare(3, Ballot(9, 3), 0))
    assert r.acceptor.promised == Ballot(9, 3), "after one lease, the prepare is promised"


def test_a_node_that_rebuilt_its_lost_log_still_holds_for_one_lease_from_its_start() -> None:
    from pyxos.core.ballot import ZERO, Ballot
    from pyxos.core.messages import RebuildInfo

    r = _restarted(5.0, rebuilding=True)
    r.tick(5.01)
    r.step(RebuildInfo(1, ZERO, -1, nonce=r.rebuild_nonce))
    r.step(RebuildInfo(3, ZERO, -1, nonce=r.rebuild_nonce))
    assert r.rebuild_caught_up
    r.finish_rebuild(0)
    assert not r.rebuilding
    r.step(Prepare(3, Ballot(9, 3), 0))
    assert r.acceptor.promised == ZERO, "rebuilt quickly, but the grant it forgot may still run"
    r.tick(5.0 + r.config.lease_seconds)
    r.step(Prepare(3, Ballot(9, 3), 0))
    assert r.acceptor.promised == Ballot(9, 3)


def test_a_late_message_from_a_deposed_leader_does_not_cut_a_running_grant_short() -> None:
    import random

    from pyxos.core.ballot import Ballot
    from pyxos.core.messages import Commit

    config = ReplicaConfig(election_timeout=(0.1, 0.2))
    r = Replica(2, Majority(IDS), random.Random(2), config=config, now=-1.0)
    r.tick(1.0)
    r.step(Commit(1, Ballot(3, 1), 0))  # leader 1's heartbeat: a grant to node 1
    r.tick(1.05)
    r.step(Commit(3, Ballot(2, 3), 0))  # a late heartbeat of node 3's older leadership
    r.step(Prepare(3, Ballot(9, 3), 0))
    assert r.acceptor.promised != Ballot(9, 3), "node 1's lease still runs"


def test_a_read_under_a_lease_does_not_wait_for_a_write_in_flight() -> None:
    """The lease read index is max(first_unchosen, read_floor), not next_slot: a write
    still in flight was acknowledged to nobody, so a read need not wait for it (it used
    to wait until the write was chosen, here: never, as the leader is cut off)."""
    sim, client = _cluster(5, Replica)
    sim.run(0.5)
    leader = _leader(sim)
    done = _ask(sim, leader, "put", "a", "1")
    sim.run(sim.now + 0.1)  # chosen and applied; heartbeats: the lease is held
    node = sim.node(leader)
    assert isinstance(node, ServiceNode)
    assert _answer(client, done) is None and node.replica.lease_until > sim.now + 0.02
    sim.partition([[leader], [i for i in IDS if i != leader]])  # clients still reach it
    stuck = _ask(sim, leader, "put", "b", "2")  # can never be chosen now
    read = _ask(sim, leader, "get", "a")
    sim.run(sim.now + 0.01)
    assert node.replica.next_slot > node.replica.first_unchosen, "the put is in flight"
    assert _answer(client, read) == "1", "the read was served under the lease"
    assert _answer(client, stuck) is False
