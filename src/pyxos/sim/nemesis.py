"""The nemesis: a seeded schedule of faults injected into a simulated run.

Theory of operation
-------------------
During the fault window ``[0, until)`` the nemesis acts at random intervals: it splits
the cluster (random halves, majority/minority, an isolated node or leader, a bridge
node that sees both sides), heals, crashes a node and restarts it, and pauses a node
(frozen with its memory kept, like a GC pause or SIGSTOP: it then acts on a stale
view of the world, which is what leases must survive). With ``disk``, the nodes' real
WAL and snapshot files on their simulated file systems get what disks do: a crash (a
power loss) keeps a random part of the unsynced writes, torn and reordered at sector
granularity, and every other time the drive also loses writes it had acknowledged
(a volatile cache that reported flushes done and wrote back out of order: a run of the
newest records is lost, the newest one kept; see ``lose_acknowledged``: the newest
votes are what a power loss endangers, so that is where the damage goes); a disk
starts failing now and then (every fsync on it fails with the
pages dropped, until the machine loses power shortly after: the real WAL stops the
node at the first failure); a disk fills up for a while (``ENOSPC``); and a crashed
node's disk is damaged (the leader's, half the time: that is where the newest votes
are, and an election follows): a bit flips or a sector is lost (zeros) among the
newest WAL records (never in the last one, whose damage is indistinguishable from a
torn write), or a bit flips in the newest snapshot, or its log or its whole data
directory is wiped. Recovery must tell each apart: a
corrupt or lost log makes the node rebuild. ``wipe-init`` (part of ``disk``) is the
operator's mistake: a node's data directory is wiped and the node restarted at once
with the bootstrap flag it was first started with, so its disk looks like a brand-new
node's. Probabilistic network
faults (loss, duplication, long delays, reordering) are on for the same window. At
``until`` everything heals: partitions end, every crashed node restarts, paused nodes
resume and the network stops losing and duplicating messages. Liveness checks start
counting from there. Crashes never take down more than a minority at once, the failure
model the protocol claims to survive; safety must hold whatever the nemesis does. With
flexible quorums the model is ``n - max(q1, q2)`` nodes (``tolerance``): a smaller
``q2`` buys faster commits with fewer failures survived (docs/architecture.md,
*Flexible quorums*).

Clocks. Every server always runs on its own clock (see ``world.NodeClock``), its rate
drawn once within half the bound the replicas assume (``clock_drift``: the rates of any
two clocks differ by a factor of at most ``1 / (1 - clock_drift)``, so each rate lies
within ``clock_drift / (2 - clock_drift)`` of 1). With ``clock`` the rates use the whole
bound, they change during the run, the changes are aimed where they hurt a lease (the
leader's clock slow, the others fast), and a restarted node may come back from a reboot
with its monotonic clock started over. With ``clock-unsafe`` the same changes go beyond
the bound: leases are then no longer safe, and the checkers must say so (a test shows
that they do). Clocks keep their rates after the heal: drift is no fault that ends.

Membership. With ``membership`` the nemesis also changes the cluster through the
log (``membership`` callback, from the harness): it adds a learner under a new id,
promotes a learner, removes a voter (the leader too) or replaces one by a new id, one
change at a time, while every other fault goes on. New nodes join ``servers`` (and
take faults from then on); removed ones leave it and keep running, refused by their
former peers.

Leader transfers. With ``transfer`` the nemesis also asks the current leader to hand
its leadership to a random peer (``pyxos leader transfer``), a peer that may be down,
partitioned away or far behind: the transfer completes, or times out and the old
leader resumes, under every other fault.

Stale messages. With ``delay`` a rare message is held back for several election
timeouts, and with ``dup`` some duplicates are replayed that much later (see
``world.NetworkFaults``): they reach nodes that have changed ballots since.

Power blips (``power``, named apart like ``disk``). Leaders fail too, and at the worst
moment: the nemesis marks the leader, and the machine loses power right after one of
its fsyncs completes while its Accept of its newest slot is still on the way to every
peer and every peer has learned every slot before it (its own vote is then the only
one cast; at the latest ``POWER_WITHIN`` after the mark). Its disk is damaged most
times (``damage_disk``), and it comes back at once (``POWER_REBOOT``), before the
survivors elect anybody, so its recovery or rebuild races with its own old traffic:
with ``power`` every power loss leaves what the machine had sent and the network had
not delivered yet lost (still in its send queue), held in the network for tens to
hundreds of milliseconds (switch buffers, a path failing over), or delivered as sent
(``NetworkFaults.crash_lost``, ``crash_held``). This is the interleaving behind the
rebuild fence (``core/replica.py``, "Rebuilding"): a wiped leader's Accept delivered
after its rebuild. It is a kind of its own, not part of ``disk``, so that adding it
moved none of the seeds that the ``disk`` sweeps and their pinned regressions use.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from pathlib import Path

from pyxos.core.messages import Accept
from pyxos.sim.world import DATA_DIR, SNAPSHOT_DIR, NetworkFaults, Simulator
from pyxos.storage.simfs import SECTOR, SimFileSystem
from pyxos.storage.wal import SEGMENT_HEADER_SIZE, record_offsets

__all__ = ["ALL_FAULTS", "FAULT_KINDS", "Nemesis", "parse_faults"]

FAULT_KINDS = (
    "drop",
    "dup",
    "reorder",
    "delay",
    "partition",
    "crash",
    "pause",
    "disk",
    "clock",
    "clock-unsafe",
    "wipe-init",
    "membership",
    "power",
    "transfer",
)
ALL_FAULTS = ("drop", "dup", "reorder", "delay", "partition", "crash", "pause")
"""What ``all`` means: every network, crash and pause fault (``disk``, ``power``,
``clock``, ``clock-unsafe``, ``membership`` and ``transfer``, the operator's leader
transfers, are added apart; within-bound drift is always on)."""

POWER_WITHIN = 0.5
"""Seconds within which a leader marked by ``power`` meets its worst moment (else it
loses power then anyway)."""
POWER_REBOOT = (0.005, 0.06)
"""Seconds a machine takes to come back after a ``power`` blip."""
POWER_DAMAGE = 0.75
"""How often a ``power`` blip also damages the leader's disk (``damage_disk``)."""

