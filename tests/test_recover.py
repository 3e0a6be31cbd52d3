"""``pyxos recover --force-new-cluster`` on real data directories (docs/recovery.md):
what it refuses and why, the durable record, a second run, and a hand-made survivor
whose accepted-but-unknown values the recovered node re-decides when it serves."""

from __future__ import annotations

import asyncio
import datetime
import random
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from pyxos.cli import main
from pyxos.core.ballot import Ballot
from pyxos.core.membership import Configuration, MembershipState
from pyxos.core.messages import Entry
from pyxos.core.quorum import Majority
from pyxos.core.ready import Persist
from pyxos.core.recovery import plan_recovery
from pyxos.core.replica import Replica
from pyxos.server.config import Config
from pyxos.server.node import NodeServer, NodeStartupError
from pyxos.server.recover import RecoveryRefused, force_new_cluster
from pyxos.statemachine.kv import Command, KVStore
from pyxos.statemachine.replicated import encode_batch
from pyxos.statemachine.service import ServiceNode, unwrap_snapshot, wrap_snapshot
from pyxos.storage.durable import NEEDS_REBUILD, DurableAcceptor
from pyxos.storage.recovery import RECOVERY_FILENAME, read_recoveries
from pyxos.storage.snapshot import write_snapshot
from pyxos.storage.wal import write_marker
from test_server_harness import CLUSTER, cluster_configs, wait_for

B = Ballot(1, 1)
NOW = datetime.datetime(2026, 11, 30, 10, 0, tzinfo=datetime.UTC)


def put(seq: int, key: str, value: str) -> bytes:
    return encode_batch([(99, seq, msgspec.msgpack.encode(Command(99, seq, "put", key, value)))])


def survivor(tmp_path: Path) -> Config:
    """Node 3 of a 3-node cluster, stopped, with a hand-made log: slots 0 and 1 known
    chosen (watermark 2), 2 and 4 accepted but not known chosen, 3 never accepted."""
    config = cluster_configs(tmp_path, 3, election_timeout=[0.05, 0.1], heartbeat_interval=0.02)[2]
    durable, _ = DurableAcceptor.open(config.data_dir)
    entries = [
        Entry(0, B, put(1, "a", "1")),
        Entry(1, B, put(2, "b", "2")),
        Entry(2, B, put(3, "c", "3")),
        Entry(4, B, put(5, "d", "4")),
    ]
    durable.write(Persist(promised=B, accepted=entries, chosen=2))
    durable.sync()
    durable.close()
    write_marker(config.data_dir, CLUSTER, 3)
    return config


def test_a_survivor_becomes_a_one_node_cluster_and_re_decides_what_it_accepted(
    tmp_path: Path,
) -> None:
    config = survivor(tmp_path)
    outcome = force_new_cluster(config, now=NOW)
    plan = outcome.plan
    assert outcome.written and not outcome.already
    assert (plan.known_chosen_end, plan.accepted_not_known_chosen, plan.gaps) == (2, 2, 1)
    assert plan.configuration.voters == (3,) and plan.disowned == (1, 2)
    [record] = read_recoveries(config.data_dir)
    assert record == outcome.record and record.at == "2026-11-30T10:00:00Z"

    async def serve() -> dict[str, str | None]:
        node = NodeServer(config)
        await node.startup()
        try:
            await wait_for(lambda: node.is_leader, 10.0, "the recovered node to lead")
            await wait_for(lambda: node.status()["applied"] >= 5, 10.0, "slots 0..4 applied")
            status = node.status()
            assert status["recovered"]["forced_new_cluster_from"] == 3
            assert status["recovered"]["disowned"] == [1, 2]
            assert "pyxos_forced_recovery 1.0" in node.metrics.render().decode()
            assert node.node is not None and isinstance(node.node.app, KVStore)
            return {k: node.node.app.get_local(k) for k in "abcd"}
        finally:
            await node.shutdown()

    assert asyncio.run(serve()) == {"a": "1", "b": "2", "c": "3", "d": "4"}


def test_a_second_run_changes_nothing_until_the_node_has_run(tmp_path: Path) -> None:
    config = survivor(tmp_path)
    force_new_cluster(config, now=NOW)
    before = (config.data_dir / RECOVERY_FILENAME).read_bytes()
    again = force_new_cluster(config, now=NOW + datetime.timedelta(hours=1))
    assert again.already and not again.written
    assert (config.data_dir / RECOVERY_FILENAME).read_bytes() == before

    async def run_once() -> None:
        node = NodeServer(config)
        await node.startup()
        try:
            # Leading may be in memory only; re-deciding slots 0..4 is on disk.
            await wait_for(lambda: node.status()["applied"] >= 5, 10.0, "slots 0..4 applied")
        finally:
            await node.shutdown()

    asyncio.run(run_once())
    with pytest.raises(RecoveryRefused, match=r"has run since.*--again"):
        force_new_cluster(config, now=NOW)
    assert (config.data_dir / RECOVERY_FILENAME).read_bytes() == before
    second = force_new_cluster(config, now=NOW, again=True)
    assert second.written and second.plan.configuration.epoch == 2
    assert [r.epoch for r in read_recoveries(config.data_dir)] == [1, 2]


