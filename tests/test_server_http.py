"""The HTTP API against an in-process 3-node cluster."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from pyxos.statemachine.kv import MAX_KEY_BYTES, MAX_VALUE_BYTES
from test_server_harness import cluster_configs, start_nodes, stop_nodes, wait_leader


def test_http_kv_status_health_and_limits(tmp_path: Path) -> None:
    async def main() -> None:
        configs = cluster_configs(tmp_path, http_port=0)
        nodes = await start_nodes(configs)
        try:
            leader = await wait_leader(nodes)
            follower = next(n for n in nodes if n is not leader)
            base = f"http://127.0.0.1:{leader.http_port}"
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/healthz") as r:
                    assert r.status == 200
                async with http.get(f"{base}/v1/kv/a") as r:
                    assert r.status == 404
                async with http.put(f"{base}/v1/kv/a", data="1") as r:
                    assert r.status == 200, await r.text()
                async with http.put(f"{base}/v1/kv/dir/b", data="2") as r:
                    assert r.status == 200
                async with http.get(f"{base}/v1/kv/a") as r:
                    assert r.status == 200
                    assert await r.json() == {"key": "a", "value": "1"}
                async with http.post(
                    f"{base}/v1/kv/a/cas", json={"expected": "x", "value": "3"}
                ) as r:
                    assert await r.json() == {"ok": False, "value": "1"}
                async with http.post(
                    f"{base}/v1/kv/a/cas", json={"expected": "1", "value": "3"}
                ) as r:
                    assert await r.json() == {"ok": True, "value": None}
                async with http.get(f"{base}/v1/kv", params={"prefix": "dir/"}) as r:
                    assert await r.json() == {
                        "entries": [["dir/b", "2"]],
                        "more": False,
                        "next": None,
                    }
                async with http.delete(f"{base}/v1/kv/a") as r:
                    assert await r.json() == {"deleted": True, "value": "3"}
                async with http.get(f"{base}/metrics") as r:
                    assert r.status == 200
                    text = await r.text()
                    assert "pyxos_is_leader 1.0" in text
                    metrics = {
                        line.split(" ")[0]: float(line.split(" ")[1])
                        for line in text.splitlines()
                        if line and not line.startswith("#")
                    }
                    assert metrics["pyxos_fsync_seconds_count"] > 0
                    assert metrics["pyxos_batch_commands_count"] >= 2
                    assert metrics["pyxos_commits_total"] >= 2
                    assert metrics["pyxos_elections_total"] >= 1
                    assert 'pyxos_queue_depth{queue="slots_in_flight"}' in metrics
                    assert 'pyxos_peer_net_total{event="malformed_frames"}' in metrics
                async with http.get(f"{base}/v1/status") as r:
                    status = await r.json()
                    assert status["role"] == "leader"
                    assert status["node_id"] == leader.config.node_id

                # Limits and bad input.
                async with http.put(f"{base}/v1/kv/big", data=b"x" * (MAX_VALUE_BYTES + 1)) as r:
                    assert r.status == 413
                async with http.put(f"{base}/v1/kv/{'k' * (MAX_KEY_BYTES + 1)}", data="v") as r:
                    assert r.status == 400
                async with http.put(f"{base}/v1/kv/bin", data=b"\xff\xfe") as r:
                    assert r.status == 400
                async with http.post(f"{base}/v1/kv/a/cas", data=b"not json") as r:
                    assert r.status == 400
                async with http.post(f"{base}/v1/kv/a/cas", json={"value": 3}) as r:
                    assert r.status == 400

                # A follower forwards to the leader.
                fbase = f"http://127.0.0.1:{follower.http_port}"
                async with http.get(f"{fbase}/v1/kv/dir/b") as r:
                    assert r.status == 200
                    assert (await r.json())["value"] == "2"
                async with http.put(f"{fbase}/v1/kv/via-follower", data="f") as r:
                    assert r.status == 200, await r.text()
                async with http.get(f"{base}/v1/kv/via-follower") as r:
                    assert (await r.json())["value"] == "f"

                # ?stale=true reads the follower's own applied state, once it has it.
                async def stale_value() -> object:
                    async with http.get(f"{fbase}/v1/kv/via-follower?stale=true") as r:
                        body = await r.json()
                        assert body["stale"] is True
                        return body["value"]

                deadline = asyncio.get_running_loop().time() + 5.0
                while await stale_value() != "f":
                    assert asyncio.get_running_loop().time() < deadline, "follower never applied"
                    await asyncio.sleep(0.02)
                async with http.get(f"{fbase}/v1/kv?prefix=via-&stale=true") as r:
                    assert (await r.json())["entries"] == [["via-follower", "f"]]
                async with http.get(f"{fbase}/v1/kv/absent?stale=1") as r:
                    assert r.status == 404

                # Concurrent requests each get their own session and all apply.
                async def put(i: int) -> int:
                    async with http.put(f"{base}/v1/kv/c{i}", data=str(i)) as r:
                        return r.status

                assert await asyncio.gather(*(put(i) for i in range(20))) == [200] * 20
                async with http.get(f"{base}/v1/kv", params={"prefix": "c"}) as r:
                    assert len((await r.json())["entries"]) == 20

                # Without a quorum, a write's outcome is unknown: 504.
                assert leader.http is not None
                leader.http.timeout = 0.5
                for node in nodes:
                    if node is not leader:
                        await node.shutdown()
                async with http.put(f"{base}/v1/kv/late", data="x") as r:
                    assert r.status == 504
                    assert (await r.json())["outcome"] == "unknown"
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())


def test_without_a_leader_reads_say_503_and_writes_wait_for_one(tmp_path: Path) -> None:
    async def main() -> None:
        configs = cluster_configs(tmp_path, http_port=0)
        (alone,) = await start_nodes(configs[:1])  # no quorum: nobody leads
        others = []
        try:
            base = f"http://127.0.0.1:{alone.http_port}"
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/v1/kv/x") as r:
                    assert r.status == 503
                    assert r.headers["Retry-After"] == "1"
                    assert (await r.json())["leader"] == 0

                async def put() -> int:
                    async with http.put(f"{base}/v1/kv/x", data="1") as r:
                        return r.status

                write = asyncio.create_task(put())  # refused, retried with the same seq
                await asyncio.sleep(0.3)
                assert not write.done()
                others = await start_nodes(configs[1:])
                assert await asyncio.wait_for(write, 5.0) == 200
                async with http.get(f"{base}/v1/kv/x") as r:
                    assert (await r.json())["value"] == "1"
        finally:
            await stop_nodes([alone, *others])

    asyncio.run(main())
