"""A node whose disk is full turns client requests away at its door, and says why: the
client engine goes on to the other nodes, and a client that may use only full nodes
(one pinned to a single node) gets ``NodeUnavailable`` naming the full disk at once,
not an unknown outcome after its timeout. The command had no effect, so no history
event is recorded for it.

The engine with a scripted transport, then real sockets on 127.0.0.1 against
in-process nodes whose ``DiskFull`` is entered directly (the real disk filling up on a
tmpfs is ``tests/test_disk_full.py``); its retries are stubbed, so the disk stays full
until the test clears it, whatever the timing.
"""

from __future__ import annotations

import asyncio
import errno
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pyxos.client import AsyncClient, ClientPool, NodeUnavailable, OutcomeUnknown
from pyxos.core.messages import ClientReply
from pyxos.server.diskfull import DISK_FULL
from pyxos.server.node import NodeServer
from test_client_engine import CLIENT, SEQ, answered, refused, run
from test_server_harness import (
    CLUSTER,
    client_addresses,
    cluster_configs,
    start_nodes,
    stop_nodes,
    wait_for,
    wait_leader,
)

FULL = f"{DISK_FULL} 1: writes are refused until space returns (wal: no space)"


def turned_away(src: int, reason: str = FULL) -> ClientReply:
    return ClientReply(src, CLIENT, SEQ, False, b"", 0, reason)


# -- the engine ------------------------------------------------------------------------


def test_a_pinned_client_turned_away_ends_at_once_saying_why() -> None:
    tried, outcome, _ = run_engine(1, [turned_away(1)])
    assert tried == [0]
    assert isinstance(outcome, NodeUnavailable)
    assert "had no effect" in str(outcome) and FULL in str(outcome)
    assert outcome.reasons == {0: FULL}


def test_turned_away_by_one_node_the_command_goes_on_to_the_others() -> None:
    tried, outcome, call = run_engine(3, [turned_away(1), answered(2)])
    assert tried == [0, 1]
    assert isinstance(outcome, ClientReply) and outcome.ok
    assert call.route.no_leader_replies == 0  # a full disk is not "no leader"


def test_turned_away_by_every_node_ends_with_every_reason() -> None:
    reasons = [FULL.replace(" 1:", f" {n}:") for n in (1, 2, 3)]
    script: list[ClientReply | None] = [turned_away(n + 1, r) for n, r in enumerate(reasons)]
    tried, outcome, _ = run_engine(3, script)
    assert tried == [0, 1, 2]
    assert isinstance(outcome, NodeUnavailable)
    assert outcome.reasons == dict(enumerate(reasons))


def test_after_an_attempt_that_may_have_been_taken_it_stays_unknown_but_says_why() -> None:
    """Silence or a bare refusal may follow a request that reached a log: then a node
    turning the retry away proves nothing, and the deadline's verdict quotes it."""
    for first in (None, refused(1, 0)):
        _, outcome, _ = run_engine(1, [first, *[turned_away(1)] * 10_000], timeout=0.2)
        assert isinstance(outcome, OutcomeUnknown), first
        assert "may or may not" in str(outcome) and FULL in str(outcome)


def run_engine(
    nodes: int, script: list[ClientReply | None], *, timeout: float = 5.0
) -> tuple[list[int], ClientReply | BaseException, Any]:
    from pyxos.client.engine import Route

    return run(Route(nodes, {n + 1: n for n in range(nodes)}), script, timeout=timeout)


# -- real nodes ------------------------------------------------------------------------


def fill_disk(node: NodeServer) -> None:
    """Put ``node`` in the disk-full state until ``free_disk``."""
    disk_full = node.effects.disk_full
    # A snapshot that did not fit, and no retry: it stays full, whatever the timing,
    # until the test says (a WAL source would clear with the next fsync that works).
    disk_full._retry = lambda: None  # type: ignore[method-assign]
    disk_full.enter("snapshot", OSError(errno.ENOSPC, "No space left on device"))