def test_the_cli_says_it_loudly_and_refuses_without_the_flag(tmp_path: Path) -> None:
    config = survivor(tmp_path)
    toml = tmp_path / "node-3.toml"
    peers = ", ".join(f'"{n}" = "{h}:{p}"' for n, (h, p) in config.peers.items())
    toml.write_text(
        f'cluster_id = "{CLUSTER}"\nnode_id = 3\ndata_dir = "{config.data_dir}"\n'
        f"client_port = {config.client_port}\npeers = {{ {peers} }}\n"
    )
    runner = CliRunner()
    r = runner.invoke(main, ["recover", "--config", str(toml)])
    assert r.exit_code == 2 and "say --force-new-cluster" in r.stderr
    assert not (config.data_dir / RECOVERY_FILENAME).exists()
    r = runner.invoke(main, ["recover", "--force-new-cluster", "--dry-run", "--config", str(toml)])
    assert r.exit_code == 0, r.output
    assert "WOULD FORCE (dry run)" in r.stderr
    assert "below 2, re-proposed 4 (2 accepted, not known chosen), no-ops 1" in r.stderr
    assert not (config.data_dir / RECOVERY_FILENAME).exists()
    r = runner.invoke(main, ["recover", "--force-new-cluster", "--config", str(toml)])
    assert r.exit_code == 0, r.output
    assert "FORCED A NEW ONE-NODE CLUSTER from node 3" in r.stderr
    assert "2 slot(s) from 2 to 4 were accepted here but not known chosen" in r.stderr
    assert "POSSIBLY LOST" in r.stderr and "disowned" in r.stderr
    r = runner.invoke(main, ["recover", "--force-new-cluster", "--config", str(toml)])
    assert r.exit_code == 0 and "already recovered" in r.stderr and "nothing changed" in r.stderr


def _refused(config: Config, match: str) -> None:
    with pytest.raises(RecoveryRefused, match=match):
        force_new_cluster(config, now=NOW)
    assert not (config.data_dir / RECOVERY_FILENAME).exists()


def test_refuses_a_missing_or_foreign_data_directory(tmp_path: Path) -> None:
    config = cluster_configs(tmp_path, 3)[2]
    _refused(config, "does not exist")
    config.data_dir.mkdir()
    _refused(config, r"holds no node marker \(pyxos.id\).*wiped")
    write_marker(config.data_dir, "another", 3)
    _refused(config, "belongs to node 3 of cluster 'another'")
    write_marker(config.data_dir, CLUSTER, 3)
    _refused(config, "holds no write-ahead log")
    (config.data_dir / "pyxos.id").write_text("{garbage")
    _refused(config, "marker is damaged")


