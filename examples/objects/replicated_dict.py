"""A replicated dict, 3 processes: each writes its own keys and races for one with cas.

python examples/objects/replicated_dict.py 1 & python examples/objects/replicated_dict.py 2 &
python examples/objects/replicated_dict.py 3; wait
"""

import asyncio

from _cluster import barrier, config, parse_args

from pyxos.embedded import EmbeddedNode
from pyxos.objects import Counter, ReplicatedDict


async def main() -> None:
    args = parse_args("dict")
    d, arrived = ReplicatedDict(), Counter()
    async with EmbeddedNode(config(args, "dict"), {"d": d, "arrived": arrived}) as node:
        me = node.node_id
        await d.update({f"node{me}/k{i}": i * me for i in range(5)})
        won = await d.cas("owner", None, f"node{me}", absent=True)  # exactly one wins
        await barrier(arrived)
        print(
            f"node {me}: won={won} owner={await d.get('owner')} keys={await d.size()}",
            flush=True,
        )
        await asyncio.sleep(args.linger)


asyncio.run(main())
