"""Benchmark of the linearizability checker on generated, linearizable histories.

    python bench/bench_checker.py [--ops 10000 --keys 10 --clients 10 --seed 1]

Histories come from a simulated store that *is* linearizable: every key is a register,
each client issues one operation at a time, and every operation takes effect at a random
instant between its call and its return. Some operations time out (``return: null``);
half of those took effect (possibly after the client gave up), half never did. The
checker must accept every such history; the script fails loudly if it does not.
Prints the median of three timed runs.
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pyxos.check.history import Operation, OpKind, dump_history
from pyxos.check.linearizability import check_history

_MS = 1_000_000  # ns


@dataclass(slots=True)
class _Planned:
    """One operation of the simulation, before the register fills in its outcome."""

    client: int
    kind: OpKind
    key: str
    value: str | None
    call: int
    effect: int | None  # the instant it takes effect; None: never
    ret: int | None  # None: the client timed out
    expected: str | None = None
    output: str | None = None
    ok: bool = False


def generate_history(
    *,
    ops: int,
    keys: int,
    clients: int,
    seed: int,
    unknown_rate: float = 0.02,
) -> list[Operation]:
    """A linearizable history of ``ops`` operations, sorted by call time.

    Operation mix: 50% get, 30% put, 15% cas, 5% delete, keys chosen uniformly. Latency
    is exponential (mean 1 ms) plus 0.1 ms; clients think 0-0.2 ms between operations.
    A cas expects the value its key holds at the call (as a client doing
    read-modify-write would) 70% of the time, else a recent value, so both outcomes
    occur. A timed-out operation returns ``null`` after 5 ms; half of them take effect,
    at a random instant up to 10 ms after their call.
    """
    rng = random.Random(seed)
    key_names = [f"k{i}" for i in range(keys)]
    kinds: tuple[OpKind, ...] = ("get", "put", "cas", "delete")
    # Plan every client's calls, each with the instant it takes effect.
    plans: list[_Planned] = []
    seq = 0
    for client in range(clients):
        t = rng.randrange(0, _MS)
        for _ in range(ops // clients + (1 if client < ops % clients else 0)):
            call = t + rng.randrange(0, _MS // 5)
            kind = rng.choices(kinds, weights=(10, 6, 3, 1))[0]
            seq += 1
            value = f"v{client}.{seq}" if kind in ("put", "cas") else None
            latency = _MS // 10 + int(rng.expovariate(1.0) * _MS)
            if rng.random() < unknown_rate:
                took_effect = rng.random() < 0.5
                effect = call + rng.randrange(0, 10 * _MS) if took_effect else None
                ret = None
                t = call + 5 * _MS
            else:
                effect = call + rng.randrange(0, latency + 1)
                ret = call + latency
                t = ret
            plans.append(_Planned(client, kind, rng.choice(key_names), value, call, effect, ret))
    # Run the registers in time order: at a call a cas picks what it expects; at its
    # effect an operation reads or writes.
    register: dict[str, str | None] = {}
    recent: dict[str, list[str | None]] = {k: [None] for k in key_names}
    events: list[tuple[int, int, int]] = []  # (time, 0: call / 1: effect, plan index)
    for i, p in enumerate(plans):
        events.append((p.call, 0, i))
        if p.effect is not None:
            events.append((p.effect, 1, i))
    heapq.heapify(events)
    while events:
        _, what, i = heapq.heappop(events)
        p = plans[i]
        current = register.get(p.key)
        if what == 0:
            if p.kind == "cas":
                fresh = rng.random() < 0.7
                p.expected = current if fresh else rng.choice(recent[p.key][-5:])
        elif p.kind == "get":
            p.output, p.ok = current, True
        elif p.kind == "cas" and p.expected != current:
            p.ok = False
        else:
            register[p.key] = p.value  # put, successful cas, or delete (value None)
            recent[p.key].append(p.value)
            p.ok = True
    history = [
        Operation(
            client=p.client,
            op=p.kind,
            key=p.key,
            value=p.value,
            expected=p.expected,
            call=p.call,
            return_=p.ret,
            output=p.output if p.ret is not None else None,
            ok=p.ok if p.ret is not None else None,
        )
        for p in plans
    ]
    history.sort(key=lambda op: op.call)
    return history


def main(argv: list[str] | None = None) -> int:
    """Generate a history, check it three times and print the median time."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=10)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--unknown-rate", type=float, default=0.02)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dump", type=Path, help="also write the history (JSON lines) here")
    args = parser.parse_args(argv)
    history = generate_history(
        ops=args.ops,
        keys=args.keys,
        clients=args.clients,
        seed=args.seed,
        unknown_rate=args.unknown_rate,
    )
    if args.dump:
        dump_history(history, args.dump)
    n_unknown = sum(op.unknown for op in history)
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        result = check_history(history)
        times.append(time.perf_counter() - t0)
        if not result.ok:
            print(result.describe(), file=sys.stderr)
            print(
                f"BUG: generated history rejected; replay: python bench/bench_checker.py"
                f" --ops {args.ops} --keys {args.keys} --clients {args.clients}"
                f" --seed {args.seed} --unknown-rate {args.unknown_rate}",
                file=sys.stderr,
            )
            return 1
    print(
        f"{len(history)} ops ({n_unknown} unknown outcome), {args.keys} keys,"
        f" {args.clients} clients, seed {args.seed}: linearizable,"
        f" median {statistics.median(times):.3f} s over {args.runs} runs"
        f" (min {min(times):.3f} s, max {max(times):.3f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
