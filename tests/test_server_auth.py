"""Client authentication with bearer tokens, over real sockets on 127.0.0.1 (issue 12).

A node with ``tokens`` configured (SHA-256 hashes -> roles) serves nobody without a
valid token: HTTP answers 401, the binary protocol refuses every request with a clear
error; a read-only token may read but its writes get 403 / a refusal, and nothing
changes. With TLS on as well, the cluster serves writes over both APIs to a write
token, and neither a token nor key material appears in the logs, ``/v1/status`` or
``/metrics``. Every wait is on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import aiohttp
import pytest

from pyxos.certs import init_certs
from pyxos.client.aio import AsyncClient, CommandRejected
from pyxos.client.mux import ClientPool
from pyxos.net.tls import TlsFiles, client_context
from pyxos.server.auth import Tokens, hash_token
from pyxos.server.config import Config, ConfigError
from test_server_harness import (
    CLUSTER,
    client_addresses,
    cluster_configs,
    start_nodes,
    stop_nodes,
    wait_for,
)

WRITE = "w-token-0123456789abcdefghijkl"
READ = "r-token-0123456789abcdefghijkl"
TOKENS = {hash_token(WRITE): "write", hash_token(READ): "read"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_http_without_a_valid_token_is_401_and_a_read_token_writing_is_403(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        (config,) = cluster_configs(tmp_path, 1, http_port=0, tokens=TOKENS)
        (node,) = await start_nodes([config])
        try:
            await wait_for(lambda: node.is_leader, 5.0, "the node to lead")
            base = f"http://127.0.0.1:{node.http_port}"
            async with aiohttp.ClientSession() as http:
                async with http.put(f"{base}/v1/kv/k", data="v1", headers=bearer(WRITE)) as r:
                    assert r.status == 200
                for headers in ({}, bearer("wrong"), {"Authorization": WRITE}):
                    for method, path in (("GET", "/v1/kv/k"), ("PUT", "/v1/kv/k")):
                        async with http.request(
                            method, f"{base}{path}", data="evil", headers=headers
                        ) as r:
                            assert r.status == 401, (method, headers)
                            assert r.headers["WWW-Authenticate"].startswith("Bearer")
                    async with http.get(f"{base}/v1/status", headers=headers) as r:
                        assert r.status == 401
                for method, path, data in (
                    ("PUT", "/v1/kv/k", "evil"),
                    ("DELETE", "/v1/kv/k", None),
                    ("POST", "/v1/kv/k/cas", '{"expected": "v1", "value": "evil"}'),
                ):
                    async with http.request(
                        method, f"{base}{path}", data=data, headers=bearer(READ)
                    ) as r:
                        assert r.status == 403, method
                async with http.get(f"{base}/v1/kv/k", headers=bearer(READ)) as r:
                    assert r.status == 200 and "v1" in await r.text()
                async with http.get(f"{base}/healthz") as r:
                    assert r.status == 200
            assert node.node is not None and node.node.app.get_local("k") == "v1"
            assert node.http is not None
            assert node.http.counters["auth_refused"] == 9
            assert node.http.counters["auth_forbidden"] == 3
        finally:
            await stop_nodes([node])

    asyncio.run(main())


def test_binary_clients_need_a_token_and_a_read_token_cannot_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        configs = cluster_configs(tmp_path, 3, tokens=TOKENS)
        nodes = await start_nodes(configs)
        addresses = client_addresses(configs)
        try:
            await wait_for(lambda: sum(n.is_leader for n in nodes) == 1, 10.0, "a leader")
            async with AsyncClient(addresses, cluster=CLUSTER, token=WRITE) as writer:
                await writer.put("k", "v1")
            for token in (None, "wrong"):
                async with AsyncClient(addresses, cluster=CLUSTER, token=token) as nobody:
                    with pytest.raises(CommandRejected, match="unauthorized"):
                        await nobody.get("k")
                    with pytest.raises(CommandRejected, match="unauthorized"):
                        await nobody.put("k", "evil")
            async with AsyncClient(addresses, cluster=CLUSTER, token=READ) as reader:
                assert await reader.get("k") == "v1"
                with pytest.raises(CommandRejected, match="forbidden"):
                    await reader.put("k", "evil")
                with pytest.raises(CommandRejected, match="forbidden"):
                    await reader.delete("k")
                with pytest.raises(CommandRejected, match="forbidden"):
                    await reader.cas("k", "v1", "evil")
                # Not a KV command at all: the refusal says so (it said "may not ?").
                with pytest.raises(CommandRejected, match="may not run a command that is not"):
                    await reader.command(b"\xc1not a KV command")
                assert await reader.get("k") == "v1"
            async with ClientPool(addresses, cluster=CLUSTER, token=WRITE) as pool:
                await pool.session().put("p", "pooled")
            for node in nodes:
                await wait_for(
                    lambda n=node: n.node is not None and n.node.app.get_local("p") == "pooled",
                    5.0,
                    "p applied",
                )
                assert node.node is not None and node.node.app.get_local("k") == "v1"
            assert sum(n.client_counters.get("auth_forbidden", 0) for n in nodes) >= 3
            assert sum(n.client_counters.get("auth_refused", 0) for n in nodes) >= 2
        finally:
            await stop_nodes(nodes)

    with caplog.at_level(logging.WARNING, logger="pyxos.server"):
        asyncio.run(main())
    said = caplog.text
    assert "did not present a token: its requests are refused" in said, said
    assert "presented an unknown token: its requests are refused" in said, said


def test_a_tls_cluster_with_tokens_serves_both_apis_and_leaks_no_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("cryptography")  # a virtualenv from before issue 12 lacks it
    caplog.set_level(logging.DEBUG)
    certs = init_certs(tmp_path / "certs", nodes=3)
    tokens_file = tmp_path / "tokens.toml"
    tokens_file.write_text("".join(f'"{h}" = "{role}"\n' for h, role in TOKENS.items()))

    async def main() -> None:
        configs = [
            dataclasses.replace(
                c,
                tls_ca=certs.ca,
                tls_cert=certs.nodes[c.node_id][0],
                tls_key=certs.nodes[c.node_id][1],
                tokens=Tokens.load(tokens_file),
            )
            for c in cluster_configs(tmp_path, 3, http_port=0)
        ]
        nodes = await start_nodes(configs)
        addresses = client_addresses(configs)
        try:
            await wait_for(lambda: sum(n.is_leader for n in nodes) == 1, 10.0, "a leader")
            client_cert, client_key = certs.client
            async with AsyncClient(
                addresses,
                cluster=CLUSTER,
                ca=certs.ca,
                cert=client_cert,
                key=client_key,
                token=WRITE,
            ) as client:
                await client.put("binary", "yes")
                assert await client.get("binary") == "yes"
            async with AsyncClient(addresses, cluster=CLUSTER, ca=certs.ca) as nobody:
                with pytest.raises(CommandRejected, match="unauthorized"):
                    await nobody.put("binary", "evil")
            context = client_context(TlsFiles(certs.ca))
            texts = []
            async with aiohttp.ClientSession() as http:
                for node in nodes:
                    base = f"https://127.0.0.1:{node.http_port}"
                    async with http.put(
                        f"{base}/v1/kv/http{node.config.node_id}",
                        data="yes",
                        headers=bearer(WRITE),
                        ssl=context,
                    ) as r:
                        assert r.status == 200
                    async with http.put(
                        f"{base}/v1/kv/x", data="evil", headers=bearer(READ), ssl=context
                    ) as r:
                        assert r.status == 403
                    for path in ("/v1/status", "/metrics"):
                        async with http.get(
                            f"{base}{path}", headers=bearer(READ), ssl=context
                        ) as r:
                            assert r.status == 200
                            texts.append(await r.text())
            for node in nodes:
                await wait_for(
                    lambda n=node: n.node is not None and n.node.app.get_local("http3") == "yes",
                    5.0,
                    "writes applied",
                )
                assert node.node is not None and node.node.app.get_local("x") is None
        finally:
            await stop_nodes(nodes)
        texts.append(caplog.text)
        # Every secret: the tokens, their hashes, the private keys (each base64 line).
        secrets = [WRITE, READ, *TOKENS]
        for key in [certs.ca_key, certs.client[1], *(k for _, k in certs.nodes.values())]:
            secrets += [line for line in key.read_text().splitlines() if "-----" not in line]
        assert len(secrets) > 10
        for text in texts:
            assert "PRIVATE KEY" not in text
            for secret in secrets:
                assert secret not in text

    asyncio.run(main())


def test_bad_tokens_config_is_a_one_line_error(tmp_path: Path) -> None:
    base = {
        "cluster_id": "c",
        "node_id": 1,
        "peers": {"1": "127.0.0.1:7001"},
        "client_port": 7101,
        "data_dir": str(tmp_path),
    }
    garbage = tmp_path / "garbage.toml"
    garbage.write_text("[[[ not toml")
    for tokens, needle in [
        ({WRITE: "write"}, "never the tokens themselves"),
        ({hash_token(WRITE): "admin"}, "role"),
        ({}, "no token"),
        (str(tmp_path / "missing.toml"), "cannot read"),
        (str(garbage), "not a TOML table"),
        (5, "expected a file path"),
    ]:
        with pytest.raises(ConfigError) as info:
            Config.from_mapping(base | {"tokens": tokens})
        message = str(info.value)
        assert needle in message and "\n" not in message, message
        assert WRITE not in message
