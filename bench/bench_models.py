"""Benchmark of the generic linearizability search (pyxos.check.generic) per model.

    python bench/bench_models.py [--ops 4000 --clients 16 --seed 1 --unknown 0.02]

Histories are linearizable by construction: each client issues one operation at a time;
every operation takes effect at a random instant between its call and its return, in
that order, on the model itself. A fraction ``--unknown`` of them time out
(``return: null``); half of those took effect, half never did. The search must accept
every history (the script fails loudly if not). Prints the median of three timed runs
and the configurations explored.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import statistics
import sys
import time
from typing import Any

from pyxos.check.generic import check_model
from pyxos.check.history import parse_app_line
from pyxos.check.models import MODELS, Model, ModelOp


def _input(model: str, rng: random.Random) -> tuple[str, Any]:
    r = rng.random()
    if model == "counter":
        return (
            ("get", None) if r < 0.4 else ("incr", None) if r < 0.7 else ("add", rng.randint(-3, 3))
        )
    if model == "queue":
        if r < 0.45:
            return "enqueue", rng.randint(0, 1000)
        return ("dequeue", None) if r < 0.85 else ("peek", None) if r < 0.95 else ("len", None)
    owner = rng.choice("abcd")
    if r < 0.5:
        return "acquire", {"owner": owner, "ttl": rng.randint(1, 8)}
    if r < 0.7:
        return "release", {"owner": owner, "token": rng.randint(0, 5)}
    return "holder", {}


def _json_out(model: str, out: Any) -> Any:
    if model == "lock" and isinstance(out, tuple):
        return {"owner": out[0], "token": out[1]}
    return out


def generate(name: str, ops: int, clients: int, unknown: float, seed: int) -> list[ModelOp]:
    """A linearizable history of ``ops`` operations of model ``name``."""
    rng = random.Random(seed)
    model = MODELS[name]
    planned = []  # (effect time or None, call, ret or None, client, op, input)
    per_client = ops // clients
    for c in range(clients):
        t = rng.randint(0, 1000)
        for _ in range(per_client):
            call = t + rng.randint(0, 200)
            ret = call + rng.randint(50, 3000)
            effect: int | None = rng.randint(call, ret)
            timed_out = rng.random() < unknown
            if timed_out:
                effect = None if rng.random() < 0.5 else rng.randint(call, call + 10_000)
            op, inp = _input(name, rng)
            planned.append((effect, call, None if timed_out else ret, c, op, inp))
            t = ret
    state = model.init()
    lines = []
    order = [p for p in planned if p[0] is not None]
    heapq.heapify(order)
    outputs: dict[int, Any] = {}
    while order:
        p = heapq.heappop(order)
        probe = parse_app_line(
            json.dumps(
                {"client": 0, "op": p[4], "input": p[5], "call": 0, "return": None, "ok": None}
            )
        )
        inp, _ = model.parse(probe)
        state, out = model.step(state, inp)
        outputs[id(p)] = out
    for p in planned:
        d = {
            "client": p[3],
            "op": p[4],
            "input": p[5],
            "call": p[1],
            "return": p[2],
            "ok": True if p[2] is not None else None,
        }
        if p[2] is not None:
            d["output"] = _json_out(name, outputs[id(p)])
        lines.append(d)
    result = []
    for d in lines:
        op = parse_app_line(json.dumps(d))
        inp, out = model.parse(op)
        result.append(ModelOp(op, inp, out))
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ops", type=int, default=4000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--unknown", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--models", default="counter,queue,lock,kv-register")
    args = ap.parse_args()
    for name in args.models.split(","):
        if name == "kv-register":
            continue
        model: Model = MODELS[name]
        ops = generate(name, args.ops, args.clients, args.unknown, args.seed)
        times = []
        result = None
        for _ in range(3):
            t0 = time.perf_counter()
            result = check_model(model, ops)
            times.append(time.perf_counter() - t0)
            if not result.ok:
                print(result.describe(model))
                return 1
        assert result is not None
        print(
            f"{name:8} {len(ops)} ops, {args.clients} clients:"
            f" median {statistics.median(times) * 1000:.0f} ms, {result.configs} configurations"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
