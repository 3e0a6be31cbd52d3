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
