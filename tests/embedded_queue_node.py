"""A node process for tests/test_embedded_processes.py: an embedded node hosting one
replicated Queue, driven by one JSON request a line on stdin (answers on stdout).

    status            -> {"leader": bool, "known": bool, "local_size": int}
    fill S W          -> W tasks put unique items for S seconds: {"acked": [...],
                         "unknown": [...]} (unknown: the outcome is not known)
    contents          -> every item in the queue (a linearizable query): {"items": [...]}
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from pyxos.embedded import BlockingNode, OutcomeUnknown, node_config
from pyxos.embedded.node import NodeStopped
from pyxos.objects import Queue


async def fill(q: Queue, me: int, seconds: float, workers: int) -> dict[str, Any]:
    end = time.monotonic() + seconds
    acked: list[str] = []
    unknown: list[str] = []

    async def worker(w: int) -> None:
        n = 0
        while time.monotonic() < end:
            n += 1
            item = f"{me}.{w}.{n}"
            try:
                await q.put(item)
            except (OutcomeUnknown, NodeStopped):
                unknown.append(item)
                continue
            acked.append(item)

    await asyncio.gather(*(worker(w) for w in range(workers)))
    return {"acked": acked, "unknown": unknown}


async def contents(q: Queue) -> dict[str, Any]:
    return {"items": await q.contents()}


def main() -> None:
    node_id, peers, data = int(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
    config = node_config(node_id, {int(k): v for k, v in peers.items()}, data)
    q = Queue()
    node = BlockingNode(config, {"q": q}, tick_interval=None, timeout=20.0)
    for line in sys.stdin:
        req = json.loads(line)
        if req["cmd"] == "status":
            reply: dict[str, Any] = {
                "leader": node.is_leader,
                "known": node.node.leader != 0,
                "local_size": len(q.items) - q.head,
            }
        elif req["cmd"] == "fill":
            reply = node.run(fill(q, node_id, req["seconds"], req["workers"]))
        elif req["cmd"] == "contents":
            reply = node.run(contents(q))
        else:
            reply = {"error": req["cmd"]}
        print(json.dumps(reply), flush=True)
    node.close()


if __name__ == "__main__":
    main()
