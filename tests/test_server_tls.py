"""Nodes with TLS on, over real sockets on 127.0.0.1 (issue 12 item 3).

A cluster whose nodes hold certificates of its CA elects a leader and serves writes
over the binary client port and the HTTP API, both over TLS. A node with a
certificate of another CA cannot join: its peers refuse it at the TLS handshake, count
it (``pyxos_peer_net_total{event="tls_refused"}``) and it never reaches a quorum.
Every wait is on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from pathlib import Path

import aiohttp
import pytest

from pyxos.certs import CertFiles, init_certs
from pyxos.net.codec import PROTOCOL_VERSION, Hello, encode_hello
from pyxos.net.tls import TlsFiles, client_context
from pyxos.server.config import Config
from pyxos.server.node import NodeServer
from pyxos.statemachine.kv import Command, Result, decode_result
from test_server_harness import CLUSTER, cluster_configs, start_nodes, stop_nodes, wait_for
from test_server_node import RawClient


@pytest.fixture(scope="module", autouse=True)
def _needs_cryptography() -> None:
    """Certificates are made with ``cryptography`` (a dependency since issue 12): a
    virtualenv installed before it skips these tests until ``pip install -e .[dev]``."""
    pytest.importorskip("cryptography")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertFiles, CertFiles]:
    """The cluster's certificates and a stranger's (another CA)."""
    return (
        init_certs(tmp_path_factory.mktemp("ours"), nodes=3),
        init_certs(tmp_path_factory.mktemp("theirs"), nodes=3),
    )


def with_tls(config: Config, certs: CertFiles) -> Config:
    """``config`` with this node's certificate of ``certs``."""
    cert, key = certs.nodes[config.node_id]
    return dataclasses.replace(config, tls_ca=certs.ca, tls_cert=cert, tls_key=key)


def applied(node: NodeServer, key: str) -> str | None:
    """``key``'s value in ``node``'s applied state."""
    return None if node.node is None else node.node.app.get_local(key)


async def tls_client(port: int, ca: Path) -> RawClient:
    """A binary client over TLS (verifying the node against ``ca``)."""
    context = client_context(TlsFiles(ca))
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
    )
    hello = Hello(version=PROTOCOL_VERSION, cluster=CLUSTER, node=0, role="client")
    writer.write(encode_hello(hello))
    return RawClient(reader, writer)


def test_a_tls_cluster_elects_and_serves_writes_over_both_apis(
    tmp_path: Path, pki: tuple[CertFiles, CertFiles]
) -> None:
    ours, _ = pki

    async def main() -> None:
        configs = [with_tls(c, ours) for c in cluster_configs(tmp_path, 3, http_port=0)]
        nodes = await start_nodes(configs)
        try:
            await wait_for(
                lambda: sum(n.is_leader for n in nodes) == 1 and all(n.leader > 0 for n in nodes),
                10.0,
                "a leader",
            )
            follower = next(n for n in nodes if not n.is_leader)
            c = await tls_client(follower.client_port, ours.ca)
            reply = await c.call(Command(7, 1, "put", "k", "binary"), timeout=5.0)
            assert decode_result(reply.result) == Result(ok=True)
            c.close()
            context = client_context(TlsFiles(ours.ca))
            async with aiohttp.ClientSession() as http:
                base = f"https://127.0.0.1:{follower.http_port}"
                async with http.put(f"{base}/v1/kv/h", data="http", ssl=context) as r:
                    assert r.status == 200, await r.text()
                async with http.get(f"{base}/v1/kv/k", ssl=context) as r:
                    assert r.status == 200 and "binary" in await r.text()
                # Plain HTTP on a TLS port is refused at the handshake, and counted.
                with pytest.raises(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{follower.http_port}/healthz"):
                        pass
            await wait_for(
                lambda: follower.http is not None and follower.http.counters["tls_refused"] >= 1,
                5.0,
                "the plain request counted",
            )
            for node in nodes:
                await wait_for(lambda n=node: applied(n, "h") == "http", 5.0, "h applied")
            assert all(n.net_counters["tls_refused"] == 0 for n in nodes)
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())


def test_a_node_with_a_certificate_of_another_ca_cannot_join(
    tmp_path: Path, pki: tuple[CertFiles, CertFiles]
) -> None:
    ours, theirs = pki

    async def main() -> None:
        # A new cluster votes only once every member answered (the bootstrap check), so
        # node 3 first joins with the cluster's certificate, then comes back with one
        # of another CA.
        configs = [with_tls(c, ours) for c in cluster_configs(tmp_path, 3, http_port=0)]
        nodes = await start_nodes(configs)
        good = nodes[:2]
        try:
            await wait_for(
                lambda: sum(n.is_leader for n in nodes) == 1 and all(n.leader for n in nodes),
                10.0,
                "a leader of all three",
            )
            await nodes[2].shutdown()
            rogue = NodeServer(with_tls(configs[2], theirs))
            nodes[2] = rogue
            await rogue.startup()
            await wait_for(
                lambda: (
                    all(n.net_counters["tls_refused"] >= 2 for n in good)
                    and rogue.net_counters["tls_refused"] >= 2
                ),
                10.0,
                "refusals on both sides",
            )
            await wait_for(
                lambda: sum(n.is_leader for n in good) == 1, 10.0, "a leader among nodes 1, 2"
            )
            leader = next(n for n in good if n.is_leader)
            c = await tls_client(leader.client_port, ours.ca)
            reply = await c.call(Command(7, 1, "put", "k", "v"), timeout=5.0)
            assert decode_result(reply.result) == Result(ok=True)
            c.close()
            assert rogue.links is not None and rogue.links.connected() == frozenset()
            assert all(n.links is not None and 3 not in n.links.connected() for n in good)
            assert not rogue.is_leader and rogue.node is not None
            assert applied(rogue, "k") is None
            context = client_context(TlsFiles(ours.ca))
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"https://127.0.0.1:{leader.http_port}/metrics", ssl=context) as r,
            ):
                metrics = await r.text()
            line = next(
                x
                for x in metrics.splitlines()
                if x.startswith('pyxos_peer_net_total{event="tls_refused"}')
            )
            assert float(line.split()[-1]) >= 1
        finally:
            await stop_nodes(nodes)

    asyncio.run(main())


def test_a_tls_node_refuses_a_client_that_does_not_trust_it(
    tmp_path: Path, pki: tuple[CertFiles, CertFiles]
) -> None:
    ours, theirs = pki

    async def main() -> None:
        (config,) = cluster_configs(tmp_path, 1)
        (node,) = await start_nodes([with_tls(config, ours)])
        try:
            with pytest.raises(ssl.SSLError):
                await tls_client(node.client_port, theirs.ca)
            await wait_for(lambda: node.client_counters["tls_refused"] >= 1, 5.0, "counted")
            await wait_for(
                lambda: node.client_server is not None and not node.client_server.connections,
                5.0,
                "slot freed",
            )
        finally:
            await stop_nodes([node])

    asyncio.run(main())
