"""A replicated counter, 3 processes: each adds 100, all see 300.

python examples/objects/replicated_counter.py 1 & python examples/objects/replicated_counter.py 2 &
python examples/objects/replicated_counter.py 3; wait
"""

import asyncio

from _cluster import barrier, config, parse_args

from pyxos.embedded import EmbeddedNode
from pyxos.objects import Counter


async def main() -> None:
    args = parse_args("counter")
    counter, arrived = Counter(), Counter()
    objects = {"counter": counter, "arrived": arrived}
    async with EmbeddedNode(config(args, "counter"), objects) as node:
        # 100 increments, 10 at a time; each returns once chosen, fsynced and applied.
        for _ in range(10):
            await asyncio.gather(*(counter.incr() for _ in range(10)))
        await barrier(arrived)
        print(f"node {node.node_id}: counter = {await counter.get()}", flush=True)
        await asyncio.sleep(args.linger)  # the others may still need this node's vote


asyncio.run(main())
