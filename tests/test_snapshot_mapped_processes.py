"""A lagging node caught up from a snapshot its leader restored from a memory map of
the file (``OsFileSystem.read_view``), while writes go on, so new snapshots are taken
and compaction deletes the mapped file under the transfer. The lagging node must end
with every write, and then serve a quorum on its own state; no node may crash on a
stale map. Every wait is a condition with a deadline."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pyxos.client.mux import ClientPool
from pyxos.localcluster import ClusterError, LocalCluster

VALUE = "v" * 4096


async def _write(addresses: dict[int, str], cluster_id: str, first: int, count: int) -> None:
    async with ClientPool(addresses, cluster=cluster_id, connections=2, timeout=30.0) as pool:
        sessions = [pool.session() for _ in range(8)]

        async def writer(i: int) -> None:
            for n in range(first + i, first + count, len(sessions)):
                await sessions[i].put(f"k{n}", f"{n}:{VALUE}")

        await asyncio.gather(*(writer(i) for i in range(len(sessions))))


async def _missing(addresses: dict[int, str], cluster_id: str, count: int) -> list[int]:
    async with ClientPool(addresses, cluster=cluster_id, connections=1, timeout=30.0) as pool:
        s = pool.session()
        return [n for n in range(count) if await s.get(f"k{n}") != f"{n}:{VALUE}"]


def _applied(cluster: LocalCluster, node: int) -> int:
    status = cluster.node_status(node, timeout=2.0)
    return -1 if status is None else int(status["applied"])


def test_a_lagging_node_is_served_from_a_mapped_snapshot_compacted_under_it(
    tmp_path: Path,
) -> None:
    cluster = LocalCluster.create(tmp_path / "cluster", 3, cluster_id="mapped", snapshot_every=40)
    try:
        cluster.start()
        leader = cluster.wait_for_leader(30.0)
        addresses = {n.node_id: n.client_address for n in cluster.nodes.values()}
        lagging = next(i for i in cluster.nodes if i != leader)
        others = [i for i in cluster.nodes if i != lagging]
        cluster.kill(lagging)
        live = {i: addresses[i] for i in others}
        asyncio.run(_write(live, cluster.cluster_id, 0, 400))
        # Restart the two others: each now restores (and serves) a mapped snapshot file.
        for i in others:
            cluster.kill(i)
        for i in others:
            cluster.start_node(i)
        cluster.wait_for_leader(30.0, among=others)
        for i in others:  # compacted below it: the lagging node (at slot 0) needs it
            log = (tmp_path / "cluster" / f"node-{i}.log").read_text()
            assert f"node {i}: restored the snapshot of slot" in log
        cluster.start_node(lagging)
        # Writes meanwhile: new snapshots, compaction deletes the mapped files.
        asyncio.run(_write(live, cluster.cluster_id, 400, 240))
        target = max(_applied(cluster, i) for i in others)
        try:
            cluster.wait_until(
                lambda: _applied(cluster, lagging) >= target, 60.0, f"node {lagging} to catch up"
            )
        except ClusterError:
            raise AssertionError(
                f"node {lagging}: {_applied(cluster, lagging)} of {target}"
            ) from None
        for i in others:
            assert cluster.node_status(i, timeout=2.0) is not None, f"node {i} died"
        # The lagging node is needed for every quorum now.
        cluster.kill(others[0])
        cluster.wait_for_leader(30.0, among=[lagging, others[1]])
        live = {i: addresses[i] for i in (lagging, others[1])}
        assert asyncio.run(_missing(live, cluster.cluster_id, 640)) == []
    finally:
        cluster.stop()
