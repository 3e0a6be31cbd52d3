"""The future API of embedded nodes under attack (``EmbeddedNode.submit``,
``obj.method.submit``): hundreds of calls outstanding through the followers, a tenth
of them cancelled by their callers, the leader stopped while they are in flight, then
a follower stopped with its own calls in flight. Every acknowledged increment is
applied once (each saw a different counter value, and the counter counts no more
than were submitted), every future ends, and a node keeps no record of a finished
call. Waits are on conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from pyxos.embedded import NodeStopped, OutcomeUnknown
from pyxos.objects import Counter, Replicated
from test_embedded import cluster, until


def _acked(futures: list[asyncio.Future[int]]) -> list[int]:
    return [f.result() for f in futures if f.done() and not f.cancelled() and not f.exception()]


def test_outstanding_submits_cancelled_or_cut_by_stops_are_applied_at_most_once(
    tmp_path: Path,
) -> None:
    def objects() -> dict[str, Replicated]:
        return {"c": Counter()}

    async def main() -> None:
        async with cluster(tmp_path, objects) as (nodes, hosted):
            leader = next(i for i, n in enumerate(nodes) if n.is_leader)
            followers = [i for i in range(3) if i != leader]
            futures: list[asyncio.Future[int]] = []
            rnd = random.Random(13)
            stop = asyncio.Event()

            async def pump(i: int) -> None:
                counter = hosted[i]["c"]
                assert isinstance(counter, Counter)
                mine: list[asyncio.Future[int]] = []
                while not stop.is_set():
                    batch = [counter.incr.submit() for _ in range(50)]
                    for f in batch:
                        if rnd.random() < 0.1:
                            f.cancel()
                    futures.extend(batch)
                    mine = [f for f in mine + batch if not f.done()]
                    if len(mine) > 300:
                        await asyncio.wait(mine, return_when=asyncio.FIRST_COMPLETED)
                    else:
                        await asyncio.sleep(0)

            pumps = [asyncio.ensure_future(pump(i)) for i in followers]
            await until(lambda: len(_acked(futures)) >= 300, "300 acknowledged")
            await nodes[leader].stop()
            mark = len(_acked(futures))
            await until(lambda: len(_acked(futures)) >= mark + 300, "300 more", 60.0)
            stop.set()
            await asyncio.gather(*pumps)
            left = [f for f in futures if not f.done()]
            if left:
                await asyncio.wait(left, timeout=60.0)
            assert all(f.done() for f in futures)
            for f in futures:
                if not f.cancelled() and f.exception() is not None:
                    assert isinstance(f.exception(), OutcomeUnknown), f.exception()
            gone, stays = followers
            counter = hosted[stays]["c"]
            assert isinstance(counter, Counter)
            total = await counter.get()
            acked = _acked(futures)
            assert len(set(acked)) == len(acked), "two acknowledged calls saw one value"
            assert len(acked) <= total <= len(futures)
            assert max(acked) <= total
            node = nodes[stays]
            await until(lambda: not node._calls and not node._pending, "no call left")
            # A follower stopped with its own calls in flight: each ends, NodeStopped
            # or applied (after every call before it).
            counter = hosted[gone]["c"]
            assert isinstance(counter, Counter)
            in_flight = [counter.incr.submit() for _ in range(200)]
            await asyncio.sleep(0)  # they leave in this pass
            await nodes[gone].stop()
            assert all(f.done() for f in in_flight)
            for f in in_flight:
                assert f.cancelled() or isinstance(f.exception(), NodeStopped) or f.result() > total
            assert len(set(_acked(in_flight))) == len(_acked(in_flight))

    asyncio.run(main())
