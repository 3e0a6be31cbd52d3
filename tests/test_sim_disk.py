"""Disk faults in the simulator: torn and lost unsynced writes, failing fsyncs,
corrupted or wiped logs, snapshots with compaction, InstallSnapshot, and rebuilding.

A failure names its seed and the one command that replays it.
"""

import msgspec
import pytest

from pyxos.core.messages import Accepted, ClientRequest, Promise
from pyxos.core.quorum import Majority
from pyxos.core.replica import ReplicaConfig, Role
from pyxos.sim.kv import kv_replay_command, run_kv, service_node_factory
from pyxos.sim.mutants import REPLICA_MUTANTS
from pyxos.sim.nemesis import parse_faults
from pyxos.sim.world import DATA_DIR, Simulator
from pyxos.statemachine.kv import Command
from pyxos.statemachine.service import ServiceNode
from pyxos.storage.wal import record_offsets

DISK = parse_faults("all,disk")
enc = msgspec.msgpack.Encoder()


@pytest.mark.parametrize(("nodes", "first"), [(3, 0), (3, 75), (5, 0), (5, 75)])
def test_all_faults_with_disk_faults(nodes: int, first: int) -> None:
    failures = []
    for seed in range(first, first + 75):
        r = run_kv(seed, nodes=nodes, faults=DISK, trace=False)
        if r.violation is not None:
            replay = kv_replay_command(seed, nodes, 4, DISK, None)
            failures.append(f"seed {seed}: {r.violation}\n  replay: {replay}")
    assert not failures, "\n".join(failures[:3])


def test_a_wal_that_acknowledges_before_fsync_is_caught() -> None:
    # Measured on the real WAL and simulated disk: first caught at seed 31 (3 nodes).
    caught = next(
        (
            s
            for s in range(300)
            if run_kv(s, faults=DISK, ack_before_sync=True, trace=False).violation
        ),
        None,
    )
    assert caught is not None, "early acknowledgement survived 300 seeds"
    a = run_kv(caught, faults=DISK, ack_before_sync=True)
    b = run_kv(caught, faults=DISK, ack_before_sync=True)
    assert a.violation is not None and b.violation is not None
    assert a.trace_text() == b.trace_text()
    assert run_kv(caught, faults=DISK, trace=False).violation is None


def test_a_node_that_votes_right_after_losing_its_log_is_caught() -> None:
    # Measured on the real WAL and simulated disk: first caught at seed 32
    # (3 nodes). The scan stops there.
    amnesia = REPLICA_MUTANTS["amnesia"]
    caught = next(
        (
            s
            for s in range(400)
            if run_kv(s, nodes=3, faults=DISK, replica_factory=amnesia, trace=False).violation
        ),
        None,
    )
    assert caught is not None, "a node voting with a wiped log survived 400 seeds"
    assert run_kv(caught, nodes=3, faults=DISK, trace=False).violation is None


def test_compaction_keeps_the_log_bounded_over_a_long_run() -> None:
    kw = dict(
        nodes=3,
        clients=4,
        ops_per_client=400,
        faults=DISK,
        fault_until=10.0,
        liveness_bound=30.0,
        trace=False,
    )
    compacted = run_kv(5, snapshot_every=25, **kw)  # type: ignore[arg-type]
    # Without compaction, and without the snapshots served to a node that lags (a node
    # that installs one drops its log below it), some log keeps every slot.
    unbounded = run_kv(5, snapshot_every=10**9, catchup_snapshot_slots=0, **kw)  # type: ignore[arg-type]
    assert compacted.violation is None and unbounded.violation is None
    assert compacted.slots > 1000
    # Measured when written: at most 52 live entries with snapshots every 25 slots,
    # against every slot of the run without them.
    assert compacted.stats["max_log_entries"] <= 150
    assert unbounded.stats["max_log_entries"] >= compacted.slots * 0.9


# -- scripted scenarios ---------------------------------------------------------------


def _cluster(seed: int, snapshot_every: int) -> Simulator:
    sim = Simulator(seed)
    config = ReplicaConfig(election_timeout=(0.1, 0.2), heartbeat_interval=0.04)
    factory = service_node_factory(
        Majority([1, 2, 3]), config, snapshot_every=snapshot_every, snapshot_chunk=64
    )
    for i in (1, 2, 3):
        sim.add_node(i, factory)
    sim.run(0.5)
    return sim


def _service(sim: Simulator, node_id: int) -> ServiceNode:
    node = sim.node(node_id)
    assert isinstance(node, ServiceNode)
    return node


