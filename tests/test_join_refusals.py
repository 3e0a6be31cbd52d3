"""``pyxos serve --join`` refuses, saying why, before it touches its data directory:
another cluster id, an id not added yet, a removed id (server/peerbook.py, *Joining*).
Written by the adversarial review (these refusals had no test)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from pyxos.server.config import Config
from pyxos.server.peerbook import JoinRefused, PeerBook
from test_server_harness import CLUSTER, cluster_configs, start_nodes, stop_nodes, wait_leader


def joiner(tmp_path: Path, node_id: int, cluster: str = CLUSTER) -> Config:
    return Config.from_mapping(
        {
            "cluster_id": cluster,
            "node_id": node_id,
            "peers": {str(node_id): "127.0.0.1:1"},
            "client_port": 2,
            "data_dir": str(tmp_path / f"join{node_id}-{cluster}"),
        }
    )


def test_join_refusals_say_why_and_write_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        nodes = await start_nodes(cluster_configs(tmp_path, http_port=0))
        try:
            leader = await wait_leader(nodes)
            url = f"127.0.0.1:{leader.http_port}"
            cases = [
                (joiner(tmp_path, 9, "another-cluster"), "not 'another-cluster'"),
                (joiner(tmp_path, 9), "not a member of cluster"),
            ]
            for config, expected in cases:
                with pytest.raises(JoinRefused, match=expected):
                    await PeerBook(config, join=url).join(True)
                assert not config.data_dir.exists(), "a refused join writes nothing"
            # Add 9 and remove it: its id is refused for good.
            base = f"http://{url}/v1/members"
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
                async with http.post(base, json={"node": 9, "address": "127.0.0.1:9"}) as r:
                    assert r.status == 200, await r.text()
                async with http.delete(f"{base}/9") as r:
                    assert r.status == 200, await r.text()
            config = joiner(tmp_path, 9)
            with pytest.raises(JoinRefused, match="was removed"):
                await PeerBook(config, join=url).join(True)
            assert not config.data_dir.exists()
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())