def test_refuses_a_corrupt_log(tmp_path: Path) -> None:
    config = survivor(tmp_path)
    [segment] = sorted(config.data_dir.glob("wal-*"))
    data = bytearray(segment.read_bytes())
    data[len(data) // 3] ^= 0xFF  # a flipped byte before the tail: corruption
    segment.write_bytes(bytes(data))
    _refused(config, r"write-ahead log is corrupt.*recover from another survivor")


def test_refuses_a_node_that_had_lost_its_state(tmp_path: Path) -> None:
    config = survivor(tmp_path)
    durable, _ = DurableAcceptor.open(config.data_dir)
    durable.wal.append_and_sync([(NEEDS_REBUILD, b"")])
    durable.close()
    _refused(config, "had lost its state and had not finished rebuilding")


def test_refuses_a_damaged_record_and_the_node_will_not_start_with_one(tmp_path: Path) -> None:
    config = survivor(tmp_path)
    force_new_cluster(config, now=NOW)
    path = config.data_dir / RECOVERY_FILENAME
    path.write_text(path.read_text().replace('"known_held": 2', '"known_held": 3'))
    with pytest.raises(RecoveryRefused, match="checksum mismatch"):
        force_new_cluster(config, now=NOW)

    async def start() -> None:
        await NodeServer(config).startup()

    with pytest.raises(NodeStartupError, match="checksum mismatch"):
        asyncio.run(start())


def test_refuses_a_running_node(tmp_path: Path) -> None:
    config = survivor(tmp_path)

    async def main_() -> None:
        node = NodeServer(config)
        await node.startup()
        try:
            with pytest.raises(RecoveryRefused, match=r"node 3 is running.*Stop it first"):
                await asyncio.to_thread(force_new_cluster, config, now=NOW)
        finally:
            await node.shutdown()

    asyncio.run(main_())
    assert not (config.data_dir / RECOVERY_FILENAME).exists()


def test_the_snapshot_it_serves_carries_the_forced_configuration_not_the_old_one(
    tmp_path: Path,
) -> None:
    """A joiner catches up by the recovered node's snapshot: had it the old cluster's
    membership, the joiner would install the old timeline and judge the log by it."""
    config = survivor(tmp_path)
    old = MembershipState(8, ((0, Configuration(2, (1, 2, 3, 5), alpha=256)),), retired=(4,))
    empty = ServiceNode(Replica(3, Majority([3]), random.Random(1)), KVStore())
    data = wrap_snapshot(old, empty.state.snapshot())
    write_snapshot(config.data_dir / "snapshots", 8, b"", data)
    outcome = force_new_cluster(config, now=NOW)
    assert outcome.plan.configuration.epoch == 3 and outcome.plan.disowned == (1, 2, 4, 5)

    async def served() -> bytes:
        node = NodeServer(config)
        await node.startup()
        try:
            assert node.node is not None and node.node.snapshot is not None
            assert node.node.snapshot[0] == 8
            return node.node.snapshot[1]
        finally:
            await node.shutdown()

    membership, _ = unwrap_snapshot(asyncio.run(served()))
    assert membership is not None
    assert membership.configs == ((0, outcome.plan.configuration),)
    assert membership.retired == (4,)  # the old cluster's own; the disowned stay apart
    # A joiner that installs it has the recovered node's timeline.
    joiner = Replica(6, outcome.plan.configuration, random.Random(6))
    joiner.install_membership(membership)
    assert joiner.configuration == outcome.plan.configuration


def test_learned_values_survive_a_restart_and_a_checkpoint(tmp_path: Path) -> None:
    """Chosen values learned from a peer (not accepted here) are logged as LEARNED,
    read back, repeated by a checkpoint from its slot on, and never enter the acceptor
    state a phase-1 report is made from."""
    durable, _ = DurableAcceptor.open(tmp_path, segment_bytes=4096)
    durable.write(Persist(promised=B, accepted=[Entry(0, B, b"mine")], chosen=1))
    durable.write_learned([Entry(1, Ballot(0, 0), b"fetched-1"), Entry(5, Ballot(0, 0), b"f5")])
    durable.sync()
    durable.close()
    durable, state = DurableAcceptor.open(tmp_path, segment_bytes=4096)
    assert state.learned == {1: b"fetched-1", 5: b"f5"}
    assert set(state.accepted) == {0}
    for i in range(40):  # a few segments, then a checkpoint that keeps slots >= 2
        durable.write(Persist(accepted=[Entry(100 + i, B, b"x" * 200)]))
    first = durable.checkpoint(B, [], 6, learned_from=2)
    durable.sync()
    assert durable.truncate_before(first) > 0
    durable.close()
    _, state = DurableAcceptor.open(tmp_path, segment_bytes=4096)
    assert state.learned == {5: b"f5"}
    plan = plan_recovery(
        3,
        accepted=state.accepted,
        learned=state.learned,
        snapshot_slot=2,
        chosen_watermark=state.chosen,
        configurations=[Configuration(0, (1, 2, 3))],
    )
    assert plan.known_chosen_end == 6 and plan.known_held == 1 and plan.known_not_held == 3


def test_a_learned_value_wins_over_a_stale_accepted_one_and_is_served(tmp_path: Path) -> None:
    config = cluster_configs(tmp_path, 3, election_timeout=[0.05, 0.1], heartbeat_interval=0.02)[2]
    durable, _ = DurableAcceptor.open(config.data_dir)
    # Slot 0: this node accepted an older proposal, then fetched the chosen value.
    durable.write(Persist(promised=B, accepted=[Entry(0, B, put(1, "a", "stale"))], chosen=2))
    durable.write_learned([Entry(0, Ballot(0, 0), put(2, "a", "chosen"))])
    durable.write_learned([Entry(1, Ballot(0, 0), put(3, "b", "2"))])
    durable.sync()
    durable.close()
    write_marker(config.data_dir, CLUSTER, 3)
    plan = force_new_cluster(config, now=NOW).plan
    assert (plan.known_chosen_end, plan.known_held, plan.known_not_held) == (2, 2, 0)
    assert force_new_cluster(config, now=NOW).already  # the log it wrote is the one recorded

    async def serve() -> dict[str, str | None]:
        node = NodeServer(config)
        await node.startup()
        try:
            await wait_for(lambda: node.status()["applied"] >= 2, 10.0, "slots 0..1 applied")
            assert node.node is not None and isinstance(node.node.app, KVStore)
            return {k: node.node.app.get_local(k) for k in "ab"}
        finally:
            await node.shutdown()

    assert asyncio.run(serve()) == {"a": "chosen", "b": "2"}
