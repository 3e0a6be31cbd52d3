"""A client that hangs up in the middle of a request body: one debug line, no traceback.

Issue 8, item 7: aiohttp logged "Error handling request" with a ``ConnectionResetError``
traceback at ERROR for every such client. Checked on a real ``pyxos serve`` process
(log level DEBUG, so the debug line is there to be found), which keeps serving.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from test_server_harness import free_ports


def _http(
    port: int, method: str, path: str, body: bytes | None = None
) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def _half_a_body(port: int, request_line: str, declared: int, sent: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(
            f"{request_line} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {declared}\r\n"
            f"Content-Type: application/json\r\n\r\n".encode()
            + sent
        )


def test_a_client_gone_mid_body_is_one_debug_line_and_the_node_keeps_serving(
    tmp_path: Path,
) -> None:
    peer, client, http = free_ports(3)
    config = tmp_path / "node.toml"
    config.write_text(
        f'cluster_id = "c1"\nnode_id = 1\nclient_port = {client}\nhttp_port = {http}\n'
        f'data_dir = "{tmp_path / "data"}"\n[peers]\n1 = "127.0.0.1:{peer}"\n'
    )
    log_path = tmp_path / "node.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pyxos.server",
                "--config",
                str(config),
                "--init",
                "--log-level",
                "DEBUG",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def serving() -> bool:
            try:
                return _http(http, "PUT", "/v1/kv/warmup", b"1")[0] == 200
            except OSError:
                return False

        _wait(serving, 20.0, "the node to serve writes")
        _half_a_body(http, "PUT /v1/kv/half", 1000, b"x" * 500)
        _half_a_body(http, "POST /v1/kv/half/cas", 1000, b'{"expected": null, "value": "')

        def both_seen() -> bool:
            text = log_path.read_text(errors="replace")
            return text.count("disconnected during") + text.count("Error handling request") >= 2

        _wait(both_seen, 10.0, "the node to notice both disconnects")
        assert _http(http, "PUT", "/v1/kv/after", b"still serving") == (200, {"ok": True})
        assert _http(http, "GET", "/v1/kv/after")[1]["value"] == "still serving"
        status = _http(http, "GET", "/v1/status")[1]
    finally:
        proc.terminate()
        proc.wait(10)
    text = log_path.read_text(errors="replace")
    assert "Traceback" not in text, text
    assert "Error handling request" not in text, text
    lines = [line for line in text.splitlines() if "disconnected during" in line]
    assert len(lines) == 2, text
    assert all(" DEBUG pyxos.http: " in line for line in lines), lines
    assert "PUT /v1/kv/half" in lines[0] or "PUT /v1/kv/half" in lines[1]
    assert status["http_net"]["client_disconnects"] == 2
