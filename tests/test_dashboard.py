"""The live cluster page's server side (pyxos.server.dashboard): the page, the event
stream, and who may read it across origins. (In a browser: test_dashboard_browser.py.)"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from test_server_harness import cluster_configs, start_nodes, stop_nodes, wait_leader


async def _first_event(http: aiohttp.ClientSession, url: str, **kw: object) -> dict[str, object]:
    async with http.get(url, **kw) as r:  # type: ignore[arg-type]
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("text/event-stream")
        while True:
            line = (await asyncio.wait_for(r.content.readline(), 10)).decode()
            if line.startswith("data: "):
                return json.loads(line[len("data: ") :])  # type: ignore[no-any-return]


def test_page_stream_and_origins(tmp_path: Path) -> None:
    async def main() -> None:
        nodes = await start_nodes(cluster_configs(tmp_path, http_port=0))
        try:
            leader = await wait_leader(nodes)
            base = f"http://127.0.0.1:{leader.http_port}"
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/") as r:
                    assert r.status == 200
                    page = await r.text()
                    assert "/dashboard/dashboard.js" in page
                async with http.get(f"{base}/dashboard/dashboard.js") as r:
                    assert r.status == 200 and "EventSource" in await r.text()
                async with http.get(f"{base}/dashboard/../node.py") as r:
                    assert r.status == 404
                event = await _first_event(http, f"{base}/v1/events")
                assert event["node_id"] == leader.config.node_id
                assert event["role"] == "leader" and event["leader"] == leader.config.node_id
                assert event["members"] == [1, 2, 3]
                assert isinstance(event["log"], list)
                # another member's page (same host, another port) may read the stream
                origin = "http://127.0.0.1:1234"
                async with http.get(f"{base}/v1/events", headers={"Origin": origin}) as r:
                    assert r.status == 200
                    assert r.headers["Access-Control-Allow-Origin"] == origin
                # a page from anywhere else may not
                evil = "http://evil.example:80"
                async with http.get(f"{base}/v1/events", headers={"Origin": evil}) as r:
                    assert r.status == 403
                    assert "Access-Control-Allow-Origin" not in r.headers
                # the API is unchanged
                async with http.get(f"{base}/v1/status") as r:
                    assert (await r.json())["node_id"] == leader.config.node_id
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())
