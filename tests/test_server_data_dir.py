"""An unusable data directory is a configuration error: one line on stderr, exit 2.

Issue 8, item 6: a data directory that is a file, that sits under a file, or that is on
a read-only file system used to end in a traceback. The read-only cases need a
directory the node really cannot write: tests run as root here, and root writes
through ``chmod 0500``, so as root the test mounts a read-only tmpfs of its own (and
unmounts it), and skips, saying why, where it may not mount.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyxos.server.config import Config
from pyxos.server.node import DataDirUnusable, NodeServer
from test_server_harness import free_ports


def _config_text(data_dir: Path) -> str:
    peer, client = free_ports(2)
    return (
        f'cluster_id = "c1"\nnode_id = 1\nclient_port = {client}\n'
        f'data_dir = "{data_dir}"\n[peers]\n1 = "127.0.0.1:{peer}"\n'
    )


def _serve(
    tmp_path: Path, data_dir: Path, *, init: bool = True
) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "node.toml"
    config.write_text(_config_text(data_dir))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pyxos.server",
            "--config",
            str(config),
            *(["--init"] if init else []),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _assert_one_line_exit_2(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("pyxos: configuration error: node 1: data_dir "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]


def test_a_data_dir_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "a-file"
    path.write_text("not a directory")
    _assert_one_line_exit_2(_serve(tmp_path, path), "is not a directory")
    assert path.read_text() == "not a directory"  # nothing was touched


def test_a_data_dir_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    _assert_one_line_exit_2(_serve(tmp_path, tmp_path / "a-file" / "data"), "Not a directory")


class ReadOnlyDir:
    """A directory this process cannot write: chmod 0500, or (as root) a read-only tmpfs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mounted = False

    def make(self) -> None:
        self.path.mkdir(exist_ok=True)
        if os.geteuid() != 0:
            self.path.chmod(0o500)
            return
        self._mount("rw")
        self.mounted = True

    def remount_read_only(self) -> None:
        if self.mounted:
            self._mount("remount,ro")
        else:
            self.path.chmod(0o500)

    def _mount(self, options: str) -> None:
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"{options},size=4m", "pyxos-test", str(self.path)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            pytest.skip(
                "running as root, where chmod does not stop writes, and mounting a "
                f"read-only tmpfs is not allowed here: {proc.stderr.strip()}"
            )

    def cleanup(self) -> None:
        if self.mounted:
            subprocess.run(["umount", str(self.path)], check=False)
        elif self.path.exists():
            self.path.chmod(0o700)


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[ReadOnlyDir]:
    ro = ReadOnlyDir(tmp_path / "ro")
    try:
        yield ro
    finally:
        ro.cleanup()


def test_an_empty_data_dir_on_a_read_only_file_system(
    tmp_path: Path, read_only: ReadOnlyDir
) -> None:
    read_only.make()
    read_only.remount_read_only()
    _assert_one_line_exit_2(_serve(tmp_path, read_only.path), "is not writable")


def test_a_node_whose_data_dir_became_read_only(tmp_path: Path, read_only: ReadOnlyDir) -> None:
    # A node that ran before (marker, WAL) restarts after its file system went
    # read-only (what ext4 does after I/O errors).
    read_only.make()
    config = Config.load(_write(tmp_path, _config_text(read_only.path)))

    async def run_once() -> None:
        node = NodeServer(config, initialize=True)
        await node.startup()
        await node.shutdown()

    asyncio.run(run_once())
    assert (read_only.path / "pyxos.id").exists()
    read_only.remount_read_only()
    _assert_one_line_exit_2(_serve(tmp_path, read_only.path, init=False), "is not writable")


def test_startup_raises_data_dir_unusable_in_process(tmp_path: Path) -> None:
    path = tmp_path / "a-file"
    path.write_text("x")
    config = Config.load(_write(tmp_path, _config_text(path)))

    async def start() -> None:
        await NodeServer(config, initialize=True).startup()

    with pytest.raises(DataDirUnusable, match="is not a directory"):
        asyncio.run(start())


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path
