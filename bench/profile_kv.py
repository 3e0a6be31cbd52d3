"""Profile a loaded pyxos cluster with py-spy: the leader and one follower, text summaries.

Starts a local 3-node cluster (fsync on, the same as ``pyxos bench kv``), drives it with
the benchmark's closed-loop binary (or HTTP) load from this process, and meanwhile runs
``py-spy record --format raw`` on the leader and on one follower. The collapsed stacks are
summarised as text (self time and inclusive time per function, top N) so the figures a
speed-up acts on can be committed under ``bench/profiles/`` (issue 13 item 3).

    python bench/profile_kv.py --clients 256 --connections 4 --seconds 8 --out bench/profiles/NAME

needs ``pip install py-spy`` (root, or ptrace permission over the node processes).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pyxos.bench.loadgen import cpu_seconds
from pyxos.benchmark import run_kv_bench
from pyxos.localcluster import LocalCluster


def user_sys(pid: int) -> tuple[float, float]:
    """utime and stime of ``pid`` in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) / tick, int(rest[12]) / tick


def summarise(raw: Path, top: int) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        count = int(n)
        total += count
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0] + ")" if " (" in f else f
                  for f in stack.split(";")]  # fmt: skip
        frames = [f.replace("/work/", "") for f in frames]
        own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    out = [f"samples: {total}", "", f"top {top} by self time (% of samples):"]
    out += [f"{100 * c / total:6.2f}%  {f}" for f, c in own.most_common(top)]
    out += ["", f"top {top} by inclusive time (% of samples):"]
    out += [f"{100 * c / total:6.2f}%  {f}" for f, c in incl.most_common(top)]
    return "\n".join(out) + "\n"


