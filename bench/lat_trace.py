"""Count what one write costs: system calls, CPU and context switches per operation.

Starts a local 3-node cluster (fsync on, as ``pyxos bench kv``), drives it with the
benchmark's closed-loop binary load from this process and meanwhile, for the leader and
one follower, reads their CPU time and context switches (``/proc``) and optionally runs
``strace`` on them (``--mode c``: counts; ``--mode tt``: a timestamped trace of every
call). On a machine shared with other load, counts per operation say more than times.

    python bench/lat_trace.py --clients 1 --mode c --out /tmp/lat
    PYTHONPATH=/tmp/base/src python bench/lat_trace.py ...   # another tree's nodes

needs ``strace`` for ``--mode c|tt`` (root, or ptrace permission over the nodes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import tempfile
import urllib.request
from pathlib import Path

from pyxos.benchmark import run_kv_bench
from pyxos.localcluster import LocalCluster

CALLS = (
    "write,writev,sendto,sendmsg,recvfrom,read,readv,fdatasync,fsync,futex,epoll_wait,epoll_pwait"
)


def usage(pid: int) -> tuple[float, int, int]:
    """CPU seconds and voluntary / involuntary context switches of every thread of ``pid``."""
    rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
    vol = inv = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        for line in Path(f"/proc/{pid}/task/{task}/status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches"):
                vol += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches"):
                inv += int(line.split()[1])
    return cpu, vol, inv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--connections", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--mode", choices=["c", "tt", "none"], default="c")
    ap.add_argument("--out", required=True, help="directory for the strace outputs")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pyxos-lat-") as tmp:
        cluster = LocalCluster.create(Path(tmp), 3, cluster_id="pyxos-bench")
        try:
            cluster.start()
            leader = cluster.wait_for_leader(15)
            follower = next(i for i in cluster.nodes if i != leader)
            pids = {"leader": cluster.pid(leader), "follower": cluster.pid(follower)}
            addresses = {n.node_id: n.client_address for n in cluster.nodes.values()}
            asyncio.run(measure(a, out, cluster.cluster_id, addresses, pids))
            url = cluster.nodes[leader].http_url + "/v1/status"
            with urllib.request.urlopen(url, timeout=5) as r:
                driver = json.load(r)["driver"]
            print("leader driver counters:", {k: driver[k] for k in sorted(driver)})
        finally:
            cluster.stop()


async def measure(
    a: argparse.Namespace,
    out: Path,
    cluster_id: str,
    addresses: dict[int, str],
    pids: dict[str, int | None],
) -> None:
    async def load(seconds: float, warmup: float) -> int:
        result = await run_kv_bench(
            addresses, cluster_id, clients=a.clients, connections=a.connections, seconds=seconds,
            write_ratio=1.0, value_bytes=10, keys=1000, record=None, warmup=warmup, nodes=3,
        )  # fmt: skip
        print(f"{result.ops} ops, {result.ops_per_s:.0f}/s, p50 {result.latency.p50_ms:.3f} ms")
        return result.ops

    await load(0.5, 0.2)
    tracers = []
    if a.mode != "none":
        for role, pid in pids.items():
            opt = ["-c"] if a.mode == "c" else ["-tt", "-T"]
            cmd = ["strace", *opt, "-f", "-p", str(pid), "-o", str(out / f"{role}.strace"), "-e"]
            tracers.append(subprocess.Popen([*cmd, f"trace={CALLS}"], stderr=subprocess.DEVNULL))
        await asyncio.sleep(1.0)
    before = {role: usage(pid) for role, pid in pids.items() if pid is not None}
    ops = await load(a.seconds, 0.0)
    after = {role: usage(pid) for role, pid in pids.items() if pid is not None}
    for tracer in tracers:
        tracer.send_signal(signal.SIGINT)
        tracer.wait()
    for role, (c0, v0, i0) in before.items():
        c1, v1, i1 = after[role]
        print(
            f"{role}: CPU {1e6 * (c1 - c0) / ops:.0f} us/op, context switches "
            f"{(v1 - v0) / ops:.2f} voluntary + {(i1 - i0) / ops:.2f} involuntary per op"
        )
    (out / "ops.txt").write_text(f"{ops}\n")


if __name__ == "__main__":
    main()
