"""End to end: concurrent clients through leader kills and restarts stay linearizable.

Real sockets, real WAL, in-process nodes. The clients record a history in the
checker's format; the linearizability checker must accept it.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

from pyxos.check.history import parse_line
from pyxos.check.linearizability import check_history
from pyxos.client import AsyncClient, CommandRejected, HistoryFile, OutcomeUnknown
from pyxos.server.node import NodeServer
from test_server_harness import (
    CLUSTER,
    client_addresses,
    cluster_configs,
    start_nodes,
    stop_nodes,
    wait_leader,
)

KEYS = ("a", "b")


async def workload(c: AsyncClient, rng: random.Random, stop: asyncio.Event) -> int:
    done = 0
    while not stop.is_set():
        key = rng.choice(KEYS)
        value = f"{c.client_id % 1000}-{c.seq + 1}"
        op = rng.choice(("get", "get", "put", "cas", "delete"))
        try:
            if op == "get":
                await c.get(key)
            elif op == "put":
                await c.put(key, value)
            elif op == "cas":
                await c.cas(key, rng.choice((None, f"{c.client_id % 1000}-{c.seq}")), value)
            else:
                await c.delete(key)
            done += 1
        except (OutcomeUnknown, CommandRejected):
            pass
    return done


def test_histories_through_leader_failures_are_linearizable(tmp_path: Path) -> None:
    records: list[dict[str, object]] = []

    async def main() -> int:
        configs = cluster_configs(tmp_path)
        nodes = await start_nodes(configs)
        stop = asyncio.Event()
        clients = [
            AsyncClient(
                client_addresses(configs),
                cluster=CLUSTER,
                history=records.append,
                timeout=1.5,
                attempt_timeout=0.3,
            )
            for _ in range(5)
        ]
        try:
            await wait_leader(nodes)
            tasks = [
                asyncio.create_task(workload(c, random.Random(i), stop))
                for i, c in enumerate(clients)
            ]
            for _ in range(2):  # kill the leader, let a new one take over, restart it
                await asyncio.sleep(0.4)
                leader = await wait_leader(nodes)
                i = nodes.index(leader)
                await leader.shutdown()
                await asyncio.sleep(0.5)
                nodes[i] = NodeServer(configs[i])
                await nodes[i].startup()
            await asyncio.sleep(0.4)
            stop.set()
            return sum(await asyncio.gather(*tasks))
        finally:
            stop.set()
            for c in clients:
                await c.close()
            await stop_nodes(nodes)

    completed = asyncio.run(main())
    assert completed > 50, f"only {completed} operations completed"
    ops = [parse_line(json.dumps(r)) for r in records]
    result = check_history(ops, timeout_s=20.0)
    assert result.ok, result.describe()


def test_history_file_round_trips_through_the_checker_loader(tmp_path: Path) -> None:
    from pyxos.check.history import load_history

    path = tmp_path / "history.jsonl"
    with HistoryFile(path) as history:
        history(
            {
                "client": 1,
                "op": "put",
                "key": "k",
                "value": "v",
                "expected": None,
                "call": 1,
                "return": 2,
                "output": None,
                "ok": True,
            }
        )
        history(
            {
                "client": 1,
                "op": "get",
                "key": "k",
                "value": None,
                "expected": None,
                "call": 3,
                "return": None,
                "output": None,
                "ok": None,
            }
        )
    assert history.records == 2
    ops = load_history(path)
    assert [op.op for op in ops] == ["put", "get"]
    assert check_history(ops).ok
