"""The nemesis schedule of a chaos run: which fault, when, for how long, from a seed.

Theory of operation
-------------------
A schedule is a pure function of ``(seed, duration, nodes, kinds)``: the same
arguments give the same list of :class:`Fault` s, so a failing run is replayed by
running the same command again. One fault is active at a time, followed by a quiet
gap in which the cluster may recover; that keeps every fault inside the failure model
(a minority of nodes crashed, paused or wiped; any partition) and makes "time to the
next successful write after the fault" a clean figure.

Targets that depend on the run (the node that leads *at that moment*) are symbolic:
``target="leader"`` is resolved by the harness when the fault starts and the node
actually hit is recorded in the report. Everything else (which node, which halves,
which loss rate) is drawn here.

Fault kinds (``KINDS``):

- ``kill``: SIGKILL a node (the leader half of the time, sometimes the same node as
  the previous kill) and restart it with the same command line after ``duration``.
- ``pause``: SIGSTOP a node (often the leader) for longer than the election timeout
  and the lease, then SIGCONT.
- ``partition``: ``halves`` (a random minority against the rest), ``isolate`` (the
  leader alone), ``bridge`` (two halves that share one node), ``oneway`` (one node
  cannot send to the others but hears them).
- ``loss``: frames between random pairs dropped with probability 0.1-0.5.
- ``delay``: frames between random pairs delayed 5-80 ms.
- ``wipe``: a node is killed, its data directory deleted, and it is restarted with
  the same command line; it must rebuild from its peers.
- ``clock``: clock-rate skew within the drift bound. With it every node runs its
  clock at a rate drawn from ``1 ± CLOCK_SKEW`` (``pyxos serve --chaos-clock``), and
  the fault restarts a node (often the leader) with a newly drawn rate.
- ``disk-full`` (root only, ``ROOT_KINDS``; not in ``all``, so the schedules of
  ``all`` stay what they were): every node's data directory is a small tmpfs of its
  own; the fault fills one node's (often the leader's) to the last byte, then frees the
  space again. The node must refuse writes, lose nothing and resume by itself.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["CLOCK_SKEW", "KINDS", "ROOT_KINDS", "Fault", "make_schedule", "parse_kinds"]

CLOCK_SKEW = 0.04
"""Clock rates stay within ``1 ± CLOCK_SKEW``: two nodes' rates then differ by less
than the replica's default drift bound (``ReplicaConfig.clock_drift`` = 0.1)."""

KINDS = ("kill", "pause", "partition", "loss", "delay", "wipe", "clock")
"""Every nemesis that works without root privileges (``all``)."""

