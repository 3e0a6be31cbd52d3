"""Run one pyxos node process under cProfile, timed by its main thread's CPU time.

A launch prefix for ``LocalCluster`` (``bench/profile_kv.py --cprofile``): the command
line that follows is ``PYTHON -m pyxos.server ARGS``; the node runs with ARGS and, when
it stops (SIGTERM), its profile is written to OUT (``pstats`` format). Timing by
``time.thread_time`` counts CPU only, so a thread descheduled inside a system call (a
loopback write that wakes its reader) is not charged for the wait, unlike a wall-clock
sampler.
"""

from __future__ import annotations

import cProfile
import sys
import time


def main() -> int:
    out = sys.argv[1]
    rest = sys.argv[2:]
    args = rest[rest.index("pyxos.server") + 1 :]
    from pyxos.server.__main__ import main as node_main

    prof = cProfile.Profile(time.thread_time)
    try:
        return prof.runcall(node_main, args)
    finally:
        prof.dump_stats(out)


if __name__ == "__main__":
    raise SystemExit(main())
