"""Profile the leader of ``pyxos bench embedded`` with py-spy: a text summary.

Runs ``pyxos bench embedded --clients N`` (three embedded-node processes, the load in
the leader's), waits for the warm-up, finds the leader (the busiest of this worktree's
``pyxos.embedded.benchnode`` processes by CPU so far), records it with
``py-spy record --gil --format raw`` and summarises the collapsed stacks as text (self
and inclusive share of samples per function, and the top lines), the way
``bench/profile_kv.py`` does for a KV cluster, so the figures a speed-up acts on can
be committed under ``bench/profiles/``.

    python bench/profile_embedded.py --clients 5000 --out bench/profiles/NAME.txt

needs ``pip install py-spy`` (root, or ptrace permission over the node processes).
"""

from __future__ import annotations

import argparse
import collections
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from profile_kv import summarise, user_sys


def _bench_nodes() -> list[int]:
    """PIDs of ``pyxos.embedded.benchnode`` processes started from this directory."""
    here = os.getcwd()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if b"pyxos.embedded.benchnode" in cmdline and cwd == here:
            pids.append(int(entry))
    return pids


def top_lines(raw: Path, top: int) -> str:
    """The ``top`` source lines by self share of samples."""
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        total += int(n)
        own[stack.split(";")[-1].replace("/work/", "")] += int(n)
    out = [f"top {top} lines by self time (% of samples):"]
    out += [f"{100 * c / total:6.2f}%  {f}" for f, c in own.most_common(top)]
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=5000, help="calls outstanding")
    ap.add_argument("--api", choices=["submit", "await"], default="submit")
    ap.add_argument("--seconds", type=int, default=4, help="py-spy recording time")
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=45)
    ap.add_argument("--out", required=True, help="the summary's file")
    args = ap.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    pyxos = str(Path(sys.executable).with_name("pyxos"))
    bench_cmd = [pyxos, "bench", "embedded", "--clients", str(args.clients), "--duration",
                 str(args.seconds + 6), "--repeat", "1", "--vs", "", "--api", args.api]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="pyxos-prof-embedded-") as tmp:
        raw = Path(tmp) / "leader.raw"
        bench = subprocess.Popen(bench_cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            time.sleep(5.0)  # the nodes start, elect, warm up
            pids = _bench_nodes()
            if not pids:
                raise SystemExit("no benchnode processes found")
            leader = max(pids, key=lambda p: sum(user_sys(p)))
            before = user_sys(leader)
            record = [spy, "record", "--format", "raw", "--rate", str(args.rate), "--gil",
                      "--duration", str(args.seconds), "--pid", str(leader),
                      "--output", str(raw)]  # fmt: skip
            subprocess.run(record, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            after = user_sys(leader)
            report, _ = bench.communicate(timeout=120)
        finally:
            if bench.poll() is None:
                bench.kill()
                bench.wait()
        table = [ln for ln in report.decode().splitlines() if ln.startswith("| ")]
        header = [
            f"# {shlex.join(['pyxos', *bench_cmd[1:]])}",
            f"# py-spy record --gil --rate {args.rate} --duration {args.seconds} on the leader",
            f"# leader CPU over the recording: user {after[0] - before[0]:.2f} s, "
            f"system {after[1] - before[1]:.2f} s",
            *(f"# {ln}" for ln in table),
            "",
        ]
        text = "\n".join(header) + summarise(raw, args.top) + "\n" + top_lines(raw, 30)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
