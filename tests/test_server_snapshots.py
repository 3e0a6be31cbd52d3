"""Snapshots through the node driver: written durably, compaction after, restore on restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pyxos.client import AsyncClient
from pyxos.server.node import NodeServer
from test_server_harness import (
    CLUSTER,
    client_addresses,
    cluster_configs,
    start_nodes,
    stop_nodes,
    wait_for,
    wait_leader,
)


def test_snapshots_compact_and_a_restart_restores_then_catches_up(tmp_path: Path) -> None:
    async def main() -> None:
        configs = cluster_configs(tmp_path, wal_segment_bytes=4096, snapshot_every=5)
        nodes = await start_nodes(configs)
        try:
            leader = await wait_leader(nodes)
            follower = next(n for n in nodes if n is not leader)
            i = nodes.index(follower)
            async with AsyncClient(client_addresses(configs), cluster=CLUSTER) as c:
                for k in range(20):
                    await c.put(f"k{k}", str(k) + "." * 200)
                await wait_for(
                    lambda: leader.stats.snapshots >= 1 and follower.stats.snapshots >= 1,
                    5.0,
                    "snapshots on the leader and a follower",
                )
                await wait_for(
                    lambda: (
                        leader.stats.wal_segments_deleted >= 1
                        and follower.stats.wal_segments_deleted >= 1
                    ),
                    5.0,
                    "WAL compaction on the leader and the follower",
                )
                assert leader.node is not None and leader.node.replica.log_start > 0
                assert list(follower.snapshot_dir.glob("snap-*.snap"))

                # Restart the follower: it starts from its snapshot.
                await follower.shutdown()
                for k in range(20, 40):  # meanwhile the others move on and compact
                    await c.put(f"k{k}", str(k))
                restarted = nodes[i] = NodeServer(configs[i])
                await restarted.startup()
                assert restarted.node is not None
                assert restarted.node.state.applied_slot > 0  # restored, before any input
                await wait_for(
                    lambda: (
                        restarted.node is not None and restarted.node.app.get_local("k39") == "39"
                    ),
                    5.0,
                    "the restarted follower to catch up",
                )
                assert restarted.node.app.get_local("k0") == "0" + "." * 200
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())


def test_a_node_far_behind_installs_a_snapshot(tmp_path: Path) -> None:
    async def main() -> None:
        configs = cluster_configs(tmp_path, snapshot_every=5)
        nodes = await start_nodes(configs)
        try:
            leader = await wait_leader(nodes)
            behind = next(n for n in nodes if n is not leader)
            i = nodes.index(behind)
            await behind.shutdown()
            async with AsyncClient(client_addresses(configs), cluster=CLUSTER) as c:
                for k in range(40):
                    await c.put(f"k{k}", str(k))
            await wait_for(
                lambda: leader.node is not None and leader.node.replica.log_start > 0,
                5.0,
                "the leader to compact",
            )
            back = nodes[i] = NodeServer(configs[i])
            await back.startup()
            await wait_for(
                lambda: back.node is not None and back.node.app.get_local("k39") == "39",
                5.0,
                "the lagging node to install a snapshot and catch up",
            )
            assert back.node is not None
            assert back.node.snapshots_installed >= 1
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())
