"""`pyxos serve --trace FILE`: a real node's side of the run, bounded, and the files of
several nodes merged into one run for `pyxos view` (docs/trace-format.md)."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from pyxos.client.aio import AsyncClient
from pyxos.server import tracefile
from pyxos.server.node import NodeServer
from pyxos.sim import traceout
from pyxos.view.merge import CLIENTS, merge_node_traces
from pyxos.view.server import make_app
from test_server_harness import client_addresses, cluster_configs, stop_nodes, wait_leader

CLUSTER = "pyxos-test"


def _lines(data: bytes | str) -> list[dict[str, Any]]:
    text = data.decode() if isinstance(data, bytes) else data
    return [json.loads(line) for line in text.splitlines() if line]


def test_the_server_writes_the_simulators_format() -> None:
    assert tracefile.TRACE_FORMAT == traceout.TRACE_FORMAT
    assert tracefile.TRACE_VERSION == traceout.TRACE_VERSION


def test_three_real_nodes_traced_and_merged(tmp_path: Path) -> None:
    configs = cluster_configs(tmp_path)
    paths = [tmp_path / f"node-{c.node_id}.jsonl" for c in configs]

    async def main() -> None:
        nodes = [NodeServer(c, initialize=True) for c in configs]
        for node, c, path in zip(nodes, configs, paths, strict=True):
            node.effects.tracer = tracefile.NodeTracer(str(path), c.node_id, c.peers)
            await node.startup()
            # A traced node sends every reply as its own message, so that each
            # message a peer receives pairs with the one sent (a ClientReplies goes
            # to a peer as one frame per reply).
            assert node.node is not None and not node.node.batch_replies
        try:
            await wait_leader(nodes)
            async with AsyncClient(client_addresses(configs), cluster=configs[0].cluster_id) as c:
                for i in range(5):
                    await c.put(f"k{i}", f"v{i}")
        finally:
            await stop_nodes(nodes)
            for node in nodes:
                assert node.effects.tracer is not None
                node.effects.tracer.close()

    asyncio.run(main())
    for c, path in zip(configs, paths, strict=True):
        header, *records = _lines(path.read_text())
        assert header["format"] == "pyxos-trace" and header["node"] == c.node_id
        assert {r["kind"] for r in records} >= {"send", "recv", "state", "persist", "commit"}
    merged = _lines(merge_node_traces(paths))
    header, *records = merged
    assert header["replicas"] == [1, 2, 3] and header["clients"] == [CLIENTS]
    assert [r["i"] for r in records] == list(range(len(records)))
    assert all(a["t"] <= b["t"] for a, b in itertools.pairwise(records))
    sends = {r["m"]: r for r in records if r["kind"] == "send"}
    peer_recvs = [r for r in records if r["kind"] == "recv" and r["src"] != CLIENTS]
    assert peer_recvs
    # every message between traced nodes is paired with its send, content and all
    for r in peer_recvs:
        assert r["m"] is not None, r
        send = sends[r["m"]]
        assert (send["src"], send["dst"], send["h"]) == (r["src"], r["dst"], r["h"])
        assert send["msg"]["type"] == r["type"] and send["i"] < r["i"]
    assert len({r["m"] for r in peer_recvs}) == len(peer_recvs)
    roles = {(r["node"], r["role"]) for r in records if r["kind"] == "state"}
    assert any(role == "leader" for _, role in roles)
    committed = [e for r in records if r["kind"] == "commit" for e in r["entries"]]
    assert len({e[0] for e in committed}) >= 5
    make_app(paths)  # the viewer takes the files as they are


def test_the_trace_is_bounded(tmp_path: Path) -> None:
    configs = cluster_configs(tmp_path, n=1)
    path = tmp_path / "node.jsonl"
    limit = 4000

    async def main() -> None:
        node = NodeServer(configs[0], initialize=True)
        node.effects.tracer = tracefile.NodeTracer(str(path), 1, configs[0].peers, max_bytes=limit)
        await node.startup()
        try:
            await wait_leader([node])
            async with AsyncClient(client_addresses(configs), cluster=configs[0].cluster_id) as c:
                for i in range(40):
                    await c.put(f"k{i}", "x" * 50)
        finally:
            await node.shutdown()
            assert node.effects.tracer is not None
            node.effects.tracer.close()

    asyncio.run(main())
    text = path.read_text()
    header, *records = _lines(text)
    assert records[-1]["kind"] == "truncated"
    assert len(text.encode()) <= limit + len(json.dumps(header)) + 200


def test_a_torn_last_line_is_left_out_and_other_bad_lines_refused(tmp_path: Path) -> None:
    good = tmp_path / "a.jsonl"
    header = {
        "format": "pyxos-trace",
        "version": 1,
        "source": "serve",
        "node": 1,
        "replicas": [1, 2],
    }
    rec = {"i": 0, "t": 1.0, "kind": "state", "node": 1, "role": "follower"}
    good.write_text(json.dumps(header) + "\n" + json.dumps(rec) + "\n" + '{"i": 1, "t"')
    assert len(_lines(merge_node_traces([good]))) == 2
    bad = tmp_path / "b.jsonl"
    bad.write_text(json.dumps(header) + "\n{torn\n" + json.dumps(rec) + "\n")
    with pytest.raises(ValueError, match=r"b\.jsonl:2"):
        merge_node_traces([bad])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--trace", "/nonexistent-dir/t.jsonl"], "--trace /nonexistent-dir/t.jsonl"),
        (["--trace", "t.jsonl", "--trace-max-mb", "0"], "--trace-max-mb must be positive"),
    ],
)
def test_serve_refuses_a_trace_it_cannot_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    from pyxos.localcluster import LocalCluster
    from pyxos.server.__main__ import main

    LocalCluster.create(tmp_path / "c", 1)
    config = str(tmp_path / "c" / "node-1.toml")
    assert main(["--config", config, *extra]) == 2
    assert message in capsys.readouterr().err
