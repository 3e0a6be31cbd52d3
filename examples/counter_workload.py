"""How `pyxos sim app` drives examples/counter.py: one random operation at a time, named
as the checker's counter model names it (pyxos.check.models.Counter), so the simulator
can judge the history. Run it (from the repository's root) under every fault:

    pyxos sim app --app examples.counter:Counter --model counter \
        --workload examples.counter_workload:workload --seeds 300 --faults all,disk
"""

import random

from pyxos.sim.workload import SimOp, WorkloadClient


def workload(rng: random.Random, client: WorkloadClient) -> SimOp:
    if rng.random() < 0.3:  # a query: answered without the log
        return SimOp("get", None, b"get", int, query=True)
    n = rng.randint(-3, 5)  # every result is the value in decimal: int() reads it
    if n == 1:
        return SimOp("incr", None, b"incr", int)
    return SimOp("add", n, b"add %d" % n, int)
