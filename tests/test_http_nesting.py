"""Deeply nested JSON bodies on the operator and client endpoints get a 400, not a 500.

``json.loads`` raises ``RecursionError`` (not ``ValueError``) on a body of a few
thousand ``[``: the handlers caught only ``ValueError``, so ``/v1/members``,
``/v1/leader/transfer``, ``/v1/kv/K/cas`` answered 500 with a traceback in the log.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from test_server_harness import cluster_configs, start_nodes, stop_nodes, wait_leader

DEEP = b"[" * 50_000  # under the members endpoint's 64 KiB limit
DEEP_OBJECT = b'{"to": ' + b"[" * 50_000


def test_deeply_nested_json_is_a_clear_400_and_the_node_keeps_serving(tmp_path: Path) -> None:
    async def main() -> None:
        nodes = await start_nodes(cluster_configs(tmp_path, http_port=0))
        try:
            leader = await wait_leader(nodes)
            base = f"http://127.0.0.1:{leader.http_port}"
            timeout = aiohttp.ClientTimeout(total=20)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                for method, path, body in (
                    ("POST", "/v1/members", DEEP),
                    ("POST", "/v1/members/2/promote", DEEP),
                    ("DELETE", "/v1/members/2", DEEP),
                    ("POST", "/v1/members/2/replace", DEEP),
                    ("POST", "/v1/leader/transfer", DEEP),
                    ("POST", "/v1/leader/transfer", DEEP_OBJECT),
                    ("POST", "/v1/kv/k/cas", DEEP),
                ):
                    async with http.request(method, base + path, data=body) as r:
                        text = await r.text()
                        assert r.status == 400, (method, path, r.status, text[:200])
                        assert "JSON" in text or "expected" in text, text[:200]
                async with http.get(f"{base}/v1/members") as r:
                    doc = await r.json()
                    assert r.status == 200 and len(doc["voters"]) == len(nodes), doc
                async with http.put(f"{base}/v1/kv/after", data=b"ok") as r:
                    assert r.status == 200
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())
