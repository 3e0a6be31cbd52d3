"""Node configuration: TOML loading, overrides, and validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyxos.server.config import Config, ConfigError, parse_address

GOOD = """
cluster_id = "c1"
node_id = 1
client_port = 7101
http_port = 8101
data_dir = "/tmp/pyxos-1"
election_timeout = [0.2, 0.4]
heartbeat_interval = 0.05
window = 64

[peers]
1 = "127.0.0.1:7001"
2 = "127.0.0.1:7002"
3 = "[::1]:7003"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_load_a_good_file(tmp_path: Path) -> None:
    c = Config.load(write(tmp_path, GOOD))
    assert c.cluster_id == "c1"
    assert c.node_id == 1
    assert c.peers == {1: ("127.0.0.1", 7001), 2: ("127.0.0.1", 7002), 3: ("::1", 7003)}
    assert c.client_port == 7101
    assert c.http_port == 8101
    assert c.data_dir == Path("/tmp/pyxos-1")
    assert c.election_timeout == (0.2, 0.4)
    assert c.window == 64
    assert c.host == "127.0.0.1"
    assert c.peer_port == 7001


def test_overrides_win_and_none_is_ignored(tmp_path: Path) -> None:
    c = Config.load(write(tmp_path, GOOD), node_id="2", data_dir="/tmp/x", http_port=None)
    assert c.node_id == 2
    assert c.peer_port == 7002
    assert c.data_dir == Path("/tmp/x")
    assert c.http_port == 8101


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("window = 64", "windw = 64"), "unknown key 'windw'"),
        (('1 = "127.0.0.1:7001"', '01 = "127.0.0.1:7009"\n1 = "127.0.0.1:7001"'), "duplicate"),
        (("node_id = 1", "node_id = 9"), "9 is not among the peers"),
        (('2 = "127.0.0.1:7002"', '2 = "127.0.0.1:70000"'), "port 70000 is not in"),
        (('2 = "127.0.0.1:7002"', '2 = "127.0.0.1"'), "expected 'host:port'"),
        (("client_port = 7101", "client_port = -1"), "client_port: -1 is not a port"),
        (("client_port = 7101", 'client_port = "x"'), "client_port: expected int"),
        (("client_port = 7101", 'client_port = "\u00b2"'), "client_port: expected int"),
        (("client_port = 7101", 'client_port = "--5"'), "client_port: expected int"),
        (("client_port = 7101", "client_port = 7001"), "must differ"),
        (('2 = "127.0.0.1:7002"', '2 = "127.0.0.1:7001"'), "share the address"),
        (("heartbeat_interval = 0.05", "heartbeat_interval = 0.5"), "below the election"),
        (("election_timeout = [0.2, 0.4]", "election_timeout = 3"), "expected [min, max]"),
        (("window = 64", "window = 0"), "window: 0 must be >= 1"),
        (("window = 64", "forward_requests = 1"), "forward_requests: expected true or false"),
        (("window = 64", "snapshot_every = 0"), "snapshot_every: 0 must be >= 1"),
        (("window = 64", "wal_segment_bytes = 100"), "wal_segment_bytes: 100 must be >= 4096"),
        (('cluster_id = "c1"', ""), "missing required key 'cluster_id'"),
        (('cluster_id = "c1"', "cluster_id = ="), "not valid TOML"),
    ],
)
def test_validation_names_the_problem(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    text = GOOD.replace(*change)
    with pytest.raises(ConfigError) as info:
        Config.load(write(tmp_path, text))
    assert message in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        Config.load(tmp_path / "nope.toml")


def test_parse_address() -> None:
    assert parse_address("localhost:1") == ("localhost", 1)
    assert parse_address("[::1]:80") == ("::1", 80)
    with pytest.raises(ConfigError):
        parse_address(":80")


def test_the_command_prints_config_errors_and_exits_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = write(tmp_path, GOOD.replace("window = 64", "windw = 64"))
    proc = subprocess.run(
        [sys.executable, "-m", "pyxos.server", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "unknown key 'windw'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_port_in_use_is_a_clear_error_with_exit_code_2(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    peer_port = free.getsockname()[1]
    free.close()
    try:
        port = busy.getsockname()[1]
        text = (
            'cluster_id = "c1"\nnode_id = 1\n'
            f'client_port = {port}\ndata_dir = "{tmp_path / "d"}"\n'
            f'[peers]\n1 = "127.0.0.1:{peer_port}"\n'
        )
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pyxos.server",
                "--config",
                str(write(tmp_path, text)),
                "--init",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        busy.close()
    assert proc.returncode == 2, proc.stderr
    assert "cannot listen" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_json_logs_are_one_object_per_line() -> None:
    import json
    import logging

    from pyxos.server.__main__ import JsonFormatter

    record = logging.LogRecord(
        "pyxos.net", logging.WARNING, __file__, 1, "refused %s", ("x",), None
    )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "pyxos.net"
    assert entry["message"] == "refused x"