def pstats_summary(path: Path, top: int) -> str:
    """The ``top`` functions by own and by cumulative CPU time of a cProfile dump."""
    buf = io.StringIO()
    st = pstats.Stats(str(path), stream=buf)
    st.strip_dirs()
    total = st.total_tt  # type: ignore[attr-defined]
    buf.write(f"total CPU seconds profiled: {total:.3f}\n")
    st.sort_stats("tottime").print_stats(top)
    st.sort_stats("cumulative").print_stats(top)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=256)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--read-ratio", type=float, default=0.0)
    ap.add_argument(
        "--api",
        choices=["binary", "http"],
        default="binary",
        help="http: the load is wrk against the leader's HTTP API, one connection per client",
    )
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=45)
    ap.add_argument("--gil", action="store_true", help="only samples holding the GIL")
    ap.add_argument(
        "--cprofile",
        action="store_true",
        help="run every node under cProfile timed by CPU (bench/cpuprof_node.py)",
    )
    ap.add_argument("--perf", action="store_true", help="perf record (on-CPU, kernel too)")
    ap.add_argument("--plain", action="store_true", help="no profiler: only the CPU split")
    ap.add_argument("--strace", action="store_true", help="count the leader's system calls instead")
    ap.add_argument("--out", required=True, help="output prefix (writes PREFIX-leader.txt, ...)")
    args = ap.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pyxos-prof-") as tmp:
        cluster = LocalCluster.create(Path(tmp), 3, cluster_id="pyxos-prof")
        if args.cprofile:
            hook = str(Path(__file__).with_name("cpuprof_node.py"))
            for i in cluster.nodes:
                cluster.launch_prefix[i] = [sys.executable, hook, f"{tmp}/node{i}.pstats"]
        cluster.start()
        try:
            leader = cluster.wait_for_leader(15.0)
            follower = next(i for i in cluster.nodes if i != leader)
            pids = {i: cluster.pid(i) for i in cluster.nodes}
            warm = 1.0
            spies = []
            raws = {}
            for role, node in (("leader", leader), ("follower", follower)):
                raws[role] = Path(tmp) / f"{role}.raw"
                cmd = [spy, "record", "--format", "raw", "--rate", str(args.rate), "--nonblocking",
                       "--duration", str(int(args.seconds)), "--pid", str(pids[node]),
                       "--output", str(raws[role])] + (["--gil"] if args.gil else [])  # fmt: skip
                if args.strace:
                    cmd = ["timeout", "-s", "INT", str(int(args.seconds)), "strace", "-c", "-f",
                           "-o", str(raws[role]), "-p", str(pids[node])]  # fmt: skip
                if args.perf:
                    cmd = ["perf", "record", "-F", "499", "-g", "-o", str(raws[role]), "-p",
                           str(pids[node]), "--", "sleep", str(int(args.seconds))]  # fmt: skip
                if not args.cprofile and not args.plain:
                    spies.append((role, cmd))
            addresses = {n.node_id: n.client_address for n in cluster.nodes.values()}

            async def drive() -> object:
                async def later() -> list[subprocess.Popen[bytes]]:
                    await asyncio.sleep(warm)
                    return [
                        subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        for _, c in spies
                    ]

                if args.api == "http":
                    from pyxos.bench.wrk import run_wrk, wrk_script

                    script = wrk_script(
                        "pyxos", keys=1000, read_ratio=args.read_ratio, value_size=10
                    )
                    procs, res = await asyncio.gather(
                        later(),
                        run_wrk(
                            cluster.nodes[leader].http_url,
                            script,
                            connections=args.clients,
                            seconds=args.seconds + 1.0,
                            warmup=0.0,
                        ),
                    )
                    for p in procs:
                        p.wait(timeout=30)
                    return res
                procs, res = await asyncio.gather(
                    later(),
                    run_kv_bench(
                        addresses,
                        cluster.cluster_id,
                        clients=args.clients,
                        connections=args.connections,
                        seconds=args.seconds + 1.0,
                        write_ratio=1.0 - args.read_ratio,
                        value_bytes=10,
                        keys=1000,
                        record=None,
                        warmup=warm,
                    ),
                )
                for p in procs:
                    p.wait(timeout=30)
                return res

            c0 = cpu_seconds([p for p in pids.values() if p])
            us0 = {i: user_sys(p) for i, p in pids.items() if p}
            t0 = time.perf_counter()
            try:
                import uvloop

                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
                    res = r.run(drive())
            except ImportError:
                res = asyncio.run(drive())
            wall = time.perf_counter() - t0
            c1 = cpu_seconds([p for p in pids.values() if p])
            us1 = {i: user_sys(p) for i, p in pids.items() if p}
            split = ", ".join(
                f"node {i}{' (leader)' if i == leader else ''} user {us1[i][0] - us0[i][0]:.2f} s"
                f" sys {us1[i][1] - us0[i][1]:.2f} s"
                for i in sorted(us1)
            )
            conns = args.clients if args.api == "http" else args.connections
            head = (
                f"# {'cProfile by CPU' if args.cprofile else f'py-spy {args.rate}/s'}, "
                f"{args.clients} clients over {conns} "
                f"connections, api {args.api}, read ratio {args.read_ratio}, "
                f"{args.seconds:.0f} s sampled"
                f"{' (GIL holders only)' if args.gil else ''}\n"
                f"# load: {res}\n# cluster CPU {c1 - c0:.2f} s over {wall:.1f} s wall: {split}\n"
            )
            roles = {"leader": leader, "follower": follower}
            if args.plain:
                print(head, end="")
            for role, _ in spies:
                if args.perf:
                    body = subprocess.run(
                        ["perf", "report", "-i", str(raws[role]), "--no-children", "--stdio",
                         "--sort", "dso,sym", "-g", "none", "--percent-limit", "0.7"],
                        capture_output=True, text=True, check=False,
                    ).stdout  # fmt: skip
                elif args.strace:
                    body = raws[role].read_text()
                else:
                    body = summarise(raws[role], args.top)
                text = head + f"# {role}\n" + body
                dest = out.with_name(f"{out.name}-{role}.txt")
                dest.write_text(text)
                print(f"wrote {dest}")
        finally:
            cluster.stop()
        if args.cprofile:
            for role, node in roles.items():
                text = head + f"# {role}: cProfile, main thread CPU time\n"
                text += pstats_summary(Path(f"{tmp}/node{node}.pstats"), args.top)
                dest = out.with_name(f"{out.name}-{role}-cpu.txt")
                dest.write_text(text)
                print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
