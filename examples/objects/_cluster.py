"""What the object examples share: the 3-node cluster on loopback and a barrier.

Each example is one program run three times, once per node (ids 1, 2, 3), each process
one pyxos node with its own data directory; see examples/objects/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile

from pyxos.embedded import node_config
from pyxos.objects import Counter
from pyxos.server.config import Config


def parse_args(name: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=f"the {name} example: one node of three")
    parser.add_argument("node", type=int, choices=[1, 2, 3], help="this node's id")
    parser.add_argument("--base-port", type=int, default=7300, help="peer ports base+1..3")
    parser.add_argument("--dir", default=None, help="data directory (default: a new temp dir)")
    parser.add_argument("--linger", type=float, default=1.0, help="seconds before leaving")
    return parser.parse_args()


def config(args: argparse.Namespace, name: str) -> Config:
    peers = {i: f"127.0.0.1:{args.base_port + i}" for i in (1, 2, 3)}
    data = args.dir or tempfile.mkdtemp(prefix=f"pyxos-{name}-{args.node}-")
    return node_config(args.node, peers, data, cluster_id=f"example-{name}")


async def barrier(arrived: Counter, n: int = 3) -> None:
    """Wait until all ``n`` nodes got here (each adds one; linearizable reads)."""
    await arrived.incr()
    while await arrived.get() < n:
        await asyncio.sleep(0.05)