def free_disk(node: NodeServer) -> None:
    node.effects.disk_full.clear("snapshot")


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_a_client_pinned_to_a_full_node_is_told_its_disk_is_full(tmp_path: Path) -> None:
    async def main() -> None:
        (config,) = cluster_configs(tmp_path, n=1, http_port=0)
        (node,) = await start_nodes([config])
        history: list[dict[str, Any]] = []
        address = [f"127.0.0.1:{node.client_port}"]
        try:
            await wait_for(lambda: node.is_leader, 5.0, "the node to lead")
            async with (
                AsyncClient(address, cluster=CLUSTER, timeout=3.0, history=history.append) as c,
                ClientPool(address, cluster=CLUSTER, timeout=3.0) as pool,
            ):
                session = pool.session()
                await c.put("k", "1")
                fill_disk(node)
                for put in (c.put, session.put):
                    with pytest.raises(NodeUnavailable, match="disk full on node 1") as info:
                        await put("k", "2")
                    assert "had no effect" in str(info.value)
                assert [r["value"] for r in history] == ["1"], "no event for the refusal"
                # The HTTP API says so too (a write: 507).
                base = f"http://127.0.0.1:{node.http_port}"
                code, body = await asyncio.to_thread(http, "PUT", f"{base}/v1/kv/k", b"3")
                assert code == 507 and "disk full on node 1" in body["error"], (code, body)
                free_disk(node)
                await c.put("k", "4")
                await session.put("p", "4")
                assert await c.get("k") == "4"
                assert [r["value"] for r in history] == ["1", "4", None]
        finally:
            await stop_nodes([node])

    asyncio.run(asyncio.wait_for(main(), 60.0))


def test_a_client_of_every_node_goes_past_a_full_one(tmp_path: Path) -> None:
    async def main() -> None:
        configs = cluster_configs(tmp_path, n=3)
        nodes = await start_nodes(configs)
        try:
            leader = await wait_leader(nodes)
            full = next(n for n in nodes if n is not leader)
            # The full node first: every command starts there until one succeeds.
            addresses = client_addresses([full.config] + [n.config for n in nodes if n is not full])
            fill_disk(full)
            async with (
                AsyncClient(addresses, cluster=CLUSTER, timeout=10.0) as everywhere,
                AsyncClient(addresses[:1], cluster=CLUSTER, timeout=10.0) as pinned,
            ):
                await everywhere.put("k", "1")
                assert await everywhere.get("k") == "1"
                assert everywhere.answered_by != full.config.node_id
                name = f"disk full on node {full.config.node_id}"
                with pytest.raises(NodeUnavailable, match=name):
                    await pinned.put("k", "2")
                free_disk(full)
                await pinned.put("k", "3")  # it forwards to the leader again
                assert await everywhere.get("k") == "3"
        finally:
            await stop_nodes(nodes)

    asyncio.run(asyncio.wait_for(main(), 60.0))


def test_the_application_http_api_answers_507_while_the_disk_is_full(tmp_path: Path) -> None:
    async def main() -> None:
        (config,) = cluster_configs(tmp_path, n=1, http_port=0, app="examples.counter:Counter")
        (node,) = await start_nodes([config])
        try:
            await wait_for(lambda: node.is_leader, 5.0, "the node to lead")
            base = f"http://127.0.0.1:{node.http_port}/v1/app"
            body = json.dumps({"add": 2}).encode()
            assert await asyncio.to_thread(http, "POST", f"{base}/command", body) == (
                200,
                {"result": 2},
            )
            fill_disk(node)
            code, answer = await asyncio.to_thread(http, "POST", f"{base}/command", body)
            assert code == 507 and "disk full on node 1" in answer["error"], (code, answer)
            free_disk(node)
            assert await asyncio.to_thread(http, "POST", f"{base}/query", b'"value"') == (
                200,
                {"result": 2},
            )
        finally:
            await stop_nodes([node])

    asyncio.run(asyncio.wait_for(main(), 60.0))