LYING_DRIVE_CHANCE = 0.5
"""With ``disk``: how often a power loss also loses writes the drive acknowledged."""

DEFAULT_CLOCK_DRIFT = 0.1
"""The drift bound the replicas assume unless told (``ReplicaConfig.clock_drift``)."""


def rate_bound(clock_drift: float) -> float:
    """How far from 1 a clock rate may lie for every two rates to differ by a factor of
    at most ``1 / (1 - clock_drift)``, the bound a lease is shortened for."""
    return clock_drift / (2.0 - clock_drift)


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


def kinds_wipe_init(kinds: frozenset[str]) -> bool:
    """Whether the nemesis restarts wiped nodes with the bootstrap flag (``disk`` too)."""
    return "wipe-init" in kinds or "disk" in kinds


def network_faults(kinds: frozenset[str], *, stale: bool = True) -> NetworkFaults:
    """The network fault probabilities for the given kinds (``stale=False``: no
    message is held back for several election timeouts, as before those existed)."""
    return NetworkFaults(
        drop=0.1 if "drop" in kinds else 0.0,
        dup=0.05 if "dup" in kinds else 0.0,
        long_delay=0.05 if "delay" in kinds else 0.0,
        stale_delay=0.003 if "delay" in kinds and stale else 0.0,
        late_dup=0.3 if "dup" in kinds and stale else 0.0,
        reorder="reorder" in kinds,
        max_delay=0.01 if "reorder" in kinds else 0.002,
        crash_lost=0.4 if "power" in kinds else 0.0,
        crash_held=0.5 if "power" in kinds else 0.0,
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
        clock_drift: float = DEFAULT_CLOCK_DRIFT,
        drift: bool = True,
        stale: bool = True,
        membership: Callable[[], None] | None = None,
        budget: Callable[[], int] | None = None,
        tolerance: int | None = None,
        transfer: Callable[[int, int], None] | None = None,
    ) -> None:
        """``drift=False`` keeps every clock exact and ``stale=False`` holds no message
        back for several election timeouts (the simulator as it was before either
        existed, to show what they catch). ``tolerance``: how many servers may be down
        or without state at once (default: a minority). ``transfer(leader, target)``
        starts a leader transfer (the ``transfer`` kind)."""
        self.sim = sim
        self.kinds = kinds
        self.servers = sorted(servers)
        self.minority = (len(self.servers) - 1) // 2 if tolerance is None else tolerance
        self.transfer = transfer
        self.transfers = 0
        self.until = until
        self.leader = leader
        self.membership = membership
        self.budget = budget
        """How many servers may be down at once (default: a minority of ``servers``);
        with membership changes, what every current and pending configuration can
        spare."""
        self.interval = interval
        self.crashed: set[int] = set()
        self.paused: set[int] = set()
        self.dying: set[int] = set()
        """Nodes whose disk fails every fsync until their power goes."""
        self.doomed: set[int] = set()
        """Leaders whose power fails at their worst moment (``power``)."""
        self.actions = 0
        self.drift = drift
        sim.faults = network_faults(kinds, stale=stale)
        self._calm = NetworkFaults(reorder=sim.faults.reorder, max_delay=sim.faults.max_delay)
        self._calm_disk = sim.disk_latency
        if "disk" in kinds:
            sim.torn_writes = True
            sim.fsync_fault = self._fsync_fault
            sim.disk_latency = (0.001, 0.01)  # a slow disk: more writes caught unsynced
        if "power" in kinds:
            sim.fsync_observers.append(self._on_fsync)
        self.rate_bound = rate_bound(clock_drift)
        # Within-bound drift, always: half the bound, or all of it with ``clock``.
        spread = self.rate_bound * (0.999 if "clock" in kinds else 0.5)
        for node in self.servers if drift else ():
            sim.set_clock_rate(node, 1.0 + sim.rng.uniform(-spread, spread))
        if not drift:
            kinds = self.kinds = kinds - {"clock", "clock-unsafe"}
        acting = {"partition", "crash", "pause", "disk", "power", "clock", "clock-unsafe"}
        if kinds & (acting | {"wipe-init", "transfer"}):
            sim.call_at(self._next_time(), self._act)
        if membership is not None and "membership" in kinds:
            # Changes on their own schedule, among every other fault.
            sim.call_at(sim.now + sim.rng.uniform(0.02, 0.15), self._change_membership)
        sim.call_at(until, self.heal_all)

    def _minority(self) -> int:
        """How many servers may be down (or without state) at once."""
        if self.budget is not None:
            return self.budget()
        return self.minority

    def _next_time(self) -> float:
        return self.sim.now + self.sim.rng.uniform(*self.interval)

    def _act(self) -> None:
        sim, rng = self.sim, self.sim.rng
        if sim.now >= self.until:
            return
        choices: list[str] = [k for k in ("partition", "crash", "pause") if k in self.kinds]
        if "disk" in self.kinds:
            choices += ["crash", "corrupt", "full"]
        if self.kinds & {"clock", "clock-unsafe"}:
            choices.append("clock")
            if rng.random() < 0.5:
                self._aim_clocks()  # keep the leader's clock slow as leaders change
        if kinds_wipe_init(self.kinds):
            choices.append("wipe-init")
        if "power" in self.kinds:
            choices += ["power", "power"]  # as often as a crash with disk faults
        if "transfer" in self.kinds and self.transfer is not None:
            choices += ["transfer", "transfer"]  # as often as a crash is with disk faults
        kind = rng.choice(choices)
        minority = self._minority()
        if kind == "partition":
            self._partition()
        elif kind == "crash":
            down = self._down()
            # A node whose disk is dying stays down until its machine lost power.
            restartable = sorted(self.crashed - self.dying)
            if restartable and (len(down) >= minority or rng.random() < 0.5):
                self._restart(rng.choice(restartable))
            elif len(down) < minority:
                candidates = [n for n in self.servers if n not in down]
                if "disk" in self.kinds:
                    # Power fails where it hurts: prefer a node with writes in flight.
                    dirty = [n for n in candidates if sim.writes_in_flight(n)]
                    candidates = dirty or candidates
                node = rng.choice(candidates)
                self.crashed.add(node)
                lying = self._drive_lies(node)
                sim.crash(node)
                if lying:
                    sim._log("lost-writes", node, None, lose_acknowledged(sim.procs[node].fs, rng))
        elif kind in ("corrupt", "wipe-init"):
            # A node still rebuilding (or bootstrapping after a wipe) has no trustworthy
            # state yet: it counts as down, so no more than a minority ever loses its
            # acceptor state at once.
            rebuilding = {n for n in self.servers if sim.rebuilding(n)}
            down = self._down() | rebuilding
            if len(down) < minority:
                candidates = [n for n in self.servers if n not in down]
                node = rng.choice(candidates)
                leader = self.leader()
                if leader in candidates and rng.random() < 0.5:
                    node = leader  # where it hurts: the newest votes, an election
                sim.crash(node)
                if kind == "corrupt":
                    self.crashed.add(node)
                    sim._log("corrupt", node, None, damage_disk(sim.procs[node].fs, rng))
                else:
                    # The operator wipes the disk and restarts the node with the very
                    # command line it had (the bootstrap flag included) at once.
                    sim.wipe_init(node)
                    self._restart(node)
        elif kind == "clock":
            self._change_clock()
        elif kind == "power":
            rebuilding = {n for n in self.servers if sim.rebuilding(n)}
            down = self._down() | rebuilding
            leader = self.leader()
            if len(down) < minority and leader in self.servers and leader not in down:
                self._doom(leader)
        elif kind == "transfer":
            leader = self.leader()
            others = [n for n in self.servers if n != leader]
            if leader is not None and self.transfer is not None and others:
                target = rng.choice(others)  # (membership changes can leave one server)
                self.transfers += 1
                sim._log("transfer", leader, target, None)
                self.transfer(leader, target)
        elif kind == "full":
            down = self._down()
            if len(down) < minority:
                node = rng.choice([n for n in self.servers if n not in down])
                fs = sim.procs[node].fs
                fs.capacity = fs.used() + rng.randint(0, 4096)
                self.crashed.add(node)  # it stops at its next write; it counts as down
                sim._log("disk-full", node, None, fs.capacity)
        elif kind == "pause":
            down = self._down()
            if len(down) < minority:
                node = rng.choice([n for n in self.servers if n not in down])
                self._pause(node, rng.uniform(0.05, 0.3))
        self.actions += 1
        sim.call_at(self._next_time(), self._act)

    def _change_membership(self) -> None:
        if self.sim.now >= self.until or self.membership is None:
            return
        self.membership()
        self.sim.call_at(self.sim.now + self.sim.rng.uniform(0.02, 0.15), self._change_membership)

    def _down(self) -> set[int]:
        """The nodes that count as down for the minority rule (doomed leaders too)."""
        return self.crashed | self.paused | self.doomed

    def _doom(self, node: int) -> None:
        """``power``: the leader loses power at its worst moment (``_worst_moment``),
        or ``POWER_WITHIN`` from now if none comes; it counts as down from now on."""
        self.doomed.add(node)
        self.sim.call_at(self.sim.now + POWER_WITHIN, lambda: self._blip(node, False))

    def _on_fsync(self, node: int) -> None:
        if node in self.doomed and self._worst_moment(node):
            self.sim.call_at(self.sim.now, lambda: self._blip(node, True))

    def _worst_moment(self, node: int) -> bool:
        """True if ``node`` alone has voted for its newest slot: its own vote is
        durable (an fsync just completed), its Accept of that slot is still on the way
        to every peer, and every peer has learned every slot before it."""
        sim = self.sim
        peers = {n for n in self.servers if n != node}
        accepts = [(d, m) for _, d, m in sim.in_flight(node) if isinstance(m, Accept)]
        if not accepts:
            return False
        newest = max(m.slot for _, m in accepts)
        if not peers <= {d for d, m in accepts if m.slot == newest}:
            return False
        for peer in peers:
            replica = getattr(sim.node(peer), "replica", None)
            if replica is None or replica.first_unchosen != newest:
                return False
        return True

    def _blip(self, node: int, worst: bool) -> None:
        """The power blip: the machine goes down (what it had in flight is lost, held
        in the network or delivered: ``NetworkFaults.crash_lost``, ``crash_held``), its
        disk is damaged (``POWER_DAMAGE``), and it comes back ``POWER_REBOOT`` later."""
        sim, rng = self.sim, self.sim.rng
        if node not in self.doomed:
            return
        self.doomed.discard(node)
        if sim.now >= self.until or not sim.procs[node].up or node in self.crashed:
            return
        why = "the worst moment" if worst else "no worst moment came"
        sim._log("power-blip", node, None, why)
        sim.crash(node)
        self.crashed.add(node)
        if rng.random() < POWER_DAMAGE:
            sim._log("corrupt", node, None, damage_disk(sim.procs[node].fs, rng))

        def reboot() -> None:
            if node in self.crashed and node not in self.dying and sim.now < self.until:
                self._restart(node)

        sim.call_at(sim.now + rng.uniform(*POWER_REBOOT), reboot)

    def _partition(self) -> None:
        sim, rng = self.sim, self.sim.rng
        if sim.blocked and rng.random() < 0.4:
            sim.heal()
            return
        sim.heal()
        nodes = list(self.servers)
        if len(nodes) < 2:
            return  # (membership changes can leave a single server)
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

    def _drive_lies(self, node: int) -> bool:
        """Whether ``node``'s drive loses acknowledged writes at this power loss: with
        ``disk``, every other time, but never while that could leave a majority without
        trustworthy acceptor state (a node that finds its log damaged rebuilds)."""
        if "disk" not in self.kinds or self.sim.rng.random() >= LYING_DRIVE_CHANCE:
            return False
        rebuilding = {n for n in self.servers if self.sim.rebuilding(n)}
        others = (self.crashed | self.paused | rebuilding) - {node}
        return len(others) < self._minority()

    def _change_clock(self) -> None:
        """Clock rates change. Mostly aimed where it hurts a lease: the leader's clock
        at the slow end of the range and every other clock at the fast end (the
        leader's lease then lasts longest, the grants behind it run out first);
        otherwise one clock anywhere in the range."""
        sim, rng = self.sim, self.sim.rng
        off = self._clock_offset()
        if not (rng.random() < 0.7 and self._aim_clocks()):
            sim.set_clock_rate(rng.choice(self.servers), 1.0 + rng.uniform(-off, off))

    def _clock_offset(self) -> float:
        if "clock-unsafe" in self.kinds:
            return self.sim.rng.uniform(0.3, 0.6)  # a factor of 1.9 to 4 between clocks
        return self.rate_bound * self.sim.rng.uniform(0.8, 0.999)

    def _aim_clocks(self) -> bool:
        """The leader's clock to the slow end, every other to the fast end; False if
        there is no leader to aim at."""
        leader = self.leader()
        if leader not in self.servers:
            return False
        off = self._clock_offset()
        for node in self.servers:
            self.sim.set_clock_rate(node, 1.0 - off if node == leader else 1.0 + off)
        return True

    def _pause(self, node: int, duration: float) -> None:
        self.paused.add(node)
        duration = min(duration, self.until - self.sim.now)
        self.sim.pause(node, duration)

        def resumed() -> None:
            self.paused.discard(node)

        self.sim.call_at(self.sim.now + duration, resumed)

    def _restart(self, node: int) -> None:
        sim = self.sim
        self.crashed.discard(node)
        self.dying.discard(node)
        sim.procs[node].fs.capacity = None  # the operator made room
        if sim.procs[node].up:
            return
        if self.kinds & {"clock", "clock-unsafe"} and sim.rng.random() < 0.5:
            # The machine rebooted: its monotonic clock starts over from anywhere.
            sim.reboot_clock(node, sim.rng.uniform(0.0, 1000.0))
        sim.restart(node)

    def _fsync_fault(self, node: int, path: Path) -> bool:
        if node in self.dying:
            return True
        sim = self.sim
        if node not in self.servers or sim.now >= self.until or sim.rng.random() >= 0.01:
            return False
        minority = self._minority()
        if len(self._down()) >= minority:
            return False
        # The disk is dying: this and every later fsync fail until the power goes.
        self.crashed.add(node)
        self.dying.add(node)
        sim._log("disk-dying", node, None, str(path))

        def power_off() -> None:
            if node in self.dying:
                self.dying.discard(node)
                sim.crash(node)

        sim.call_at(sim.now + sim.rng.uniform(0.005, 0.05), power_off)
        return True

    def heal_all(self) -> None:
        """End every fault: heal, restart the crashed, resume the paused, calm the net."""
        sim = self.sim
        sim.heal()
        sim.resume_all()
        self.paused.clear()
        self.doomed.clear()
        sim.fsync_fault = None
        for node in sorted(self.dying):
            sim.crash(node)  # the dying disk's machine goes down before it restarts
        self.dying.clear()
        for node in self.servers:
            sim.procs[node].fs.capacity = None
            self._restart(node)  # also a node whose storage stopped it
        self.crashed.clear()
        sim.faults = self._calm
        sim.disk_latency = self._calm_disk


