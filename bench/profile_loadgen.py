"""cProfile (timed by process CPU) of the load generator: the ``ClientPool`` sessions of
``pyxos bench kv``'s binary load, against a local 3-node cluster (fsync on).

    python bench/profile_loadgen.py --clients 256 --connections 4 --seconds 5 --out PREFIX

writes ``PREFIX-loadgen.txt``: the CPU split, calls per op, and the top functions by own
and by cumulative CPU time of this process (the nodes are separate processes, unprofiled).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import tempfile
import time
from pathlib import Path

from pyxos.benchmark import run_kv_bench
from pyxos.localcluster import LocalCluster


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=256)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--read-ratio", type=float, default=0.0)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--out", required=True, help="output prefix (writes PREFIX-loadgen.txt)")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pyxos-lgprof-") as tmp:
        cluster = LocalCluster.create(Path(tmp), 3, cluster_id="pyxos-lgprof")
        cluster.start()
        try:
            cluster.wait_for_leader(15.0)
            addresses = {n.node_id: n.client_address for n in cluster.nodes.values()}
            prof = cProfile.Profile(time.process_time)
            bench = run_kv_bench(
                addresses,
                cluster.cluster_id,
                clients=args.clients,
                connections=args.connections,
                seconds=args.seconds,
                write_ratio=1.0 - args.read_ratio,
                value_bytes=10,
                keys=1000,
                record=None,
                warmup=0.0,  # every op counted: calls per op exact but for the last pass
            )
            try:
                import uvloop

                runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
            except ImportError:
                runner = asyncio.Runner()
            cpu0 = time.process_time()
            with runner:
                prof.enable()
                res = runner.run(bench)
                prof.disable()
            cpu = time.process_time() - cpu0
        finally:
            cluster.stop()
    s = io.StringIO()
    stats = pstats.Stats(prof, stream=s)
    calls = sum(v[1] for v in stats.stats.values())  # type: ignore[attr-defined]
    ops = res.ops
    head = (
        f"# load generator, cProfile by process CPU: {args.clients} clients over "
        f"{args.connections} connections, {args.seconds} s (no warmup), "
        f"read ratio {args.read_ratio}\n# ops in window {res.ops} ({res.ops_per_s:.0f}/s); "
        f"process CPU {cpu:.2f} s (profiled: inflated); calls {calls}, "
        f"{calls / ops:.2f} per op; {1e6 * cpu / ops:.1f} us of profiled CPU per op\n"
    )
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(args.top)
    text = head + s.getvalue().replace(str(Path.cwd()) + "/", "")
    Path(f"{out}-loadgen.txt").write_text(text)
    print(head)


if __name__ == "__main__":
    main()
