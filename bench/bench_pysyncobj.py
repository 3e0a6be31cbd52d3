"""PySyncObj beside pyxos: a thin wrapper of ``pyxos.bench.pysyncobj`` (kept for old commands).

Prefer ``pyxos bench kv --vs pysyncobj``. Run: ``python bench/bench_pysyncobj.py
--clients 1,16,64 --seconds 5 --with-pyxos``.
"""

from pyxos.bench.pysyncobj import main

if __name__ == "__main__":
    main()
