"""Interleaved A/B runs of ``pyxos bench kv``: two source trees, side by side, same window.

Each *pair* runs ``pyxos bench kv ARGS --json`` once with ``PYTHONPATH=A/src`` and once
with ``PYTHONPATH=B/src`` (the order alternates from pair to pair), so the node
processes, the load generator and the client all come from that tree. On a shared,
noisy machine the median over pairs of each tree's figures is compared, chiefly CPU
seconds per 1,000 operations for the whole cluster (less sensitive to other load than
throughput) and committed ops/s.

    python bench/ab_compare.py --a /tmp/base --b . --pairs 3 -- --clients 64,256 --duration 3

A tree is a directory holding ``src/pyxos`` (for instance ``git archive main src | tar
-x -C /tmp/base``).

``--read-ratios 0,0.9`` runs every pair once per read ratio (the bench's own
``--read-ratio`` must then not be given) and adds, per tree, the median over pairs of
each ratio's ops/s divided by the first ratio's (e.g. 90% reads against write-only in
the same pair, the same window).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

FIGURES = (
    "cpu_s_per_1k_ops",
    "leader_cpu_s_per_1k_ops",
    "loadgen_cpu_s_per_1k_ops",
    "ops_per_s",
    "p50_ms",
    "p99_ms",
)
"""The figures compared (a tree whose bench lacks one is compared on the others)."""


def run_once(tree: Path, bench_args: list[str]) -> list[dict[str, object]]:
    """One ``pyxos bench kv`` with ``tree``'s sources; its median results."""
    with tempfile.TemporaryDirectory(prefix="pyxos-ab-") as tmp:
        out = Path(tmp) / "r.json"
        env = dict(os.environ, PYTHONPATH=str(tree / "src"))
        cmd = [sys.executable, "-m", "pyxos.cli", "bench", "kv", *bench_args, "--json", str(out)]
        for attempt in range(3):
            # A loaded machine sometimes elects no leader within the bench's 15 s: try
            # again rather than lose every pair measured so far.
            done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=False)
            if done.returncode == 0:
                break
            print(f"  {tree}: bench kv failed (exit {done.returncode}), attempt {attempt + 1}")
        else:
            raise SystemExit(f"{tree}: bench kv failed three times")
        results: list[dict[str, object]] = json.loads(out.read_text())["results"]
        return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", required=True, type=Path, help="the baseline tree")
    ap.add_argument("--b", required=True, type=Path, help="the changed tree")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument(
        "--read-ratios",
        default="",
        help="comma list: each pair runs every ratio; adds ops/s ratios to the first",
    )
    ap.add_argument("bench_args", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    bench_args = [a for a in args.bench_args if a != "--"]
    ratios = [r for r in args.read_ratios.split(",") if r]
    if ratios and "--read-ratio" in bench_args:
        raise SystemExit("--read-ratios replaces the bench's --read-ratio: give one of them")
    figures: dict[tuple[str, str, int, str], list[float]] = {}
    per_pair: dict[tuple[str, int, str], float] = {}  # (label, clients, ratio) -> ops/s
    versus: dict[tuple[str, int, str], list[float]] = {}  # ratio's ops/s / the first's
    for pair in range(args.pairs):
        order = [("A", args.a), ("B", args.b)]
        if pair % 2:
            order.reverse()
        for label, tree in order:
            for ratio in ratios or [""]:
                extra = ["--read-ratio", ratio] if ratio else []
                for r in run_once(tree.resolve(), bench_args + extra):
                    if r["system"] != "pyxos":
                        continue
                    c = int(r["clients"])  # type: ignore[call-overload]
                    for f in FIGURES:
                        v = r.get(f)
                        if v is not None:
                            key = (label, f, c, ratio)
                            figures.setdefault(key, []).append(float(v))  # type: ignore[arg-type]
                    per_pair[label, c, ratio] = float(r["ops_per_s"])  # type: ignore[arg-type]
            for (lab, c, ratio), ops in per_pair.items():
                base = per_pair.get((lab, c, ratios[0])) if ratios else None
                if ratios and lab == label and ratio != ratios[0] and base:
                    versus.setdefault((label, c, ratio), []).append(ops / base)
            per_pair.clear()
            print(f"pair {pair + 1}: {label} done", file=sys.stderr, flush=True)
    clients = sorted({c for (_, _, c, _) in figures})
    print(f"pyxos bench kv {' '.join(bench_args)}: medians of {args.pairs} interleaved pairs")
    print(f"A = {args.a}, B = {args.b}")
    print("| clients | reads | figure | A | B | B/A | A runs | B runs |")
    print("|---:|---:|---|---:|---:|---:|---|---|")
    for c in clients:
        for ratio in ratios or [""]:
            rows = [
                (f, figures.get(("A", f, c, ratio)), figures.get(("B", f, c, ratio)))
                for f in FIGURES
            ]
            if ratio != (ratios or [""])[0]:
                vs = f"ops/s vs reads={ratios[0]}"
                rows.append((vs, versus.get(("A", c, ratio)), versus.get(("B", c, ratio))))
            for f, a, b in rows:
                if not a or not b:
                    continue
                ma, mb = statistics.median(a), statistics.median(b)
                runs_a = ", ".join(f"{v:.4g}" for v in a)
                runs_b = ", ".join(f"{v:.4g}" for v in b)
                print(
                    f"| {c} | {ratio or '-'} | {f} | {ma:.4g} | {mb:.4g} | {mb / ma:.3f} "
                    f"| {runs_a} | {runs_b} |"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
