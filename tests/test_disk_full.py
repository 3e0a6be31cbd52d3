"""A full disk: the WAL and snapshots survive ENOSPC, and a node resumes by itself.

Storage level on the simulated file system (``storage/simfs.py``: a write that does not
fit writes what fits, then raises ``ENOSPC``; a failing fsync drops the dirty pages as
Linux does), then a real node process on a size-capped tmpfs (root only).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pyxos.client import Client
from pyxos.client.engine import OutcomeUnknown
from pyxos.client.local import LocalClients
from pyxos.core.messages import ClientReply, ClientRequest
from pyxos.server.diskfull import DISK_FULL, is_disk_full_refusal
from pyxos.storage.simfs import SimFileSystem
from pyxos.storage.snapshot import load_latest_snapshot, write_snapshot
from pyxos.storage.wal import WAL, WALDiskFull, is_disk_full
from test_server_harness import CLUSTER, free_ports

D = Path("/node")


def records(wal: WAL) -> list[tuple[int, bytes]]:
    return [(r.index, r.payload) for r in wal.replay()]


def reopen_after_power_loss(fs: SimFileSystem, wal: WAL, seed: int) -> WAL:
    wal.close()
    fs.power_loss(random.Random(seed))
    fs.capacity, fs.fsync_fault = None, None  # the machine comes back with room
    reopened, _ = WAL.open(D, fs=fs, segment_bytes=256)
    return reopened


def test_enospc_mid_record_keeps_the_records_and_a_retry_makes_them_durable() -> None:
    fs = SimFileSystem()
    wal, _ = WAL.open(D, fs=fs)
    wal.append_and_sync([(1, b"a" * 100)])
    fs.capacity = fs.used() + 150  # the second record is cut in the middle
    wal.append([(1, b"b" * 100), (1, b"c" * 100)])
    with pytest.raises(WALDiskFull) as info:
        wal.sync()
    assert is_disk_full(info.value)
    assert not wal.failed and wal.durable_index == 1 and wal.last_index == 3
    with pytest.raises(WALDiskFull):  # still full: the same records wait
        wal.sync()
    wal.append([(1, b"d")])  # appends go on meanwhile, numbered after the waiting ones
    fs.capacity = None  # space returns
    assert wal.sync() == 4
    assert records(wal) == [(1, b"a" * 100), (2, b"b" * 100), (3, b"c" * 100), (4, b"d")]
    wal = reopen_after_power_loss(fs, wal, 0)
    assert records(wal) == [(1, b"a" * 100), (2, b"b" * 100), (3, b"c" * 100), (4, b"d")]


def test_an_enospc_fsync_drops_the_pages_and_the_retry_writes_them_again() -> None:
    # After a failed fsync Linux marks the dirty pages clean: a retry that only called
    # fsync again would "succeed" with nothing on the disk. The WAL cuts the file back
    # and writes the records again, so a power loss after the retry keeps them.
    fs = SimFileSystem()
    wal, _ = WAL.open(D, fs=fs)
    wal.append_and_sync([(1, b"kept")])
    fs.fsync_errno = errno.ENOSPC
    fs.fsync_fault = lambda path: True
    wal.append([(1, b"then"), (1, b"more")])
    with pytest.raises(WALDiskFull):
        wal.sync()
    fs.fsync_fault = None
    assert wal.sync() == 3
    for seed in range(5):
        wal = reopen_after_power_loss(fs, wal, seed)
        assert records(wal) == [(1, b"kept"), (2, b"then"), (3, b"more")]


def test_enospc_during_a_segment_roll_leaves_no_half_made_segment() -> None:
    fs = SimFileSystem()
    wal, _ = WAL.open(D, fs=fs, segment_bytes=256)
    wal.append_and_sync([(1, b"x" * 150)])
    fs.capacity = fs.used() + 10  # not even the next segment's header fits
    wal.append([(1, b"y" * 150)])
    with pytest.raises(WALDiskFull):
        wal.sync()
    assert [p.name for p in wal.segment_paths] == ["wal-00000000000000000001.log"]
    assert not any(n.endswith(".tmp") for n in fs.listdir(D))
    fs.capacity = None
    assert wal.sync() == 2
    wal = reopen_after_power_loss(fs, wal, 1)
    assert records(wal) == [(1, b"x" * 150), (2, b"y" * 150)]


@pytest.mark.parametrize("seed", range(40))
def test_random_full_disks_lose_nothing_synced_and_keep_every_record_in_order(
    seed: int,
) -> None:
    rng = random.Random(seed)
    fs = SimFileSystem()
    wal, _ = WAL.open(D, fs=fs, segment_bytes=256)
    appended: list[bytes] = []
    synced = 0  # records covered by a sync that returned
    for _ in range(60):
        batch = [bytes([65 + rng.randrange(26)]) * rng.randrange(1, 90) for _ in range(3)]
        wal.append([(1, p) for p in batch])
        appended += batch
        if rng.random() < 0.3:
            fs.capacity = fs.used() + rng.randrange(0, 200)
            if rng.random() < 0.3:
                fs.fsync_errno, fs.fsync_fault = errno.ENOSPC, lambda path: True
        elif rng.random() < 0.5:
            fs.capacity, fs.fsync_fault = None, None
        with contextlib.suppress(WALDiskFull):
            synced = wal.sync()
        assert not wal.failed
        if rng.random() < 0.1:
            wal = reopen_after_power_loss(fs, wal, rng.randrange(1000))
            got = [p for _, p in records(wal)]
            assert got == appended[: len(got)] and len(got) >= synced, f"seed {seed}"
            appended, synced = got, len(got)
    fs.capacity, fs.fsync_fault = None, None
    assert wal.sync() == len(appended)
    wal = reopen_after_power_loss(fs, wal, seed)
    assert [p for _, p in records(wal)] == appended


def test_a_snapshot_that_does_not_fit_leaves_no_temporary_file() -> None:
    fs = SimFileSystem()
    snaps = D / "snapshots"
    write_snapshot(snaps, 10, b"", b"ten", fs=fs)
    fs.capacity = fs.used() + 20
    with pytest.raises(OSError) as info:
        write_snapshot(snaps, 20, b"", b"t" * 100, fs=fs)
    assert is_disk_full(info.value)
    assert sorted(fs.listdir(snaps)) == ["snap-00000000000000000010.snap"]
    fs.capacity = fs.used() + 200  # the space the failed attempt took is free again
    write_snapshot(snaps, 20, b"", b"t" * 100, fs=fs)
    latest = load_latest_snapshot(snaps, fs=fs)
    assert latest is not None and latest.slot == 20


def test_a_disk_full_refusal_is_definite_only_for_a_write_never_submitted_before() -> None:
    # The HTTP API's in-process clients: a refusal answering the first submission means
    # the write never entered; after an unanswered submission (it may have entered the
    # log, and the paused node dropped the reply) it means nothing: outcome unknown.
    async def main() -> None:
        loop = asyncio.get_running_loop()
        submitted: list[ClientRequest] = []
        swallow = [True]
        reason = f"{DISK_FULL} 1: writes are refused until space returns"

        def submit(requests: list[ClientRequest]) -> None:
            for r in requests:
                submitted.append(r)
                if swallow[0]:  # entered the log; the reply is lost
                    swallow[0] = False
                    continue
                reply = ClientReply(1, r.client, r.seq, True, b"", 0, reason)
                loop.call_soon(clients.on_reply, reply)

        clients = LocalClients(
            submit, timeout=5.0, attempt_timeout=0.05, refusal=is_disk_full_refusal
        )
        with pytest.raises(OutcomeUnknown):
            await clients.call(lambda c, s: b"put", "put 'k'")
        assert len(submitted) == 2 and submitted[0].seq == submitted[1].seq
        reply = await clients.call(lambda c, s: b"put", "put 'k'")  # refused at once
        assert reply.error == reason and len(submitted) == 3
        swallow[0] = True  # a read refused after a lost attempt: a read had no effect
        reply = await clients.call(lambda c, s: b"get", "get 'k'", read_only=True)
        assert reply.error == reason

    asyncio.run(main())


# -- a real node process whose disk fills --------------------------------------------


class TmpfsCluster:
    """Three node processes, each with its data directory on a small tmpfs of its own."""

    def __init__(self, tmp_path: Path, size: str = "4m") -> None:
        self.tmp_path = tmp_path
        ports = free_ports(9)
        self.client_ports = {i: ports[2 + i] for i in (1, 2, 3)}
        self.http_ports = {i: ports[5 + i] for i in (1, 2, 3)}
        peers = "\n".join(f'{i} = "127.0.0.1:{ports[i - 1]}"' for i in (1, 2, 3))
        self.config = tmp_path / "cluster.toml"
        self.config.write_text(
            f'cluster_id = "{CLUSTER}"\nnode_id = 1\nclient_port = 0\n'
            f'data_dir = "{tmp_path}/unused"\nelection_timeout = [0.15, 0.3]\n'
            f"heartbeat_interval = 0.03\n\n[peers]\n{peers}\n"
        )
        self.mounts: list[Path] = []
        for i in (1, 2, 3):
            disk = tmp_path / f"disk{i}"
            disk.mkdir()
            done = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                self.unmount()
                pytest.skip(f"cannot mount a size-capped tmpfs here: {done.stderr.strip()}")
            self.mounts.append(disk)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def disk(self, node: int) -> Path:
        return self.tmp_path / f"disk{node}"

    def start(self, node: int, *, init: bool) -> None:
        log = (self.tmp_path / f"node{node}.log").open("ab")
        self.procs[node] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pyxos.server",
                "--config",
                str(self.config),
                "--node-id",
                str(node),
                "--data-dir",
                str(self.disk(node) / "data"),
                "--client-port",
                str(self.client_ports[node]),
                "--http-port",
                str(self.http_ports[node]),
                *(["--init"] if init else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def status(self, node: int) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(self.url(node, "/v1/status"), timeout=2) as r:
                status: dict[str, Any] = json.load(r)
                return status
        except OSError:
            return None

    def url(self, node: int, path: str) -> str:
        return f"http://127.0.0.1:{self.http_ports[node]}{path}"

    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.client_ports.values()]

    def log(self, node: int) -> str:
        return (self.tmp_path / f"node{node}.log").read_text(errors="replace")

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.kill()
            proc.wait(timeout=10)
        self.procs.clear()
        self.unmount()

    def unmount(self) -> None:
        for disk in self.mounts:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)
        self.mounts.clear()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def fill(disk: Path) -> Path:
    """Take every free byte of ``disk`` with one file (until ``ENOSPC``)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    chunk = b"\0" * 65536
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                if len(chunk) == 1:
                    return filler
                chunk = chunk[: len(chunk) // 2]
    finally:
        os.close(fd)


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0, reason="needs root: mounts tmpfs")
def test_a_leader_whose_disk_fills_refuses_loses_nothing_and_resumes_by_itself(
    tmp_path: Path,
) -> None:
    cluster = TmpfsCluster(tmp_path)
    try:
        for node in (1, 2, 3):
            cluster.start(node, init=True)
        leader = wait_for(
            lambda: next(
                (n for n in (1, 2, 3) if (s := cluster.status(n)) and s["role"] == "leader"),
                None,
            ),
            30,
            "a leader",
        )
        acknowledged: dict[str, str] = {}
        with Client(cluster.addresses(), cluster=CLUSTER, timeout=30) as client:
            for i in range(20):
                client.put(f"before-{i}", str(i))
                acknowledged[f"before-{i}"] = str(i)
            filler = fill(cluster.disk(leader))
            # The leader's next sync runs out of space: it says so, and the others go on.
            i = 0
            while not (cluster.status(leader) or {}).get("disk_full"):
                client.put(f"during-{i}", str(i))
                acknowledged[f"during-{i}"] = str(i)
                i += 1
                assert i < 2000, "the leader never noticed its full disk"
            status = cluster.status(leader)
            assert status is not None and "disk full" in status["disk_full_reason"]
            code, body = http("PUT", cluster.url(leader, "/v1/kv/refused"), b"x")
            assert code == 507 and "disk full" in body["error"], (code, body)
            code, _ = http("GET", cluster.url(leader, "/v1/kv/before-1?stale=true"))
            assert code == 200, "a stale read is still served"
            with urllib.request.urlopen(cluster.url(leader, "/metrics"), timeout=5) as r:
                assert "pyxos_disk_full 1.0" in r.read().decode()
            for j in range(20):  # the two others elect a leader and serve
                client.put(f"after-{j}", str(j))
                acknowledged[f"after-{j}"] = str(j)
            assert "disk full on node" in cluster.log(leader)
            status = cluster.status(leader)  # still full: every retry ran out of space
            assert status is not None and status["disk_full"], status
            assert "wal: " in status["disk_full_reason"], status
            filler.unlink()  # space returns: no restart
            wait_for(
                lambda: (s := cluster.status(leader)) is not None and not s["disk_full"],
                30,
                "the node to notice the space",
            )
            client.put("resumed", "yes")
            acknowledged["resumed"] = "yes"
            target = max((cluster.status(n) or {}).get("applied", 0) for n in (1, 2, 3))
            wait_for(
                lambda: (cluster.status(leader) or {}).get("applied", 0) >= target,
                30,
                "the node to catch up",
            )
            for key, value in acknowledged.items():
                code, body = http("GET", cluster.url(leader, f"/v1/kv/{key}?stale=true"))
                assert (code, body.get("value")) == (200, value), key
            # Its log is sound on disk: it restarts from it (no corruption, no rebuild).
            cluster.procs.pop(leader).kill()
            cluster.start(leader, init=False)
            status = wait_for(lambda: cluster.status(leader), 30, "the restarted node")
            assert status["state"] == "voting", status
            assert client.get("refused") is None
            for key, value in acknowledged.items():
                assert client.get(key) == value, key
    finally:
        cluster.stop()


