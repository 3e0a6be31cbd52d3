"""The lease monitor: a lease must be backed, for as long as it runs, by acceptors
that promise nobody else.

Theory of operation
-------------------
A leader serves reads from its own state while its lease runs because no other leader
can exist before the lease ends. Whether breaking that shows up as a stale read in a
client history is luck: a write must complete at a new leader, and a client must then
read the same key at the old one, before the lease ends, while the old leader has no
proposal of its own in flight (its read index would hold the read back). So the
simulator checks the promise itself, omnisciently, as the
:class:`~pyxos.check.invariants.ChosenMonitor` checks choice on the acceptors. At every
message a server sends, for every live leader whose lease still runs *by its own
clock*:

1. **Bound acceptors.** The acceptors that can promise nobody but that leader right now
   (the leader itself; a node that is down or rebuilding; a node whose own clock has
   not yet reached the end of a grant it made to that leader, or of the hold every node
   places on promises when it starts) must meet every phase-1 quorum. Otherwise another
   candidate could complete phase 1 at once: the lease outlives the grants behind it.
   This is the lease's own proof obligation (a leader's lease ends before the grants of
   the quorum that confirmed it, given the bound on clock rates), so a margin that does
   not cover the drift fails here as soon as a leader stops renewing, without waiting
   for an election to land in the gap.
2. **One leadership.** No live leader of a higher ballot exists. (A leader of a
   *lower* ballot is a deposed one that has not heard yet; it holds no lease that the
   higher one's election could have broken.)

Both read each node's own clock (``Simulator.local_time``), so drifting clocks are held
to exactly the bound the replicas assume.
"""

from __future__ import annotations

from collections.abc import Iterable

from pyxos.check.invariants import Violation
from pyxos.core.messages import Message
from pyxos.core.quorum import QuorumSystem
from pyxos.core.replica import Replica, Role
from pyxos.sim.world import Simulator

__all__ = ["LeaseMonitor"]


class LeaseMonitor:
    """Raises a ``lease`` :class:`Violation` when a running lease is not safe."""

    def __init__(self, sim: Simulator, quorum: QuorumSystem, servers: Iterable[int]) -> None:
        self.sim = sim
        self.quorum = quorum
        self.servers = servers if isinstance(servers, list) else sorted(servers)
        """Every server id (a list the harness may grow as nodes join)."""
        self.checks = 0

    def observe(self, src: int, msg: Message) -> None:
        """A send observer (``Simulator.send_observers``): check at every server send."""
        del msg
        if src not in self.servers:
            return
        sim = self.sim
        replicas: dict[int, Replica | None] = {}
        leaders: list[tuple[int, Replica]] = []
        for i in self.servers:
            replica = getattr(sim.node(i), "replica", None)
            replicas[i] = replica if isinstance(replica, Replica) else None
            if isinstance(replica, Replica) and replica.role is Role.LEADER:
                leaders.append((i, replica))
        for i, held in leaders:
            local = sim.local_time(i)
            if local >= held.lease_until:
                continue
            self.checks += 1
            free = [a for a in self.servers if not self._bound(a, i, replicas[a])]
            # With membership changes: every configuration the leader knows governs
            # slots from its first unchosen one on (current and pending) must be bound.
            configs = [c for _, c in held.configurations()]
            if any(c.is_phase1_quorum(free) for c in configs):
                raise Violation(
                    "lease",
                    f"node {i} (ballot {held.ballot}) holds a lease for "
                    f"{held.lease_until - local:.4f}s more of its clock, but nodes {free} "
                    "could promise another candidate now: the grants behind it ran out",
                )
            for j, other in leaders:
                if other.ballot > held.ballot:
                    raise Violation(
                        "lease",
                        f"node {i} (ballot {held.ballot}) holds a lease for "
                        f"{held.lease_until - local:.4f}s more of its clock while node {j} "
                        f"leads in ballot {other.ballot}: a read served now may be stale",
                    )

    def _bound(self, acceptor: int, leader: int, replica: Replica | None) -> bool:
        """True if ``acceptor`` can promise nobody but ``leader`` right now."""
        if acceptor == leader or replica is None or replica.rebuilding:
            return True  # down: it restarts with the hold on
        local = self.sim.local_time(acceptor)
        grants = replica.lease_grants
        return grants.get(leader, float("-inf")) > local or grants.get(0, float("-inf")) > local
