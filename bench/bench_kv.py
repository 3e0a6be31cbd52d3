"""KV benchmark of pyxos on a local 3-node cluster, several client counts side by side.

Theory of operation
-------------------
For each repetition, for each client count and each connection setting, a fresh local
cluster of real node processes (fsync on every node) is created, loaded by closed-loop
clients for ``--seconds`` after a 0.5 s warm-up, and stopped (``pyxos.benchmark``).
Repetitions are interleaved (1, 16, 64, 1, 16, 64, ...) so that a noisy stretch of a
shared machine spreads over every case rather than sinking one; the table shows
per-field medians.

``--connections`` lists connection settings, comma-separated: a number N multiplexes
the clients over N connections per node (a ``ClientPool``) when N < clients;
``clients`` gives every client its own ``AsyncClient`` and connection (the old path).
A setting that comes to the same thing as another for a client count (N >= clients)
is run once.

Run: ``python bench/bench_kv.py --clients 1,64,256 --connections 4,clients --seconds 4``.
``pyxos bench kv`` is the entry point now (histogram percentiles, CPU, fsyncs,
comparisons); this script stays for its several connection settings in one table.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from pyxos.benchmark import BenchResult, bench_local_cluster, format_results, median_result


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the options, run every case, print the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", default="1,16,64", help="comma-separated client counts")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--write-ratio", type=float, default=0.5, help="fraction of puts")
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument(
        "--connections",
        default="4",
        help="comma-separated connection settings: N (a ClientPool with N connections "
        "per node) or 'clients' (one AsyncClient and connection per client)",
    )
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=1, help="runs per case (median shown)")
    parser.add_argument(
        "--record",
        default=None,
        help="write each run's history to RECORD-<clients>-<connections>-<run>.jsonl",
    )
    parser.add_argument("--json", action="store_true", help="also print every run as JSON")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.clients.split(",")]
    settings = [0 if s.strip() == "clients" else int(s) for s in args.connections.split(",")]
    if any(s < 0 for s in settings):
        parser.error("--connections: settings must be positive numbers or 'clients'")
    # (clients, connections actually used), in order, without duplicates.
    cases = list(dict.fromkeys((c, min(s or c, c)) for c in counts for s in settings))
    runs: dict[tuple[int, int], list[BenchResult]] = {case: [] for case in cases}
    for rep in range(args.repeat):
        for c, conns in cases:
            result = bench_local_cluster(
                args.nodes,
                c,
                connections=conns,
                seconds=args.seconds,
                write_ratio=args.write_ratio,
                value_bytes=args.value_bytes,
                keys=args.keys,
                record=f"{args.record}-{c}-{conns}-{rep}.jsonl" if args.record else None,
                seed=rep,
            )
            runs[(c, conns)].append(result)
            if args.json:
                print(json.dumps(result.to_json()), flush=True)
    print(format_results([median_result(runs[case]) for case in cases]))


if __name__ == "__main__":
    main()
