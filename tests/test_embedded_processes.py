"""Embedded nodes as real processes (one per node): the leader's process SIGKILLed
under load, and every acknowledged call applied exactly once."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pyxos.localcluster import free_ports

HELPER = Path(__file__).with_name("embedded_queue_node.py")


class Proc:
    def __init__(self, node: int, peers: dict[str, str], data: Path) -> None:
        self.p = subprocess.Popen(
            [sys.executable, str(HELPER), str(node), json.dumps(peers), str(data)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def send(self, req: dict[str, Any]) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(json.dumps(req) + "\n")
        self.p.stdin.flush()

    def read(self, timeout: float) -> dict[str, Any]:
        assert self.p.stdout is not None
        ready, _, _ = select.select([self.p.stdout], [], [], timeout)
        assert ready, f"pid {self.p.pid} did not answer within {timeout} s"
        line = self.p.stdout.readline()
        assert line, f"pid {self.p.pid} exited"
        reply: dict[str, Any] = json.loads(line)
        return reply

    def ask(self, req: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        self.send(req)
        return self.read(timeout)

    def kill(self) -> None:
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
        self.p.wait(10)


def wait_for(cond: Any, what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.02)


def test_sigkill_of_the_leader_process_every_acknowledged_put_exactly_once(
    tmp_path: Path,
) -> None:
    ports = free_ports(3)
    peers = {str(i + 1): f"127.0.0.1:{p}" for i, p in enumerate(ports)}
    procs = [Proc(int(n), peers, tmp_path / f"n{n}") for n in peers]
    try:

        def leader() -> int | None:
            st = [p.ask({"cmd": "status"}) for p in procs]
            leaders = [i for i, s in enumerate(st) if s["leader"]]
            return leaders[0] + 1 if len(leaders) == 1 and all(s["known"] for s in st) else None

        old = wait_for(leader, "a leader") - 1
        writers = [i for i in range(3) if i != old]
        for i in writers:  # load on both followers, forwarded to the leader
            procs[i].send({"cmd": "fill", "seconds": 5.0, "workers": 8})
        # Kill the leader once it has applied some of the load (mid-load).
        wait_for(
            lambda: procs[old].ask({"cmd": "status"})["local_size"] >= 50,
            "50 puts applied on the leader",
        )
        procs[old].kill()
        results = [procs[i].read(60.0) for i in writers]
        acked = [item for r in results for item in r["acked"]]
        unknown = {item for r in results for item in r["unknown"]}
        items = procs[writers[0]].ask({"cmd": "contents"}, 60.0)["items"]
        assert len(items) == len(set(items)), "an item was applied twice"
        assert set(acked) <= set(items), "an acknowledged put was lost"
        assert set(items) <= set(acked) | unknown, "an item nobody sent"
        assert len(acked) > 50
    finally:
        for p in procs:
            p.kill()
