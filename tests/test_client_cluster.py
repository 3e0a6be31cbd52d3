"""The async client against in-process 3-node clusters on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from pyxos.client import AsyncClient, CommandRejected, OutcomeUnknown
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


@pytest.mark.parametrize("forward", [True, False])
def test_put_get_cas_delete_list_through_a_follower(tmp_path: Path, forward: bool) -> None:
    async def main() -> None:
        configs = cluster_configs(tmp_path, forward_requests=forward)
        nodes = await start_nodes(configs)
        try:
            leader = await wait_leader(nodes)
            addresses = client_addresses(configs)
            # Put a follower first: the very first command is forwarded (or redirected).
            i = nodes.index(leader)
            addresses = addresses[i + 1 :] + addresses[: i + 1]
            async with AsyncClient(addresses, cluster=CLUSTER) as c:
                assert await c.get("k") is None
                assert c.leader == leader.config.node_id
                if forward:
                    assert c.answered_by != leader.config.node_id  # relayed
                    assert c.retries == 0
                else:
                    assert c.answered_by == leader.config.node_id
                    assert c.retries >= 1  # redirected
                await c.put("k0", "v0")
                await c.put("k", "v1")
                assert await c.get("k") == "v1"
                assert await c.cas("k", "wrong", "v2") is False
                assert await c.cas("k", "v1", "v2") is True
                assert await c.cas("new", None, "n") is True
                assert await c.list("") == [("k", "v2"), ("k0", "v0"), ("new", "n")]
                assert await c.list("ne") == [("new", "n")]
                assert await c.delete("k") == "v2"
                assert await c.delete("k") is None
                assert await c.get("k") is None
                with pytest.raises(CommandRejected, match="key is empty"):
                    await c.put("", "x")
                assert await c.get("new") == "n"  # the session continues after a rejection
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())


def test_node_id_mapping_goes_straight_to_the_leader(tmp_path: Path) -> None:
    async def main() -> None:
        configs = cluster_configs(tmp_path)
        nodes = await start_nodes(configs)
        try:
            leader = await wait_leader(nodes)
            mapping = {c.node_id: f"127.0.0.1:{c.client_port}" for c in configs}
            async with AsyncClient(mapping, cluster=CLUSTER) as c:
                await c.put("a", "1")
                assert c.leader == leader.config.node_id
                before = c.retries
                await c.put("a", "2")
                assert c.answered_by == leader.config.node_id
                assert c.retries == before  # the leader's address was known: no detour
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())


def test_a_retry_with_the_same_seq_applies_once(tmp_path: Path) -> None:
    async def main() -> None:
        configs = cluster_configs(tmp_path)
        nodes = await start_nodes(configs)
        try:
            await wait_leader(nodes)
            async with AsyncClient(client_addresses(configs), cluster=CLUSTER) as c:
                await c.put("n", "1")
                assert await c.cas("n", "1", "2") is True
                # Resend the cas with the same (client_id, seq): applied again it would
                # fail (n is "2" now); answered from the session table it succeeds.
                c.seq -= 1
                assert await c.cas("n", "1", "2") is True
                assert await c.get("n") == "2"
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())


def test_killing_the_leader_a_new_one_serves_within_3s(tmp_path: Path) -> None:
    async def main() -> None:
        configs = cluster_configs(tmp_path)
        nodes = await start_nodes(configs)
        try:
            leader = await wait_leader(nodes)
            async with AsyncClient(client_addresses(configs), cluster=CLUSTER) as c:
                acknowledged = {}
                for i in range(20):
                    await c.put(f"key{i}", f"value{i}")
                    acknowledged[f"key{i}"] = f"value{i}"
                await leader.shutdown()
                started = time.monotonic()
                await c.put("after", "failover")
                elapsed = time.monotonic() - started
                assert elapsed < 3.0, f"the first write after failover took {elapsed:.2f} s"
                assert c.answered_by != leader.config.node_id
                for key, value in acknowledged.items():
                    assert await c.get(key) == value
                assert await c.get("after") == "failover"

                # The old leader restarts and catches up with everything.
                i = nodes.index(leader)
                nodes[i] = NodeServer(configs[i])
                await nodes[i].startup()
                restarted = nodes[i]
                await wait_for(
                    lambda: (
                        restarted.node is not None
                        and restarted.node.app.get_local("after") == "failover"
                    ),
                    5.0,
                    "the restarted node to catch up",
                )
                assert restarted.node is not None
                assert restarted.node.app.get_local("key7") == "value7"
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())


def test_no_quorum_means_outcome_unknown(tmp_path: Path) -> None:
    async def main() -> None:
        configs = cluster_configs(tmp_path)
        nodes = await start_nodes(configs)
        try:
            leader = await wait_leader(nodes)
            async with AsyncClient(
                client_addresses(configs), cluster=CLUSTER, timeout=1.0, attempt_timeout=0.3
            ) as c:
                await c.put("x", "1")
                for node in nodes:
                    if node is not leader:
                        await node.shutdown()
                with pytest.raises(OutcomeUnknown, match="may or may not"):
                    await c.put("x", "2")
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())


def test_nothing_listening_means_outcome_unknown(tmp_path: Path) -> None:
    async def main() -> None:
        (config,) = cluster_configs(tmp_path, 1)  # never started
        async with AsyncClient(
            client_addresses([config]), cluster=CLUSTER, timeout=0.5, attempt_timeout=0.2
        ) as c:
            with pytest.raises(OutcomeUnknown):
                await c.get("x")

    asyncio.run(main())


def test_client_ids_are_random_63_bit() -> None:
    ids = {AsyncClient(["127.0.0.1:1"]).client_id for _ in range(20)}
    assert len(ids) == 20
    assert all(0 < i < 2**63 for i in ids)
    with pytest.raises(ValueError):
        AsyncClient(["127.0.0.1:1"], client_id=0)
    with pytest.raises(ValueError):
        AsyncClient([])


def test_concurrent_clients_share_fsyncs(tmp_path: Path) -> None:
    """Group commit end to end: many clients' writes ride on few fsyncs."""

    async def main() -> None:
        configs = cluster_configs(tmp_path)
        nodes = await start_nodes(configs)
        clients = [AsyncClient(client_addresses(configs), cluster=CLUSTER) for _ in range(32)]
        try:
            leader = await wait_leader(nodes)
            await asyncio.gather(*(c.put("warm", "x") for c in clients))
            before = leader.stats.fsyncs

            async def writes(i: int, c: AsyncClient) -> None:
                for j in range(10):
                    await c.put(f"c{i}", str(j))

            await asyncio.gather(*(writes(i, c) for i, c in enumerate(clients)))
            fsyncs = leader.stats.fsyncs - before
            assert fsyncs < 320 / 2, f"{fsyncs} fsyncs for 320 writes: no group commit"
            assert await clients[0].list("c") == sorted((f"c{i}", "9") for i in range(32))
        finally:
            for c in clients:
                await c.close()
            await stop_nodes(nodes)

    asyncio.run(main())