ROOT_KINDS = ("disk-full",)
"""Nemeses that need root (they mount file systems); named explicitly, e.g.
``--nemesis all,disk-full``."""


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault: ``kind`` from ``start`` for ``duration`` seconds.

    ``target`` is a node id, or ``"leader"`` (resolved when the fault starts).
    ``groups`` are the sides of a partition (node ids, or ``-1`` for "the leader");
    ``pairs`` the directed links a loss or delay acts on; ``amount`` the loss rate or
    the delay's upper bound in seconds.
    """

    kind: str
    start: float
    duration: float
    target: int | str = 0
    mode: str = ""
    groups: tuple[tuple[int, ...], ...] = ()
    pairs: tuple[tuple[int, int], ...] = ()
    amount: float = 0.0

    def describe(self) -> str:
        """One line for the report."""
        what = self.kind if not self.mode else f"{self.kind}/{self.mode}"
        target = f" node {self.target}" if self.target else ""
        sides = " | ".join(",".join(map(str, g)) for g in self.groups)
        sides = f" [{sides}]" if sides else ""
        if self.kind == "loss":
            amount = f" {self.amount:.0%} of {len(self.pairs)} links"
        elif self.kind == "delay":
            amount = f" up to {self.amount * 1000:.0f} ms on {len(self.pairs)} links"
        elif self.kind == "clock":
            amount = f" rate {self.amount:.3f}"
        else:
            amount = ""
        return f"{what}{target}{sides}{amount} for {self.duration:.1f}s"


def parse_kinds(text: str) -> tuple[str, ...]:
    """A comma-separated list of ``KINDS`` and ``ROOT_KINDS``, where ``all`` stands for
    ``KINDS``; ValueError on anything else."""
    kinds: list[str] = []
    for k in (k.strip() for k in text.split(",")):
        for kind in KINDS if k == "all" else (k,) if k else ():
            if kind not in kinds:
                kinds.append(kind)
    known = KINDS + ROOT_KINDS
    unknown = [k for k in kinds if k not in known]
    if unknown or not kinds:
        raise ValueError(f"unknown nemesis {unknown[0] if unknown else text!r}; known: {known}")
    return tuple(kinds)


def make_schedule(
    seed: int,
    duration: float,
    nodes: Iterable[int],
    kinds: Iterable[str] = KINDS,
    *,
    warmup: float = 2.0,
    settle: float = 5.0,
    election_timeout: float = 0.6,
) -> list[Fault]:
    """The faults of a run of ``duration`` seconds, the last one healed ``settle``
    seconds before the end (so every operation can complete and every node catch up)."""
    rng = random.Random(seed)
    ids = sorted(nodes)
    kinds = tuple(kinds)
    minority = (len(ids) - 1) // 2
    faults: list[Fault] = []
    t = warmup
    last_killed: int | str = 0
    while True:
        kind = rng.choice(kinds)
        hold = rng.uniform(1.0, 4.0)
        if t + hold > duration - settle:
            break
        if kind == "kill":
            if last_killed and rng.random() < 0.25:
                target = last_killed  # the same node again
            else:
                target = "leader" if rng.random() < 0.5 else rng.choice(ids)
            last_killed = target
            faults.append(Fault("kill", t, rng.uniform(0.0, min(hold, 3.0)), target))
        elif kind == "pause":
            target = "leader" if rng.random() < 0.6 else rng.choice(ids)
            # Longer than the election timeout and the lease, so the cluster moves on.
            pause = rng.uniform(2 * election_timeout, 2 * election_timeout + 2.0)
            faults.append(Fault("pause", t, pause, target))
            hold = pause
        elif kind == "partition":
            mode = rng.choice(("halves", "isolate", "bridge", "oneway"))
            shuffled = ids[:]
            rng.shuffle(shuffled)
            if mode == "halves":
                k = rng.randint(1, max(1, minority))
                groups = (tuple(sorted(shuffled[:k])), tuple(sorted(shuffled[k:])))
                faults.append(Fault("partition", t, hold, mode=mode, groups=groups))
            elif mode == "isolate":
                faults.append(Fault("partition", t, hold, "leader", mode=mode))
            elif mode == "bridge":
                bridge = shuffled[0]
                rest = shuffled[1:]
                half = len(rest) // 2
                groups = (
                    tuple(sorted([bridge, *rest[:half]])),
                    tuple(sorted([bridge, *rest[half:]])),
                )
                faults.append(Fault("partition", t, hold, bridge, mode=mode, groups=groups))
            else:
                target = "leader" if rng.random() < 0.5 else rng.choice(ids)
                faults.append(Fault("partition", t, hold, target, mode=mode))
        elif kind in ("loss", "delay"):
            count = rng.randint(1, len(ids) * (len(ids) - 1))
            all_pairs = [(a, b) for a in ids for b in ids if a != b]
            pairs = tuple(sorted(rng.sample(all_pairs, count)))
            amount = rng.uniform(0.1, 0.5) if kind == "loss" else rng.uniform(0.005, 0.08)
            faults.append(Fault(kind, t, hold, pairs=pairs, amount=amount))
        elif kind == "clock":
            target = "leader" if rng.random() < 0.5 else rng.choice(ids)
            rate = 1.0 + rng.uniform(-CLOCK_SKEW, CLOCK_SKEW)
            faults.append(Fault("clock", t, rng.uniform(0.0, 0.5), target, amount=rate))
        elif kind == "disk-full":
            target = "leader" if rng.random() < 0.5 else rng.choice(ids)
            faults.append(Fault("disk-full", t, hold, target))
        else:  # wipe
            faults.append(Fault("wipe", t, rng.uniform(0.0, 2.0), rng.choice(ids)))
        t += faults[-1].duration + rng.uniform(1.0, 3.0)
    return faults
