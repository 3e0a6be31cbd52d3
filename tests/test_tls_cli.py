"""``pyxos certs init``, ``pyxos token new``, ``pyxos cluster start --tls`` and ``pyxos
demo --tls`` with real processes on 127.0.0.1 (issue 12 item 3).

The TLS cluster elects a leader and serves the CLI's writes (which verify the nodes
against the cluster's CA) and HTTPS; plain HTTP to it fails; no private key material
appears in the nodes' log files.
"""

from __future__ import annotations

import json
import os
import ssl
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyxos.cli import main
from pyxos.localcluster import LocalCluster
from pyxos.server.auth import hash_token


@pytest.fixture(scope="module", autouse=True)
def _needs_cryptography() -> None:
    """Certificates are made with ``cryptography`` (a dependency since issue 12): a
    virtualenv installed before it skips these tests until ``pip install -e .[dev]``."""
    pytest.importorskip("cryptography")


def test_certs_init_and_token_new(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "pki"
    res = runner.invoke(main, ["certs", "init", "--dir", str(out), "--nodes", "2"])
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [
            "ca.pem",
            "ca.key",
            "node1.pem",
            "node1.key",
            "node2.pem",
            "node2.key",
            "client.pem",
            "client.key",
        ]
    )
    for key in out.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert key.read_text().splitlines()[1] not in res.output
    res = runner.invoke(main, ["token", "new", "--role", "read"])
    assert res.exit_code == 0
    lines = res.output.splitlines()
    token = lines[0].removeprefix("token: ")
    assert lines[1] == f'tokens file line: "{hash_token(token)}" = "read"'


def test_cluster_start_tls_serves_the_cli_and_https_and_logs_no_key(tmp_path: Path) -> None:
    runner = CliRunner()
    base = tmp_path / "c"
    res = runner.invoke(main, ["cluster", "start", "--tls", "--nodes", "3", "--dir", str(base)])
    cluster = LocalCluster.load(base)
    try:
        assert res.exit_code == 0, res.output
        assert "leader: node" in res.output
        assert cluster.tls and cluster.ca_file is not None
        kv = ["kv", "--dir", str(base)]
        assert runner.invoke(main, [*kv, "put", "b", "2"]).output.strip() == "OK"
        assert runner.invoke(main, [*kv, "get", "b"]).output.strip() == "2"
        context = ssl.create_default_context(cafile=str(cluster.ca_file))
        for node in cluster.nodes.values():
            assert node.http_url.startswith("https://")
            with urllib.request.urlopen(f"{node.http_url}/v1/kv/b", context=context) as r:
                assert json.loads(r.read()) == {"key": "b", "value": "2"}
            with pytest.raises((urllib.error.URLError, ConnectionError)):
                plain = node.http_url.replace("https://", "http://")
                urllib.request.urlopen(f"{plain}/healthz", timeout=5).read()
    finally:
        cluster.stop()
    keys = list((base / "certs").glob("*.key"))
    assert len(keys) == 5
    logs = "".join(p.read_text(errors="replace") for p in base.glob("node-*.log"))
    assert "PRIVATE KEY" not in logs
    for key in keys:
        for line in key.read_text().splitlines():
            if "-----" not in line:
                assert line not in logs


def test_demo_tls_runs_to_the_end() -> None:
    env = dict(os.environ, COLUMNS="200")
    proc = subprocess.run(
        [sys.executable, "-m", "pyxos.cli", "demo", "--tls"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=Path(__file__).parent,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "with TLS" in proc.stdout
    assert "demo passed" in proc.stdout


def test_status_over_https_takes_the_ca_and_the_token(tmp_path: Path) -> None:
    import asyncio
    import dataclasses
    import threading

    from pyxos.certs import init_certs
    from test_server_harness import cluster_configs, start_nodes, stop_nodes

    certs = init_certs(tmp_path / "certs", nodes=1)
    token = "status-token-0123456789abcdef"
    (config,) = cluster_configs(tmp_path, 1, http_port=0, tokens={hash_token(token): "read"})
    config = dataclasses.replace(
        config, tls_ca=certs.ca, tls_cert=certs.nodes[1][0], tls_key=certs.nodes[1][1]
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    (node,) = asyncio.run_coroutine_threadsafe(start_nodes([config]), loop).result(30)
    try:
        address = f"127.0.0.1:{node.http_port}"
        runner = CliRunner()
        ok = runner.invoke(
            main, ["status", "--http", address, "--ca", str(certs.ca), "--token", token]
        )
        assert ok.exit_code == 0, ok.output
        assert json.loads(ok.output)["node_id"] == 1
        assert token not in ok.output
        env = {"PYXOS_TOKEN": token}  # the token from the environment, as for `pyxos kv`
        ok = runner.invoke(main, ["status", "--http", address, "--ca", str(certs.ca)], env=env)
        assert ok.exit_code == 0 and json.loads(ok.output)["node_id"] == 1, ok.output
        client_cert, client_key = certs.client
        ok = runner.invoke(
            main,
            [
                *("status", "--http", address, "--ca", str(certs.ca)),
                *("--cert", str(client_cert), "--key", str(client_key), "--token", token),
            ],
        )
        assert ok.exit_code == 0, ok.output
        no_token = runner.invoke(main, ["status", "--http", address, "--ca", str(certs.ca)])
        assert no_token.exit_code != 0 and "401" in no_token.output, no_token.output
        assert "--token" in no_token.output
        no_ca = runner.invoke(main, ["status", "--http", f"https://{address}", "--token", token])
        assert no_ca.exit_code != 0 and "--ca" in no_ca.output, no_ca.output
    finally:
        asyncio.run_coroutine_threadsafe(stop_nodes([node]), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
