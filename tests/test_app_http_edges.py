"""The ``/v1/app/...`` endpoints against an application whose JSON codec misbehaves,
and against hostile bodies: each gets a clear JSON error, nothing already applied is
lost, and the node keeps serving (docs/architecture.md, *The application contract*).

The codec of :class:`Odd` returns what JSON cannot carry (bytes, a set) for some
results; before, ``json.dumps`` raised outside any handler and aiohttp answered a bare
``500 Internal Server Error`` (text, no JSON) for a command that *was* applied.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from test_server_harness import cluster_configs, start_nodes, stop_nodes, wait_leader


class Odd:
    """A counter whose ``json_result`` returns bytes for ``"raw"`` and a set for
    ``"set"``; ``json_command`` raises ``KeyError`` for a document without ``"op"``."""

    def __init__(self) -> None:
        self.n = 0

    def apply(self, command: bytes) -> bytes:
        self.n += 1
        return command + b" %d" % self.n

    def query(self, q: bytes) -> bytes:
        return q + b" %d" % self.n

    def snapshot(self) -> bytes:
        return b"%d" % self.n

    def restore(self, data: bytes) -> None:
        self.n = int(data)

    def json_command(self, doc: Any) -> bytes:
        return str(doc["op"]).encode()

    def json_query(self, doc: Any) -> bytes:
        return str(doc["op"]).encode()

    def json_result(self, result: bytes) -> Any:
        op, _, n = result.partition(b" ")
        if op == b"raw":
            return result
        if op == b"set":
            return {int(n)}
        return int(n)


def test_a_codec_that_returns_what_json_cannot_carry_is_a_clear_error(tmp_path: Path) -> None:
    async def main() -> None:
        configs = cluster_configs(tmp_path, app="test_app_http_edges:Odd", http_port=0)
        nodes = await start_nodes(configs)
        try:
            leader = await wait_leader(nodes)
            base = f"http://127.0.0.1:{leader.http_port}/v1/app"
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:

                async def post(path: str, body: bytes) -> tuple[int, Any]:
                    async with http.post(base + path, data=body) as r:
                        assert r.content_type == "application/json", (r.status, await r.text())
                        return r.status, await r.json()

                assert await post("/command", b'{"op": "a"}') == (200, {"result": 1})
                for op in (b"raw", b"set"):
                    status, doc = await post("/command", b'{"op": "%s"}' % op)
                    assert status == 500, (status, doc)
                    assert "json_result" in doc["error"], doc
                    assert doc.get("applied") is True, doc  # the command took effect
                    status, doc = await post("/query", b'{"op": "%s"}' % op)
                    assert status == 500 and "json_result" in doc["error"], doc
                assert (await post("/command", b"{}"))[0] == 400  # json_command: KeyError
                assert (await post("/command", b"{not json"))[0] == 400
                # Nothing lost (3 commands applied, each once) and still serving.
                assert await post("/command", b'{"op": "a"}') == (200, {"result": 4})
                assert await post("/query", b'{"op": "a"}') == (200, {"result": 4})
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())
