"""cProfile of a node's start-up storage path on a stopped node's data directory.

Runs ``open_storage`` (check the directory, replay the WAL, read the newest snapshot)
and ``build_node`` (restore the snapshot into the application, rebuild the replica), the
blocking part of ``pyxos serve``'s start, under cProfile, and prints both times and the
top functions by own time. For the data a ``pyxos bench recovery --base-dir DIR`` run
leaves behind:

    python bench/profile_restart.py DIR/node-2.toml
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import random
import sys
import time

from pyxos.server.config import Config
from pyxos.server.disk import build_node, open_storage


def main() -> int:
    """Profile one start-up of the node whose config file is ``sys.argv[1]``."""
    cfg = Config.load(sys.argv[1])
    prof = cProfile.Profile()
    t0, c0 = time.perf_counter(), time.process_time()
    prof.enable()
    _durable, state, snap, rec = open_storage(
        cfg, initialize=False, snapshot_dir=cfg.data_dir / "snapshots"
    )
    t1 = time.perf_counter()
    build_node(cfg, state, snap, rng=random.Random(1), now=0.0, recoveries=rec)
    t2 = time.perf_counter()
    prof.disable()
    cpu = time.process_time() - c0
    load = os.getloadavg()[0]
    print(f"open_storage {t1 - t0:.2f} s, build_node {t2 - t1:.2f} s", end="")
    print(f"; CPU {cpu:.2f} s, load average {load:.1f}")
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.strip_dirs()
    stats.sort_stats("tottime").print_stats(15)
    print(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