def _leader(sim: Simulator) -> int:
    return next(i for i in sim.live_nodes() if _service(sim, i).replica.role is Role.LEADER)


def _write(sim: Simulator, n: int, until: float) -> None:
    for seq in range(1, n + 1):
        cmd = enc.encode(Command(100, seq, "put", f"k{seq % 7}", f"v{seq}"))
        sim.send_external(100, _leader(sim), ClientRequest(100, 100, seq, cmd))
        sim.run(sim.now + until / n)


def test_install_snapshot_brings_a_far_behind_replica_up_to_date() -> None:
    sim = _cluster(3, snapshot_every=20)
    behind = next(i for i in (1, 2, 3) if i != _leader(sim))
    sim.partition([[behind], [i for i in (1, 2, 3) if i != behind]])
    _write(sim, 200, 2.0)
    leader = _service(sim, _leader(sim))
    assert leader.replica.log_start >= 100, "the leader compacted its log"
    sim.heal()
    sim.run(sim.now + 1.0)
    lagging = _service(sim, behind)
    assert lagging.snapshots_installed >= 1
    assert lagging.state.applied_slot == leader.state.applied_slot
    assert lagging.app.list_local("") == leader.app.list_local("")


def test_a_corrupted_log_leads_to_rebuilding_not_to_a_vote() -> None:
    sim = _cluster(4, snapshot_every=10**9)
    _write(sim, 30, 0.5)
    victim = next(i for i in (1, 2, 3) if i != _leader(sim))
    sim.crash(victim)
    sim.procs[victim].fs.wipe(DATA_DIR)
    t0 = sim.now
    sim.restart(victim)
    assert _service(sim, victim).replica.rebuilding
    _write(sim, 20, 0.5)
    sim.run(sim.now + 1.0)
    node = _service(sim, victim)
    assert not node.replica.rebuilding, "the rebuild finished once every peer answered"
    rebuilt_at = next(
        e[0]
        for e in sim.trace
        if e[0] > t0 and e[1] == "recv" and e[2] == victim and isinstance(e[4], (Promise, Accepted))
    )
    votes_while_rebuilding = [
        e
        for e in sim.trace
        if t0 <= e[0] < rebuilt_at and e[2] == victim and isinstance(e[4], (Promise, Accepted))
    ]
    assert votes_while_rebuilding == []
    assert node.app.list_local("") == _service(sim, _leader(sim)).app.list_local("")
    assert node.replica.rebuilt_from > 0
    sim.crash(victim)
    sim.restart(victim)
    assert not _service(sim, victim).replica.rebuilding, "the end of the rebuild is durable"


def test_the_simulated_nodes_run_the_real_wal_a_flipped_bit_makes_one_rebuild() -> None:
    sim = _cluster(5, snapshot_every=10**9)
    _write(sim, 30, 0.5)
    victim = next(i for i in (1, 2, 3) if i != _leader(sim))
    sim.crash(victim)
    fs = sim.procs[victim].fs
    segment = DATA_DIR / sorted(n for n in fs.listdir(DATA_DIR) if n.endswith(".log"))[-1]
    offsets = record_offsets(fs.read_bytes(segment))
    assert len(offsets) > 10, "the node's WAL holds its records"
    fs.flip_bit(segment, offsets[-3] + 9, 0)  # inside an acknowledged record
    sim.restart(victim)
    assert _service(sim, victim).replica.rebuilding, "corruption must not be taken for a torn tail"
    assert fs.exists(DATA_DIR / "quarantine-1" / segment.name)
    sim.run(sim.now + 1.0)
    assert not _service(sim, victim).replica.rebuilding


def test_a_byte_budget_also_triggers_snapshots() -> None:
    by_slots_only = run_kv(7, faults=frozenset(), trace=False, snapshot_every=10**9)
    assert "snapshots" not in by_slots_only.stats
    r = run_kv(7, faults=frozenset(), trace=False, snapshot_every=10**9, snapshot_bytes=2000)
    assert r.violation is None
    assert r.stats["snapshots"] >= 3


# -- the bootstrap flag on a wiped disk, and a lost majority ----------------------------