def test_history_records_in_the_checker_format(tmp_path: Path) -> None:
    history_module = pytest.importorskip("pyxos.check.history")

    async def main() -> list[dict[str, object]]:
        configs = cluster_configs(tmp_path)
        nodes = await start_nodes(configs)
        records: list[dict[str, object]] = []
        try:
            leader = await wait_leader(nodes)
            async with AsyncClient(
                client_addresses(configs),
                cluster=CLUSTER,
                history=records.append,
                timeout=1.0,
                attempt_timeout=0.3,
            ) as c:
                await c.put("h", "1")
                assert await c.get("h") == "1"
                assert await c.cas("h", "2", "3") is False
                assert await c.delete("h") == "1"
                await c.list("")  # not a history op
                for node in nodes:
                    if node is not leader:
                        await node.shutdown()
                with pytest.raises(OutcomeUnknown):
                    await c.put("h", "lost?")
        finally:
            await stop_nodes(nodes)
        return records

    records = asyncio.run(main())
    assert [r["op"] for r in records] == ["put", "get", "cas", "delete", "put"]
    assert records[1]["output"] == "1"
    assert records[2]["ok"] is False
    assert records[-1]["return"] is None and records[-1]["ok"] is None
    for record in records:
        history_module.parse_line(json.dumps(record))
