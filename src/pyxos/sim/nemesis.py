"""The nemesis: a seeded schedule of faults injected into a simulated run.

Theory of operation
-------------------
During the fault window ``[0, until)`` the nemesis acts at random intervals: it splits
the cluster (random halves, majority/minority, an isolated node or leader, a bridge
node that sees both sides), heals, crashes a node and restarts it, and pauses a node
(frozen with its memory kept, like a GC pause or SIGSTOP: it then acts on a stale
view of the world, which is what leases must survive). With ``disk``, crashes keep a
random prefix of the unsynced writes, an fsync fails now and then, which stops that
node (it counts as crashed and restarts later), and a node's log is now and then
corrupted or its disk wiped: it restarts in the rebuilding state. Probabilistic network
faults (loss, duplication, long delays, reordering) are on for the same window. At
``until`` everything heals: partitions end, every crashed node restarts, paused nodes
resume and the network stops losing and duplicating messages. Liveness checks start
counting from there. Crashes never take down more than a minority at once, the failure
model the protocol claims to survive; safety must hold whatever the nemesis does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pyxos.sim.world import NetworkFaults, Simulator

__all__ = ["ALL_FAULTS", "FAULT_KINDS", "Nemesis", "parse_faults"]

FAULT_KINDS = ("drop", "dup", "reorder", "delay", "partition", "crash", "pause", "disk")
ALL_FAULTS = ("drop", "dup", "reorder", "delay", "partition", "crash", "pause")
"""What ``all`` means: every network, crash and pause fault (``disk`` is added apart)."""


def parse_faults(text: str, allowed: Iterable[str] = FAULT_KINDS) -> frozenset[str]:
    """Parse a comma list of fault kinds; ``all`` expands to :data:`ALL_FAULTS`."""
    allowed_set = set(allowed)
    kinds: set[str] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part or part == "none":
            continue
        if part == "all":
            kinds.update(k for k in ALL_FAULTS if k in allowed_set)
        elif part in allowed_set:
            kinds.add(part)
        else:
            raise ValueError(f"unknown fault kind {part!r}; choose from {sorted(allowed_set)}")
    return frozenset(kinds)


def network_faults(kinds: frozenset[str]) -> NetworkFaults:
    """The network fault probabilities for the given kinds."""
    return NetworkFaults(
        drop=0.1 if "drop" in kinds else 0.0,
        dup=0.05 if "dup" in kinds else 0.0,
        long_delay=0.05 if "delay" in kinds else 0.0,
        reorder="reorder" in kinds,
        max_delay=0.01 if "reorder" in kinds else 0.002,
    )


class Nemesis:
    """Schedules faults on a simulator until ``until``, then heals everything."""

    def __init__(
        self,
        sim: Simulator,
        kinds: frozenset[str],
        servers: Iterable[int],
        until: float,
        *,
        leader: Callable[[], int | None] = lambda: None,
        interval: tuple[float, float] = (0.02, 0.4),
    ) -> None:
        self.sim = sim
        self.kinds = kinds
        self.servers = sorted(servers)
        self.until = until
        self.leader = leader
        self.interval = interval
        self.crashed: set[int] = set()
        self.paused: set[int] = set()
        self.actions = 0
        sim.faults = network_faults(kinds)
        self._calm = NetworkFaults(reorder=sim.faults.reorder, max_delay=sim.faults.max_delay)
        self._calm_disk = sim.disk_latency
        if "disk" in kinds:
            sim.torn_writes = True
            sim.fsync_fault = self._fsync_fault
            sim.disk_latency = (0.001, 0.01)  # a slow disk: more writes caught unsynced
        if kinds & {"partition", "crash", "pause", "disk"}:
            sim.call_at(self._next_time(), self._act)
        sim.call_at(until, self.heal_all)

    def _next_time(self) -> float:
        return self.sim.now + self.sim.rng.uniform(*self.interval)

    def _act(self) -> None:
        sim, rng = self.sim, self.sim.rng
        if sim.now >= self.until:
            return
        choices: list[str] = [k for k in ("partition", "crash", "pause") if k in self.kinds]
        if "disk" in self.kinds:
            choices += ["crash", "corrupt"]
        kind = rng.choice(choices)
        minority = (len(self.servers) - 1) // 2
        if kind == "partition":
            self._partition()
        elif kind == "crash":
            down = self.crashed | self.paused
            if self.crashed and (len(down) >= minority or rng.random() < 0.5):
                node = rng.choice(sorted(self.crashed))
                self.crashed.discard(node)
                sim.restart(node)
            elif len(down) < minority:
                candidates = [n for n in self.servers if n not in down]
                if "disk" in self.kinds:
                    # Power fails where it hurts: prefer a node with writes in flight.
                    dirty = [n for n in candidates if sim.procs[n].storage.unsynced]
                    candidates = dirty or candidates
                node = rng.choice(candidates)
                self.crashed.add(node)
                sim.crash(node)
        elif kind == "corrupt":
            # A node still rebuilding has no trustworthy state yet: it counts as down,
            # so no more than a minority ever loses its acceptor state at once.
            rebuilding = {n for n in self.servers if sim.procs[n].storage.needs_rebuild}
            down = self.crashed | self.paused | rebuilding
            if len(down) < minority:
                node = rng.choice([n for n in self.servers if n not in down])
                self.crashed.add(node)
                sim.crash(node)
                sim.procs[node].storage.corrupt(keep_snapshot=rng.random() < 0.5)
                sim._log("corrupt", node, None, None)
        elif kind == "pause":
            down = self.crashed | self.paused
            if len(down) < minority:
                node = rng.choice([n for n in self.servers if n not in down])
                self._pause(node, rng.uniform(0.05, 0.3))
        self.actions += 1
        sim.call_at(self._next_time(), self._act)

    def _partition(self) -> None:
        sim, rng = self.sim, self.sim.rng
        if sim.blocked and rng.random() < 0.4:
            sim.heal()
            return
        sim.heal()
        nodes = list(self.servers)
        rng.shuffle(nodes)
        shape = rng.choice(("halves", "isolate", "leader", "bridge"))
        if shape == "isolate":
            sim.partition([nodes[:1], nodes[1:]])
        elif shape == "leader":
            leader = self.leader()
            target = leader if leader in self.servers else nodes[0]
            sim.partition([[target], [n for n in nodes if n != target]])
        elif shape == "bridge" and len(nodes) >= 3:
            bridge, rest = nodes[0], nodes[1:]
            half = len(rest) // 2
            left, right = rest[:half], rest[half:]
            sim.partition([left, right])
            sim._log("bridge", bridge, None, [left, right])
        else:
            cut = rng.randint(1, len(nodes) - 1)
            sim.partition([nodes[:cut], nodes[cut:]])

    def _pause(self, node: int, duration: float) -> None:
        self.paused.add(node)
        duration = min(duration, self.until - self.sim.now)
        self.sim.pause(node, duration)

        def resumed() -> None:
            self.paused.discard(node)

        self.sim.call_at(self.sim.now + duration, resumed)

    def _fsync_fault(self, node: int) -> bool:
        sim = self.sim
        if sim.now >= self.until or sim.rng.random() >= 0.01:
            return False
        minority = (len(self.servers) - 1) // 2
        if node not in self.servers or len(self.crashed | self.paused) >= minority:
            return False
        self.crashed.add(node)
        return True

    def heal_all(self) -> None:
        """End every fault: heal, restart the crashed, resume the paused, calm the net."""
        sim = self.sim
        sim.heal()
        sim.resume_all()
        self.paused.clear()
        for node in sorted(self.crashed):
            sim.restart(node)
        self.crashed.clear()
        sim.faults = self._calm
        sim.fsync_fault = None
        sim.disk_latency = self._calm_disk
