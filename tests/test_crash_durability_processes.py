"""Durability attacked on real node processes (issue 13's server changes: a leader all
but idle fsyncs on its loop thread, a thread's fsync report steps the leader's own
Accepted at once, a pass's sends leave when its Ready is carried out).

Under load (one client: the leader's inline fsync; many clients: the fsync thread),
every node is SIGKILLed at a seeded moment, leader first, then two of the three are
restarted (any two hold every chosen value): every write a client saw acknowledged
must be readable with its value.
A node's WAL records are buffered in the process until its sync, so an answer (or an
Accepted) sent before the sync it depends on is lost with the process and shows up
here as a missing key. The nodes' disk is made slow (each append waits 10 ms before
its ``write``), so the window between a sync starting and the records reaching the
kernel is wide enough for a kill to land in it.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import test_server_processes
from pyxos.client import AsyncClient, Client, ClientError
from test_server_harness import CLUSTER
from test_server_processes import Cluster

# A node process whose appends reach the kernel 10 ms late (a slow disk, for the kill to
# land between a sync's start and its records' write), then ``python -m pyxos.server``.
SLOW_DISK = (
    "import runpy, sys, time\n"
    "from pyxos.storage import fs\n"
    "write = fs._OsAppendFile.write\n"
    "def slow(self, data):\n"
    "    time.sleep(0.01)\n"
    "    write(self, data)\n"
    "fs._OsAppendFile.write = slow\n"
    "sys.argv[0] = 'pyxos.server'\n"
    "runpy.run_module('pyxos.server', run_name='__main__', alter_sys=True)\n"
)


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    real_popen = test_server_processes.subprocess.Popen

    def popen(args: list[str], **kw: object) -> object:
        if args[1:3] == ["-m", "pyxos.server"]:
            args = [args[0], "-c", SLOW_DISK, *args[3:]]
        return real_popen(args, **kw)  # type: ignore[call-overload]

    monkeypatch.setattr(test_server_processes.subprocess, "Popen", popen)
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop_all()


@pytest.mark.parametrize(("clients", "seed"), [(1, 1), (16, 3)])
def test_sigkill_every_node_under_load_loses_no_acknowledged_write(
    cluster: Cluster, clients: int, seed: int
) -> None:
    rng = random.Random(seed)
    for node in range(1, 4):
        cluster.start(node)
    with Client(cluster.addresses(), cluster=CLUSTER, timeout=15.0) as c:
        c.put("warmup", "1")
        leader = c.async_client.leader
    assert leader in (1, 2, 3)
    kill_after = rng.randrange(5, 40)  # acknowledged writes before the kill
    acknowledged: dict[str, str] = {}
    killed = asyncio.Event()

    def kill_all() -> None:
        """At the ``kill_after``-th acknowledgement, in the same step: leader first."""
        cluster.procs[leader].send_signal(signal.SIGKILL)
        for proc in cluster.procs.values():
            proc.send_signal(signal.SIGKILL)
        killed.set()

    async def writer(i: int, stop: asyncio.Event) -> None:
        client = AsyncClient(cluster.addresses(), cluster=CLUSTER, timeout=2.0, attempt_timeout=0.5)
        try:
            n = 0
            while not stop.is_set():
                key, value = f"c{i}-{n}", f"v{n}"
                n += 1
                try:
                    await client.put(key, value)
                except (ClientError, OSError):
                    continue  # the outcome is unknown: neither required nor forbidden
                acknowledged[key] = value
                if len(acknowledged) == kill_after:
                    kill_all()
        finally:
            await client.close()

    async def main() -> None:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(writer(i, stop)) for i in range(clients)]
        deadline = time.monotonic() + 60
        try:
            await asyncio.wait_for(killed.wait(), max(1.0, deadline - time.monotonic()))
        except TimeoutError:
            raise AssertionError(f"no progress\n{cluster.logs()}") from None
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    for node in list(cluster.procs):
        cluster.procs.pop(node).wait(timeout=10)
    seen = dict(acknowledged)
    assert len(seen) >= kill_after
    # Any two nodes of three hold every chosen value: restart the old leader and one
    # follower only (the third's copy must not be needed).
    survivors = (leader, rng.choice([n for n in (1, 2, 3) if n != leader]))
    for node in survivors:
        cluster.start(node)
    with Client(cluster.addresses(), cluster=CLUSTER, timeout=15.0) as c:
        missing = {k: v for k, v in seen.items() if c.get(k) != v}
    assert not missing, f"{len(missing)} acknowledged writes lost: {sorted(missing)[:10]}"
