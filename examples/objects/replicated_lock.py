"""A replicated lock with fencing tokens, 3 processes taking turns on one resource.

The resource (a FencedLog, itself a replicated object) refuses a token lower than the
highest it has seen, so a holder whose grant expired cannot write after the next one.

    python examples/objects/replicated_lock.py 1 &
    python examples/objects/replicated_lock.py 2 &
    python examples/objects/replicated_lock.py 3; wait
"""

import asyncio

from _cluster import barrier, config, parse_args

from pyxos.embedded import EmbeddedNode
from pyxos.objects import Counter, Lock, Replicated, query, replicated


class FencedLog(Replicated):
    """An append-only log that checks fencing tokens."""

    highest: int = 0
    entries: list[str] = []

    @replicated
    def append(self, token: int, entry: str) -> bool:
        if token < self.highest:
            return False  # a stale holder: refused
        self.highest = token
        self.entries.append(entry)
        return True

    @query
    def size(self) -> int:
        return len(self.entries)


async def main() -> None:
    args = parse_args("lock")
    lock, log, arrived = Lock(), FencedLog(), Counter()
    objects = {"lock": lock, "log": log, "arrived": arrived}
    async with EmbeddedNode(config(args, "lock"), objects) as node:
        me, turns = f"node{node.node_id}", 0
        while turns < 3:
            token = await lock.acquire(me, ttl=50)  # 50 commands or ticks of log time
            if token is None:
                await asyncio.sleep(0.01)
                continue
            assert await log.append(token, f"{me} token {token}")
            assert await lock.release(me, token)
            turns += 1
        # A stale token (the first grant's) is refused by the resource.
        stale = await log.append(1, f"{me} with a stale token")
        await barrier(arrived)
        print(f"node {node.node_id}: stale write accepted={stale} log={await log.size()}")
        await asyncio.sleep(args.linger)


asyncio.run(main())