@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0, reason="needs root: mounts tmpfs")
def test_an_http_write_that_entered_the_log_before_the_disk_filled_is_never_answered_507(
    tmp_path: Path,
) -> None:
    # A follower whose disk is full takes an HTTP write: it forwards it to the leader,
    # then its own fsync of the Accept runs out of space and it pauses, dropping the
    # leader's reply. The API submits the write again (same client and seq) and gets
    # the disk-full refusal. The write was chosen by the two others, so 507 ("refused,
    # no effect") would be a lie: the answer must be 504, outcome unknown.
    cluster = TmpfsCluster(tmp_path)
    try:
        for node in (1, 2, 3):
            cluster.start(node, init=True)
        leader = wait_for(
            lambda: next(
                (n for n in (1, 2, 3) if (s := cluster.status(n)) and s["role"] == "leader"),
                None,
            ),
            30,
            "a leader",
        )
        follower = next(n for n in (1, 2, 3) if n != leader)
        with Client(cluster.addresses(), cluster=CLUSTER, timeout=30) as client:
            client.put("warm", "up")
            wait_for(
                lambda: (
                    (cluster.status(follower) or {}).get("applied", 0)
                    >= (cluster.status(leader) or {}).get("applied", 0)
                ),
                30,
                "the follower to catch up",
            )
            fill(cluster.disk(follower))
            for i in range(2000):  # until the follower's own WAL write runs out of space
                code, body = http("PUT", cluster.url(follower, f"/v1/kv/w{i}"), b"v")
                if code != 200 or (cluster.status(follower) or {}).get("disk_full"):
                    break
            assert (cluster.status(follower) or {}).get("disk_full"), "the disk never filled"
            if code != 200 and client.get(f"w{i}") == "v":  # it took effect
                assert code == 504 and body.get("outcome") == "unknown", (code, body)
    finally:
        cluster.stop()
