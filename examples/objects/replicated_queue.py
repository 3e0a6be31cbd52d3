"""A replicated FIFO queue, 3 processes: node 1 produces 60 jobs, all three consume.

Every job is taken exactly once, whichever node takes it.

    python examples/objects/replicated_queue.py 1 &
    python examples/objects/replicated_queue.py 2 &
    python examples/objects/replicated_queue.py 3; wait
"""

import asyncio

from _cluster import barrier, config, parse_args

from pyxos.embedded import EmbeddedNode
from pyxos.objects import Counter, Queue

JOBS = 60


async def main() -> None:
    args = parse_args("queue")
    jobs, taken, arrived = Queue(), Counter(), Counter()
    objects = {"jobs": jobs, "taken": taken, "arrived": arrived}
    async with EmbeddedNode(config(args, "queue"), objects) as node:
        if node.node_id == 1:
            for i in range(JOBS):
                await jobs.put({"job": i})
        mine = []
        while await taken.get() < JOBS:
            job = await jobs.get()
            if job is None:
                await asyncio.sleep(0.01)
                continue
            mine.append(job["job"])
            await taken.incr()
        await barrier(arrived)
        print(f"node {node.node_id}: took {len(mine)} jobs, total {await taken.get()}")
        await asyncio.sleep(args.linger)


asyncio.run(main())