def damage_disk(fs: SimFileSystem, rng: random.Random) -> str:
    """Damage a crashed node's data directory; return what was done.

    A bit flip or a lost (zeroed) sector lands among the newest WAL records but never
    in the very last one (damage there looks exactly like a torn write, and the WAL
    cannot tell them apart: see ``storage/wal.py``); or a bit flips in the newest
    snapshot; or the WAL segments, or the whole data directory, are wiped. The damage
    itself is the fault: the disk's injected fsync failures do not apply to it.
    """
    hook, fs.fsync_fault = fs.fsync_fault, None
    try:
        return _damage(fs, rng)
    finally:
        fs.fsync_fault = hook


def lose_acknowledged(fs: SimFileSystem, rng: random.Random) -> str:
    """What a drive that acknowledged flushes before they reached the media, and wrote
    them back out of order, leaves of a crashed node's newest WAL segment: the newest
    record reached the media, a run of the records acknowledged just before it did not
    (zeros), mostly only the one before it; return what was lost.

    This is the damage that real power losses do to a log (the newest writes are the
    ones still in the drive's cache), limited to what a checksummed log can detect: an
    intact record follows the loss. A lost newest record could not be told from a torn
    write (see ``storage/wal.py``), and no log survives that. Recovery must see the
    damage and rebuild; one that skips the damaged records forgets the newest votes.
    """
    segments = _wal_segments(fs)
    if not segments:
        return "nothing lost"
    path = DATA_DIR / segments[-1]
    offsets = record_offsets(fs.read_bytes(path))
    if len(offsets) < 2:
        return "nothing lost"
    first = len(offsets) - 2
    while first > 0 and rng.random() < 0.3:
        first -= 1
    start, end = offsets[first], offsets[-1]
    fs.zero(path, start, end - start)
    return f"lost {len(offsets) - 1 - first} record(s) of {path.name} at {start}-{end}"


