"""Catch-up on real node processes: a leader killed while clients write, restarted,
caught up, and then the next leader killed (issue 8, item 1).

The writes carry large values, so the slots the restarted node lacks come to more than
one frame (16 MiB): before the fix a Fetch was answered with one Decided of up to 256
values whatever their size, the frame was refused, and the node never caught up.
Every wait is a condition with a deadline; nothing here asserts a duration.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from pyxos.client.mux import ClientPool
from pyxos.localcluster import ClusterError, LocalCluster

VALUE = "v" * (64 * 1024)
WRITES = 600  # 600 x 64 KiB: about 38 MiB the restarted node must learn


async def _write(addresses: dict[int, str], cluster_id: str, first: int, count: int) -> None:
    async with ClientPool(addresses, cluster=cluster_id, connections=2, timeout=30.0) as pool:
        sessions = [pool.session() for _ in range(16)]

        async def writer(i: int) -> None:
            for n in range(first + i, first + count, len(sessions)):
                await sessions[i].put(f"k{n}", f"{n}:{VALUE}")

        await asyncio.gather(*(writer(i) for i in range(len(sessions))))


async def _get(addresses: dict[int, str], cluster_id: str, key: str) -> str | None:
    async with ClientPool(addresses, cluster=cluster_id, connections=1, timeout=30.0) as pool:
        return await pool.session().get(key)


def _applied(cluster: LocalCluster, node: int) -> int:
    status = cluster.node_status(node, timeout=2.0)
    return -1 if status is None else int(status["applied"])


def test_a_restarted_leader_catches_up_under_writes_and_the_next_election_succeeds(
    tmp_path: Path,
) -> None:
    cluster = LocalCluster.create(tmp_path / "cluster", 3, cluster_id="catchup")
    try:
        cluster.start()
        first = cluster.wait_for_leader(30.0)
        addresses = {n.node_id: n.client_address for n in cluster.nodes.values()}
        cluster.kill(first)
        others = [i for i in cluster.nodes if i != first]
        leader = cluster.wait_for_leader(30.0, among=others)
        live = {i: addresses[i] for i in others}
        asyncio.run(_write(live, cluster.cluster_id, 0, WRITES))

        cluster.start_node(first)  # the same command line as before
        target = _applied(cluster, leader)
        assert target > 0
        try:
            cluster.wait_until(
                lambda: _applied(cluster, first) >= target, 90.0, f"node {first} to catch up"
            )
        except ClusterError:
            raise AssertionError(
                f"node {first} applied {_applied(cluster, first)} of {target} slots"
            ) from None

        # Now the restarted node is needed for every quorum: kill the current leader.
        current = cluster.wait_for_leader(30.0)
        cluster.kill(current)
        remaining = [i for i in cluster.nodes if i != current]
        new = cluster.wait_for_leader(30.0, among=remaining)
        assert new in remaining
        live = {i: addresses[i] for i in remaining}
        asyncio.run(_write(live, cluster.cluster_id, WRITES, 32))
        assert asyncio.run(_get(live, cluster.cluster_id, "k7")) == f"7:{VALUE}"
        assert asyncio.run(_get(live, cluster.cluster_id, f"k{WRITES + 3}")) == (
            f"{WRITES + 3}:{VALUE}"
        )
    finally:
        cluster.stop()
