"""`pyxos view`: the server side (the page itself: tests/test_view_browser.py)."""

from __future__ import annotations

import json
import tomllib
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyxos.cli import main
from pyxos.view.server import TraceError, read_header
from view_helpers import view_server

ROOT = Path(__file__).resolve().parents[1]
TRACE = Path(__file__).parent / "testdata" / "trace-kv-seed4.jsonl"


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as res:
            return res.status, res.headers.get("Content-Type", ""), res.read()
    except urllib.error.HTTPError as e:
        return e.code, "", b""


def test_serves_the_page_its_assets_and_the_trace() -> None:
    with view_server(TRACE) as url:
        assert url.startswith("http://127.0.0.1:")
        status, kind, body = _get(url)
        assert status == 200 and kind.startswith("text/html")
        assert b"/assets/viewer.js" in body and b"trace-kv-seed4.jsonl" in body
        status, kind, body = _get(url + "assets/viewer.js")
        assert status == 200 and "javascript" in kind and b"pyxosView" in body
        status, kind, _ = _get(url + "assets/viewer.css")
        assert status == 200 and kind.startswith("text/css")
        status, _, body = _get(url + "trace.jsonl")
        assert status == 200 and body == TRACE.read_bytes()
        assert json.loads(_get(url + "info")[2])["header"]["seed"] == 4
        assert _get(url + "assets/../server.py")[0] == 404
        assert _get(url + "assets/nothing.js")[0] == 404


def test_assets_are_package_data() -> None:
    assets = resources.files("pyxos.view") / "assets"
    for name in ("index.html", "viewer.js", "viewer.css"):
        assert (assets / name).is_file(), name
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "view/assets/*" in pyproject["tool"]["setuptools"]["package-data"]["pyxos"]


def test_no_cdn_and_no_build_step() -> None:
    assets = resources.files("pyxos.view") / "assets"
    for name in ("index.html", "viewer.js", "viewer.css"):
        text = (assets / name).read_text()
        assert "http://" not in text and "https://" not in text, name


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("hello\n", "not JSON"),
        ('{"format": "other"}\n', "not a pyxos trace"),
        ('{"format": "pyxos-trace", "version": 99}\n', "version 99"),
        ("", "not JSON"),
    ],
)
def test_a_file_that_is_not_a_trace_is_refused(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(TraceError, match=message):
        read_header(path)
    res = CliRunner().invoke(main, ["view", str(path), "--no-open"])
    assert res.exit_code == 2
    assert message in res.output