def _wal_segments(fs: SimFileSystem) -> list[str]:
    if not fs.is_dir(DATA_DIR):
        return []
    return sorted(n for n in fs.listdir(DATA_DIR) if n.startswith("wal-") and n.endswith(".log"))


def _damage(fs: SimFileSystem, rng: random.Random) -> str:
    roll = rng.random()
    if not fs.is_dir(DATA_DIR):
        return "nothing to damage"
    if roll < 0.15:
        fs.wipe(DATA_DIR)
        return "wiped the data directory"
    if roll < 0.3:
        for name in fs.listdir(DATA_DIR):
            if name.startswith("wal-"):
                fs.unlink(DATA_DIR / name)
        fs.fsync_dir(DATA_DIR)
        return "wiped the WAL"
    if roll < 0.45 and fs.is_dir(SNAPSHOT_DIR):
        snaps = sorted(n for n in fs.listdir(SNAPSHOT_DIR) if n.endswith(".snap"))
        if snaps:
            path = SNAPSHOT_DIR / snaps[-1]
            offset = rng.randrange(fs.size(path))
            fs.flip_bit(path, offset, rng.randrange(8))
            return f"flipped a bit of {path.name} at {offset}"
    segments = sorted(
        n for n in fs.listdir(DATA_DIR) if n.startswith("wal-") and n.endswith(".log")
    )
    if not segments:
        return "nothing to damage"
    path = DATA_DIR / segments[-1]
    offsets = record_offsets(fs.read_bytes(path))
    if len(offsets) < 2:
        start, end = 0, offsets[0] if offsets else fs.size(path)  # the segment header
    else:
        k = rng.randrange(max(0, len(offsets) - 8), len(offsets) - 1)
        start, end = offsets[k], offsets[k + 1]
    offset = rng.randrange(start, end) if end > start else start
    if rng.random() < 0.5 or len(offsets) < 2:
        fs.flip_bit(path, offset, rng.randrange(8))
        return f"flipped a bit of {path.name} at {offset}"
    # A lost sector: zeros from its start, but never into the last record.
    sector = max(offset - offset % SECTOR, SEGMENT_HEADER_SIZE)
    length = min(sector + SECTOR, offsets[-1]) - sector
    fs.zero(path, sector, length)
    return f"zeroed {length} bytes of {path.name} at {sector}"