@pytest.mark.parametrize(("seed", "nodes"), [(7, 3), (17, 3), (23, 3), (24, 3)])
def test_wipe_init_seeds_that_broke_safety(seed: int, nodes: int) -> None:
    # Before the bootstrap check a node wiped and restarted with the bootstrap flag
    # voted with an empty state: these seeds chose two values for one slot (earlier
    # seeds also proposed two values in one ballot: the wiped node reused its own).
    # Measured on main (b2a660b) with this fault added, 300 seeds, 3 nodes. Other
    # changes to the simulator move its random stream (the seeds were 25 and 27, then
    # 86, 145 and 196, then 44, 86, 113 and 196, then 0, 9, 227 and 284, then 0, 2, 4
    # and 6; since every node runs the real WAL on a simulated disk, the first four
    # seeds of 0-299 that wipe a node: 2, 4, 7 and 24, and 4, 7, 11 and 24 since the
    # simulator serves catch-up snapshots for gaps of 8 slots, 7, 9, 11 and 24 since a
    # read under the lease no longer waits for the writes in flight, 7, 17, 23 and 24
    # since a lone chosen watermark starts no fsync): the first assertion says when a
    # seed no longer wipes one.
    r = run_kv(seed, nodes=nodes, faults=DISK)
    assert any(e[1] == "wipe-init" for e in r.trace), "the seed no longer wipes a node"
    replay = kv_replay_command(seed, nodes, 4, DISK, None)
    assert r.violation is None, f"{r.violation}\n  replay: {replay}"


def _put_via_leader(sim: Simulator, client: int, seq: int, key: str, value: str) -> None:
    cmd = enc.encode(Command(client, seq, "put", key, value))
    sim.send_external(client, _leader(sim), ClientRequest(client, client, seq, cmd))


def test_a_wiped_node_restarted_with_the_bootstrap_flag_loses_no_write() -> None:
    sim = _cluster(11, snapshot_every=10**9)
    lead = _leader(sim)
    x, b = (i for i in (1, 2, 3) if i != lead)
    sim.crash(b)  # only the leader and x hold what follows
    for seq in range(1, 41):
        _put_via_leader(sim, 100, seq, f"k{seq}", f"v{seq}")
        sim.run(sim.now + 0.01)
    sim.run(sim.now + 0.2)
    assert _service(sim, lead).app.get_local("k40") == "v40"
    sim.crash(x)
    sim.wipe_init(x)
    sim.crash(lead)
    sim.restart(x)  # the bootstrap flag, as on its first start (wipe_init)
    sim.restart(b)
    sim.run(sim.now + 1.0)
    # x learned that the cluster exists (b holds state), and waits for the leader's
    # answer before it votes: b alone is no quorum, so nothing is decided meanwhile.
    assert _service(sim, x).replica.rebuilding
    assert all(_service(sim, i).replica.role is not Role.LEADER for i in (x, b))
    sim.restart(lead)
    sim.run(sim.now + 2.0)
    assert not _service(sim, x).replica.rebuilding
    leader = _service(sim, _leader(sim))
    for seq in range(1, 41):
        assert leader.app.get_local(f"k{seq}") == f"v{seq}", f"k{seq} lost"
    # Now the rebuilt node's copy is needed for every quorum.
    sim.crash(lead)
    sim.procs[lead].fs.wipe(DATA_DIR)
    sim.restart(lead)
    sim.run(sim.now + 2.0)
    for i in (1, 2, 3):
        node = _service(sim, i)
        assert not node.replica.rebuilding
        assert [node.app.get_local(f"k{s}") for s in range(1, 41)] == [
            f"v{s}" for s in range(1, 41)
        ]


def test_a_new_cluster_of_bootstrapping_nodes_starts_voting() -> None:
    sim = Simulator(3)
    config = ReplicaConfig(election_timeout=(0.1, 0.2), heartbeat_interval=0.04)
    factory = service_node_factory(Majority([1, 2, 3]), config)
    for i in (1, 2, 3):
        sim.add_node(i, factory)  # a first start has the bootstrap flag (--init)
        assert _service(sim, i).replica.bootstrapping
    sim.run(1.0)
    assert all(not _service(sim, i).replica.rebuilding for i in (1, 2, 3))
    _put_via_leader(sim, 100, 1, "k", "v")
    sim.run(sim.now + 0.5)
    assert _service(sim, _leader(sim)).app.get_local("k") == "v"


def test_two_of_three_nodes_without_state_report_a_lost_majority() -> None:
    sim = _cluster(12, snapshot_every=10**9)
    _write(sim, 10, 0.3)
    lead = _leader(sim)
    lost = [i for i in (1, 2, 3) if i != lead]
    for i in lost:
        sim.crash(i)
        sim.procs[i].fs.wipe(DATA_DIR)
        sim.restart(i)
    sim.run(sim.now + 1.0)
    for i in lost:
        replica = _service(sim, i).replica
        assert replica.rebuilding and replica.majority_lost
        assert replica.peers_without_state() == {j for j in lost if j != i}
