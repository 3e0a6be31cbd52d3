"""Storage benchmark: WAL group commit versus the disk's raw fsync rate.

Thin wrapper: the benchmark lives in ``pyxos.storage.bench`` so the ``pyxos`` CLI can
import it. Run ``python bench/bench_storage.py --dir /path/on/the/disk``.
"""

from pyxos.storage.bench import format_table, main, run_storage_bench

__all__ = ["format_table", "run_storage_bench"]

if __name__ == "__main__":
    main()
