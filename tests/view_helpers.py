"""Helpers of the viewer's tests: a large synthetic trace and a server in a thread."""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyxos.sim.traceout import TRACE_FORMAT, TRACE_VERSION


def synthetic_trace(path: Path, events: int, *, seed: int = 1) -> int:
    """Write a trace of about ``events`` records shaped like a real run's (a leader
    replicating slots to two followers, clients, drops, duplicates, a crash, a
    partition and a leader change every ~20,000 events); return the record count.
    Fast to make, unlike a simulation that long."""
    rng = random.Random(seed)
    replicas = [1, 2, 3]
    clients = [1001, 1002, 1003, 1004]
    records: list[dict[str, Any]] = []
    t = 0.0
    m = 0
    rnd = 1
    leader = 1
    slot = 0

    def add(kind: str, **fields: Any) -> None:
        records.append({"i": len(records), "t": round(t, 9), "kind": kind, **fields})

    def state(node: int, role: str) -> None:
        add(
            "state",
            node=node,
            role=role,
            ballot=f"{rnd}.{leader}",
            leader=leader,
            promised=f"{rnd}.{leader}",
            chosen=slot,
            applied=slot,
            rebuilding=False,
        )

    def message(src: int, dst: int, msg: dict[str, Any]) -> None:
        nonlocal m, t
        add("send", src=src, dst=dst, m=m, msg=msg)
        roll = rng.random()
        t += rng.uniform(0.0001, 0.0008)
        if roll < 0.03:
            add("drop", src=src, dst=dst, m=m, type=msg["type"])
        else:
            if roll < 0.05:
                add("dup", src=src, dst=dst, m=m)
                add("recv", src=src, dst=dst, m=m, type=msg["type"])
            add("recv", src=src, dst=dst, m=m, type=msg["type"])
        m += 1

    for r in replicas:
        state(r, "leader" if r == leader else "follower")
    while len(records) < events:
        if len(records) // 20000 != (len(records) + 40) // 20000:
            old = leader
            add("crash", node=old)
            add("partition", groups=[[old], [r for r in replicas if r != old]])
            leader = rng.choice([r for r in replicas if r != old])
            rnd += 1
            for r in replicas:
                if r != old:
                    message(
                        leader, r, {"type": "Prepare", "ballot": f"{rnd}.{leader}", "slot": slot}
                    )
            state(leader, "leader")
            add("heal")
            add("restart", node=old)
            state(old, "follower")
        client = rng.choice(clients)
        value = f"put k{rng.randrange(3)}=c{client}-{slot}"
        add("call", op_id=slot, client=client, op="put", key="k0", value=value, expected=None)
        message(
            client,
            leader,
            {"type": "ClientRequest", "client": client, "seq": slot, "command": value},
        )
        followers = [r for r in replicas if r != leader]
        for r in followers:
            message(
                leader,
                r,
                {
                    "type": "Accept",
                    "ballot": f"{rnd}.{leader}",
                    "slot": slot,
                    "values": [value],
                    "chosen": slot,
                },
            )
        for r in replicas:
            add("persist", node=r, accepted=[[slot, f"{rnd}.{leader}", value]])
        for r in followers:
            message(
                r,
                leader,
                {"type": "Accepted", "ballot": f"{rnd}.{leader}", "slot": slot, "count": 1},
            )
        add("chosen", slot=slot, ballot=f"{rnd}.{leader}", value=value, by=replicas)
        for r in replicas:
            add("commit", node=r, entries=[[slot, f"{rnd}.{leader}", value]])
        slot += 1
        for r in replicas:
            state(r, "leader" if r == leader else "follower")
        message(
            leader,
            client,
            {
                "type": "ClientReply",
                "client": client,
                "seq": slot - 1,
                "ok": True,
                "result": "ok",
                "leader": leader,
            },
        )
        add(
            "return",
            op_id=slot - 1,
            client=client,
            op="put",
            key="k0",
            value=value,
            expected=None,
            ok=True,
            output=None,
        )
        t += rng.uniform(0.0005, 0.002)
    header = {
        "format": TRACE_FORMAT,
        "version": TRACE_VERSION,
        "source": "synthetic",
        "seed": seed,
        "replicas": replicas,
        "clients": clients,
        "faults": [],
        "mutant": None,
        "events": len(records),
    }
    with path.open("w", encoding="utf-8") as f:
        f.write(json.dumps(header) + "\n")
        for record in records:
            f.write(json.dumps(record, separators=(",", ":")) + "\n")
    return len(records)


@contextmanager
def view_server(trace: Path) -> Iterator[str]:
    """Serve ``trace`` with ``pyxos view``'s application in a thread; yield its URL."""
    from pyxos.view.server import start_view

    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict[str, Any] = {}

    async def begin() -> None:
        box["runner"], box["url"] = await start_view(trace)
        started.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(begin())
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("the view server did not start within 10 s")
    try:
        yield str(box["url"])
    finally:
        asyncio.run_coroutine_threadsafe(box["runner"].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
