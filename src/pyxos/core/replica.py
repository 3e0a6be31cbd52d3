"""The Multi-Paxos replica: a sequence of Paxos instances with one stable leader.

Theory of operation
-------------------
Every replica is proposer, acceptor and learner for every slot of one log. Its
acceptor is the single-decree :class:`~pyxos.core.acceptor.Acceptor`: one promise
covers every slot, so a leader runs phase 1 once for all slots from its first unchosen
slot and then only phase 2 per slot.

Roles and transitions (one ``_step_<role>`` each):

- **Follower.** Accepts what the leader sends; answers Accept with Accepted and
  Commit with nothing (it learns from it). With no word from a leader for a randomized
  election timeout it asks for a **pre-vote**: a PreVote changes no state, and peers
  grant it only if they too have heard from no leader lately. Only with a quorum of
  grants does it become a candidate, so a node that was cut off and returns cannot
  raise the promises of a healthy cluster and depose its leader.
- **Candidate.** Picks a ballot above every ballot seen and above its own promise,
  promises it to itself (durable before the Prepare leaves) and sends Prepare for all
  slots from its first unchosen slot. With a phase-1 quorum of Promises it becomes
  leader: each slot from its first unchosen one is re-proposed with the value of the
  highest ballot any promiser accepted, and slots nobody reported become no-ops
  (``b""``) up to the highest reported slot. Slots a promiser has compacted away (below
  its ``log_start``) are the only exception: they are chosen, and the phase-1 reports
  are incomplete for them, so they are fetched, never re-proposed. (Fetching merely
  *known-chosen* slots instead would deadlock when the only node that knew crashed.)
- **Leader.** Proposes each batch of commands (one opaque value) in the next slot,
  keeping at most ``window`` slots in flight; accepts it itself (durable before it
  counts its own vote: its own Accepted comes back through the driver after the fsync)
  and sends Accept. A slot is chosen on a phase-2 quorum of Accepted for the leader's
  ballot. The leader's first unchosen slot rides on every Accept and on heartbeat
  Commits. Unacknowledged Accepts are resent on every heartbeat. A higher ballot in a
  Nack, Accept, Commit or Prepare makes it step down.

Learning (the rule that a commit index alone is not enough): a Commit(b, c) tells a
follower that every slot below ``c`` is chosen. The follower marks slot ``s`` chosen
only if its acceptor accepted ``s`` *in ballot b*, because then it holds the value
``b``'s leader proposed, which is the chosen one. Any other slot below ``c`` is fetched
(Fetch → Decided) from the leader. Chosen values are emitted in ``Ready.committed`` in
slot order, each exactly once per incarnation. Learning costs O(new information) per
message, however far behind the follower is: per ballot it keeps the slots it accepted
in that ballot and has not learned yet (a heap), and the highest commit point that
ballot announced; a Commit pops only the slots it newly covers, an Accept checks only
its own slots. (Scanning the whole gap for every message made a node that restarted
far behind spend all its time there, and never catch up under load.)

Catch-up. A follower that knows of chosen slots it lacks (``commit_hint``) asks a peer
for all of them (``Fetch(slot, end)``). The peer answers with a stream of up to
``fetch_window`` Decided messages (each at most ``fetch_batch`` slots and about
``fetch_bytes`` bytes), every one of them naming where the whole reply ends; when the
first message of a reply arrives the follower asks the same peer for what follows, so
one reply is always in flight while the previous one is applied. A reply that stalls
is re-asked after a timeout, from the first slot still missing, maybe of another peer.
When the gap is large, or the peer compacted past it, the service layer answers with
a snapshot instead (``statemachine.service``).

A node that is far behind does not become leader: its PreVote carries its first
unchosen slot, and a peer that has learned more than ``window`` slots beyond it refuses
(the most advanced node a quorum can reach is never refused, so an election still
succeeds). Otherwise its phase 1 would start at its own first unchosen slot and make
the new leader re-propose the whole gap: the length of an election would depend on how
far behind the node that happened to time out first was.

Linearizable reads (read-index, as in Raft's thesis): a read arriving at the leader is
tagged with the read index ``next_slot`` (every slot the leader has proposed, its
re-proposals after election included) and a probe number; under a lease with
``max(first_unchosen, read_floor)`` instead (``read_floor``: the end of the slots
promisers reported or compacted), as every write acknowledged before the read arrived
is below it once the leader is settled (see "Membership"): this leader answers a write
only once it is chosen and applied, and what an earlier ballot chose sits in a slot that
the phase-1 quorum of its configuration reported (re-proposed below ``read_floor``) or
compacted (fetched); writes still in flight were acknowledged to nobody
(docs/membership.md, "Leases and reads"). The next heartbeat carries
the probe; each acceptor that has promised nothing above the leader's ballot answers
ReadAck. With a phase-2 quorum of acks (the leader's own included) no other leader
can have completed phase 1 before the probe went out, so every write acknowledged
before the read arrived sits below the read index. Once every slot below it is chosen
and applied, ``Ready.reads`` releases the read to be served from local state. Reads
pending when the leader steps down are refused (the client retries elsewhere).

Leader transfer (``transfer_leadership(target)``; docs/architecture.md, *Leader
transfer*). The leader stops proposing new slots (they queue), and on every heartbeat
asks the target (``TransferRequest(b, index)``, ``index`` its first unchosen slot) to
say when it has learned every slot below ``index``; the target fetches what it lacks
and answers ``TransferReady``. Once its window is empty and the target is caught up,
the leader **abdicates**: it ends its lease and will never extend it again in this
ballot (acknowledgements of earlier probes included), stops its heartbeats, and sends
``TimeoutNow(b, target)`` to every peer. The target runs phase 1 at once, without a
pre-vote; every acceptor drops the lease it granted to ballot ``b`` and grants none to
``b`` again (a grant to a later ballot of the same node stays), so the target's
Prepare is not refused for up to a lease. Dropping the grant is safe because the lease
it protected no longer exists: the leader ended it before the message left. The leader
steps down when the target's higher ballot reaches it. If the target has not caught
up within ``4`` election timeouts, or has not won within one election timeout after
``TimeoutNow``, the leader resumes: it proposes its queue and heartbeats again, with
read-index rounds but no lease for the rest of its ballot. The outcome is in
``transfer_result``. A *preferred leader* (``preferred_leader``) is handed the
leadership by any other leader once it acknowledges the leader's messages (with one
election timeout to catch up, retried every ten), and draws its election timeout from
the lower half of the range, so it tends to run first.

With membership, the target must be a voter of every configuration in reach (the one
governing the leader's first unchosen slot and the pending ones): a learner, a removed
or unknown node, a voter the pending change removes, and one it has not made a voter
yet are refused with the reason (``transfer_refusal``), and so is a transfer while a
change is proposed but not chosen (its entry would wait in the queue and be dropped
when the leader steps down); the target is checked again before the leader abdicates
(a change re-proposed from an earlier ballot may be chosen meanwhile). Caught up
means: it has learned every slot below the leader's first unchosen one, so it knows
the configuration of every slot the leader could propose in. A leader that a chosen
change removes **hands over** before the change takes over: it transfers to a recently
heard voter of every configuration in reach (retried while the change is pending); if
the slots in flight bring the change into force first, it steps down there and sends
``TimeoutNow`` to that target if it had answered ``TransferReady`` (its lease ends
for good as it steps down). A new leader fills the slots up to a pending change's
takeover with no-ops, so an idle cluster still brings it into force.

Rebuilding (a node whose acceptor state is corrupt or was wiped). Such a node must
never contradict a promise or an acceptance it no longer remembers. It starts in
``rebuilding``: it neither promises, accepts, grants pre-votes nor runs for leader; it
only learns. It asks *every* peer (``RebuildQuery``) for its promised ballot and the
last slot it accepted, and each peer, before it answers, **fences** the asker: it
durably records that it will promise and accept no ballot the asker owns (the answer
leaves only after that fsync). Once every peer has answered and the node has learned
every slot up to the highest last slot reported, it raises its promise to the maximum
promise reported, ``F``, and treats the slots below its first unchosen one as
compacted: the service layer first makes a snapshot of them durable
(``rebuild_caught_up``, then ``finish_rebuild``), so a new leader fetches those slots,
from this node's snapshot if need be, instead of trusting its empty report for them.
Then it votes again, and asks its peers to lift the fence down to ``F``
(``FenceLift``): they keep refusing its ballots up to ``F`` and accept the rest.

Why that bounds what the lost state held. Every ballot this node could have promised
was first promised durably by its own proposer; one of ours that reached phase 2 was
also promised by a phase-1 quorum, which holds a peer that kept its state: all are at
most ``F``. A slot it could have accepted in another leader's ballot was first
accepted by that leader, a peer, so it is at most that peer's last slot. A slot it
accepted in one of its *own* ballots is the exception: as leader it accepted the slot
before its Accepts reached anybody, and they may still be in flight when its peers
answer. Were one accepted after the answers, it would complete a quorum with the vote
this node forgot, for a slot its rebuild did not cover, and a later leader, to whom
nobody reports that slot, would choose another value there (the simulator on the real
WAL found this: leader 2's Accept of slot 12 delayed 92 ms across its own wipe and
rebuild; ``tests/test_rebuild_fence.py`` scripts it). The fence closes it: a vote of
one of our old ballots at a peer was cast before that peer's answer (then the slot is
at most its last slot, and we learn the slot before we vote) or is refused, for good,
as the ballot is at most ``F``. Above every reported last slot, our old ballots hold
votes only at nodes that lost their state, which contain no phase-2 quorum: nothing
was, or ever will be, chosen there in them. Our old ballots above ``F`` never reached
phase 2 (no Accept of theirs exists); a late Prepare of one only raises a promise.

The fence's bookkeeping. Fences are per query: ``nonce`` is random per incarnation,
a peer holds the nonces of fences still up against each owner, and a lift names the
fence it lifts. So a late lift of an earlier incarnation never lowers a later one's
fence, and an answer to an earlier incarnation's query is ignored (its fence may have
been lifted since by the incarnation it belonged to). A peer that is rebuilding fences
too (it will vote again one day), and a fence must outlive its holder's disk:
otherwise a peer wiped after answering could rebuild with a promise equal to the old
ballot and accept its late Accept. A node that rebuilds adopts the fences its peers
report (``RebuildInfo.fences``). That alone is not enough: the fenced node X may not
have asked the other peers yet when they answer the wiped one, P (5 nodes: X's old
leader ballot promised by X, P and R; P and R answer X, are wiped one after the other
and rebuild from peers X has not asked; both accept X's late Accept, a quorum with X's
forgotten vote, and X's rebuild, which counts their earlier answers, misses the slot;
``tests/test_rebuild_fence.py``). But P hears from X itself, which every rebuild
waits for. If X answers that it is rebuilding, P fences X's ballots up to the promise
P votes with: the fence P lost guarded the ballots of X's incarnations before the one
that asked P, all of them over before P's wipe; those that reached phase 2 were
promised by a phase-1 quorum by then, so by a peer that answered P's rebuild, and are
at most that promise (a later incarnation asks P again, and meets the fence P keeps
on its new disk). If X votes, its answer carries a lifted fence against its own
ballots up to its ``fence_bound``, which bounds every ballot of its earlier
incarnations. A lift can be lost, and the node can crash before it
sends one: a peer that refuses a ballot, or a pre-vote, of a node it still fences up
says so (``Fenced``), and a node that votes answers with a lift to ``fence_bound``: the
promise it started voting with, which is at least ``F`` (every fence against it
belongs to its own finished rebuild or an earlier incarnation's) and below every
ballot it runs. A ballot refused by a lifted fence gets a Nack carrying the bound, so
its owner picks above it. The bootstrap path is the same (its ``F`` is ``ZERO`` when
every answer is fresh: none of our ballots can have reached phase 2).

A rule that waits
only for one new phase 1 after the rebuild is not enough on its own: a ballot promised
before the wipe can be higher than that new phase's ballot and still be in flight.
Five nodes A B C D X: C runs phase 1 for b_old with promises from C, X and D (D's not
yet sent); X's disk is wiped. A runs phase 1 for b_new < b_old with A, B and D (D
promises b_new first, then b_old) — a full new phase 1 after X's wipe, so X votes
again. A's Accept(b_new, v_a) is accepted by A, B and X: v_a is chosen. C, whose phase
1 saw nothing accepted, sends Accept(b_old, v_c): C, D and X accept it (b_old is above
everything they promised): v_c is chosen too. X's forgotten promise of b_old is the
hole; C's own durable promise of b_old, which pyxos asks every peer for, closes it.
The price of this rule: a rebuild waits until every peer is reachable. Peers
that are rebuilding too answer that they are, and bound nothing; a rebuild finishes
without their figures as long as the nodes without state contain no quorum (every
ballot that reached phase 2 was then promised, and every chosen slot accepted, by a
node that kept its state).

Losing a majority. When the nodes known to have lost their state (this one, and the
peers that answer that they are rebuilding or bootstrapping) contain a phase-1 or a
phase-2 quorum, no rebuild can ever finish: what a quorum promised or accepted may
survive nowhere. The replica then sets ``majority_lost`` (cleared if a later answer
shrinks that set) so the driver can say so; it never votes its way out by itself.

Bootstrapping (``bootstrapping=True``: the node was started with the bootstrap flag on
an empty disk). The disk cannot tell a brand-new node from a member whose disk was
wiped and which an operator restarted with the command line it was first started
with. So a bootstrapping node starts like a rebuilding one (no vote, learning only)
and asks every peer (``RebuildQuery``) whether it has ever held state: ``fresh`` in
``RebuildInfo`` is true for a peer that is bootstrapping too, or a member that has
promised, accepted and learned nothing. If *every* peer answers fresh, the cluster is
new: the node's empty state is the truth, and it votes at once (``Persist.rebuilt =
0`` makes that durable). If any peer answers that it holds state, or that it is
rebuilding, the cluster exists, and the node rebuilds exactly like a wiped one.

Why every peer's fresh answer makes the empty state true. Suppose this node's lost
disk had promised or accepted in some ballot ``b``. ``b``'s proposer promised ``b``
durably before its Prepare left (its own promise comes first), so that proposer
held state before the wipe, and hence before it answered this node's query (the query
left after the restart that followed the wipe). A peer's state only grows until its
own disk is lost, so the proposer can answer fresh only if it lost its state too; and
the same holds for every peer whose vote counted for ``b`` with ours. A proposer that
was this node itself needs a quorum besides; a quorum of nodes that all lost their
state is the failure no protocol survives (``majority_lost``), and everything else
leaves at least one peer that answers with state. Hence all peers fresh: nothing
this node could have promised or accepted was ever promised or accepted by a live
quorum, and an empty acceptor is a state it may truthfully be in.

A quorum of fresh answers is not enough, not even a quorum of fresh *peers*. Five
nodes X A B C D: D runs phase 1 for ``b`` and X promises ``b``; D's Prepare is still on
its way to A. X is wiped and restarted with the bootstrap flag; A, B and C answer
fresh, D is slow to answer. Counting those three, X votes with an empty state. C then
runs phase 1 for ``b' < b`` with C, X and B and chooses ``v'`` with them; A promises
``b``, so D's phase 1 completes with A and the promise X forgot, sees nothing
accepted, and gets ``v`` accepted by D, A and X: two values chosen. Waiting for D's
answer closes it: D holds its promise of ``b``. The price: a new cluster bootstraps
only once every node is up (the same price a rebuild pays).

Membership (docs/membership.md has the argument in full). The configuration (voters,
learners, quorum sizes) is chosen in the log: a value that starts with
``CONFIG_MAGIC`` is a configuration entry, and one chosen in slot ``s`` governs the
slots from ``s + alpha`` on (``core/membership.py``). Each slot is then single-decree
Paxos over the voters of the configuration that governs it, which depends only on
slots ``alpha`` or more below it. So a leader proposes in slot ``t`` only below
``first_unchosen + alpha`` (it knows ``t``'s configuration), counts Accepted for ``t``
among that configuration's voters only, and has a phase-1 quorum of it before it
proposes there: a candidate needs one of every configuration it knows of (the one in
force at its first unchosen slot and the pending ones); configurations chosen later
have their voters asked, with the same ballot, when their slots come into reach. A
leader takes no read index until it has proposed in every reported slot and holds all
those phase-1 quorums, and a lease needs a phase-2 quorum of every configuration in
reach (it ends when a configuration is chosen). Learners receive the log and are
never counted. An id that no configuration in force or pending names any more is
retired for good: peers answer what it sends as a member (runs, leads, rebuilds) with
``Removed``, and it never runs or leads again; it still answers Prepare and Accept,
since a new leader may need its vote for the slots before its removal took over. A
snapshot carries the configurations of the slots after it.

Forced recovery (``core/recovery.py``, docs/recovery.md): when a majority is lost for
good, an operator may make one survivor a one-node cluster. The server then calls
``force_configuration`` at startup: the new configuration (this node alone, a new
epoch) governs from there on, and the old cluster's ids are *disowned*: nothing they
send is taken, and what they send as members is answered with ``Removed``. The rest
is the ordinary phase 1 of a one-voter configuration: the node's own report makes it
re-propose, slot by slot, the value it accepted there, and no-ops in the gaps.

Invariants are written on the fields that carry them.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pyxos.core.acceptor import Acceptor
from pyxos.core.ballot import ZERO, Ballot
from pyxos.core.membership import (
    ConfigChangeError,
    Configuration,
    Membership,
    MembershipState,
    encode_config_entry,
    founding_configuration,
    is_config_entry,
    quorum_of_each,
)
from pyxos.core.messages import (
    Accept,
    Accepted,
    Commit,
    Decided,
    Entry,
    Fenced,
    FenceLift,
    Fetch,
    Message,
    Nack,
    Prepare,
    PreVote,
    PreVoteReply,
    Promise,
    ReadAck,
    RebuildInfo,
    RebuildQuery,
    Removed,
    TimeoutNow,
    TransferReady,
    TransferRequest,
)
from pyxos.core.quorum import QuorumSystem
from pyxos.core.ready import Fence, FenceState, Ready, Rng, Send

__all__ = ["NOOP", "Replica", "ReplicaConfig", "Role"]

NOOP = b""
"""The value a new leader proposes in a slot that no promiser reported."""


class Role(enum.Enum):
    """What a replica is doing for the log."""

    FOLLOWER = "follower"
    PRECANDIDATE = "precandidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    """Timing and pipelining of a replica (seconds, slots)."""

    election_timeout: tuple[float, float] = (0.15, 0.3)
    """A follower that hears no leader for a random time in this range runs (pre-vote)."""
    heartbeat_interval: float = 0.04
    """How often a leader sends Commit and resends unacknowledged Accepts."""
    window: int = 256
    """Slots a leader keeps in flight at most (pipelining)."""
    fetch_batch: int = 256
    """Chosen values sent in one Decided (and proposed in one Accept) at most."""
    fetch_bytes: int = 1 << 20
    """Bytes of values in one Decided or Accept, about (always at least one value)."""
    fetch_window: int = 16
    """Decided messages one Fetch is answered with at most (the reply streams)."""
    lease: float | None = None
    """Leader lease in seconds (None: the election timeout's minimum; 0: no lease, every
    read takes the read-index round)."""
    clock_drift: float = 0.1
    """Bound on the clock rate difference between nodes: the leader's lease ends this
    fraction earlier than the leases its acceptors hold for it."""

    @property
    def lease_seconds(self) -> float:
        """The lease an acceptor grants on each message from the leader."""
        return self.election_timeout[0] if self.lease is None else self.lease

    def __post_init__(self) -> None:
        lo, hi = self.election_timeout
        if not 0 < lo <= hi:
            raise ValueError(f"election_timeout must satisfy 0 < min <= max, got {lo}, {hi}")
        if not 0 < self.heartbeat_interval < lo:
            raise ValueError("heartbeat_interval must be positive and below the election timeout")
        if self.window < 1 or self.fetch_batch < 1 or self.fetch_window < 1:
            raise ValueError("window, fetch_batch and fetch_window must be >= 1")
        if self.fetch_bytes < 1:
            raise ValueError("fetch_bytes must be >= 1")
        if self.lease is not None and self.lease < 0:
            raise ValueError("lease must be >= 0")
        if not 0 <= self.clock_drift < 1:
            raise ValueError("clock_drift must lie in [0, 1)")


TRANSFER_CATCHUP_TIMEOUTS = 4
"""A transfer whose target has not caught up within this many (maximum) election
timeouts is given up, and the leader resumes."""


@dataclass(slots=True)
class _Transfer:
    target: int
    deadline: float
    abdicated: bool = False


@dataclass(slots=True)
class _InFlight:
    value: bytes
    acks: set[int]
    sent_at: float


class Replica:
    """One Multi-Paxos replica (pure; see the module docstring)."""

    def __init__(
        self,
        node_id: int,
        quorum: QuorumSystem,
        rng: Rng,
        *,
        config: ReplicaConfig = ReplicaConfig(),
        promised: Ballot = ZERO,
        accepted: Iterable[Entry] = (),
        now: float = 0.0,
        rebuilding: bool = False,
        rebuilt_from: int = 0,
        bootstrapping: bool = False,
        fences: Mapping[int, FenceState] | None = None,
    ) -> None:
        self._node_id = node_id
        self.rng = rng
        self.config = config
        founding = founding_configuration(quorum, config.window)
        self.membership = Membership(founding)
        """The configuration timeline (see "Membership" above): the founding
        configuration governs slot 0 on until the log (or a snapshot) says otherwise."""
        self.quorum: Configuration = founding
        """The configuration governing ``first_unchosen`` (kept current)."""
        self.members: tuple[int, ...] = ()
        """Every node of the current and pending configurations (voters and learners)."""
        self.peers: tuple[int, ...] = ()
        """``members`` but this node: whom broadcasts go to."""
        self.removed: str | None = None
        """Why this node no longer belongs to the cluster (None: it does, or may yet
        join). A removed node never runs or leads again (it still answers for the
        slots before its removal); its id is never reused."""
        self.config_change: int | None = None
        """The epoch of the configuration change this leader proposed and has not yet
        seen chosen (one change in flight at a time)."""
        self.refused_removed = 0
        """Messages from removed nodes refused (each answered with ``Removed``)."""
        self.disowned: frozenset[int] = frozenset()
        """Ids of the cluster before a forced recovery (``force_configuration``): nothing
        they send is taken, and what they send as members is answered with ``Removed``."""
        self.disowned_reason = ""
        """What a disowned node is told (``Removed.reason``)."""
        self.acceptor = Acceptor(promised, accepted)
        self.now = now
        self.preferred_leader = 0
        """The node that should lead when it can (0: none): it draws shorter election
        timeouts, and any other leader hands it the leadership once it answers."""

        self.role = Role.FOLLOWER
        self.ballot: Ballot = ZERO
        """Our ballot while candidate or leader. Invariant: ``ballot.node == node_id``."""
        self.highest_seen: Ballot = max(promised, ZERO)
        """Highest ballot heard of; our next ballot is above it."""
        self.leader = 0
        """Who we believe leads (0: nobody known)."""
        self.leader_contact = -1.0e9
        """When we last heard from the leader (or, as leader, were one)."""
        self.election_deadline = now + self._election_timeout()

        self.chosen: dict[int, bytes] = {}
        """slot -> chosen value, for slots not yet emitted and those kept to serve
        Fetch. Invariant: only values known chosen (quorum in one ballot, or reported
        chosen by a peer that knew) are here."""
        self.first_unchosen = 0
        """Every slot below is chosen and was emitted in ``Ready.committed``."""
        self.log_start = 0
        """Chosen values below this slot are no longer kept (compacted)."""
        self.commit_hint = 0
        """Highest first-unchosen slot a leader told us about."""
        self.fetch_due = now
        """When a Fetch with no answer counts as lost (and the next one goes)."""
        self.fetch_next = 0
        """Where the last Fetch reply we heard of ends: the pipelined next Fetch asks
        from there."""
        self._unlearned: dict[Ballot, list[int]] = {}
        """ballot -> heap of slots our acceptor accepted in that ballot and we have not
        learned yet (an entry may be stale: checked when popped). Only ballots not below
        our promise: a Commit or Accept of a lower ballot is refused, so nothing could
        ever mark those slots chosen through it."""
        self._commit_point: dict[Ballot, int] = {}
        """ballot -> the highest commit point a message of that ballot announced: every
        slot below it accepted in that ballot holds the chosen value."""
        self.learn_steps = 0
        """Slots examined while learning (a cost counter, for tests and metrics)."""

        # Candidate / pre-candidate state.
        self.grants: set[int] = set()
        self.promises: dict[int, Promise] = {}
        self.prepare_slot = 0

        # Leader state.
        self.next_slot = 0
        """The slot the next proposal goes into (leader only)."""
        self.in_flight: dict[int, _InFlight] = {}
        """slot -> proposal awaiting a phase-2 quorum. Invariant: ``len <= window``
        once the re-proposals after election are acknowledged."""
        self.queued: list[bytes] = []
        """Proposals waiting for room in the window (leader only)."""
        self.heartbeat_due = now
        self.read_probe = 0
        """Number of the latest read probe (leader only)."""
        self.read_probe_sent = 0
        self.read_confirmed = 0
        """Highest probe a quorum confirmed. Invariant: <= read_probe."""
        self.read_acks: dict[int, set[int]] = {}
        self.pending_reads: list[tuple[int, int, object]] = []
        """(probe, read index, token) of reads waiting, in arrival order."""
        self.probe_sent_at: dict[int, float] = {}
        """probe -> when it left (leader only): a quorum of acks starts a lease there."""
        self.lease_until = float("-inf")
        """Leader: reads may skip the read-index round until then (quorum-granted lease
        shortened by the drift bound)."""
        lease = config.lease_seconds
        self.lease_grants: dict[int, float] = {0: now + lease} if lease > 0 else {}
        """Acceptor: leader -> until (our clock): we promise, and grant a pre-vote to,
        nobody but that leader before then. Holder 0 is the hold every start places:
        a node that restarts may have granted a lease it no longer remembers (grants
        are not persisted), so it promises nobody for one full lease after it starts.
        Invariant: a grant is only ever extended, never replaced by another leader's,
        so a late message from a deposed leader cannot cut short a running lease."""
        self.lease_ballots: dict[int, Ballot] = {}
        """Acceptor: holder -> the highest ballot of its that a grant was made for; a
        TimeoutNow of that ballot drops the grant (see *Leader transfer*)."""
        self.lease_dropped: dict[int, Ballot] = {}
        """Acceptor: holder -> a ballot whose leader gave up its lease (TimeoutNow): no
        grant to that ballot again (a late or duplicated message of it re-grants none)."""
        self.transfer: _Transfer | None = None
        """Leader: the transfer under way (new proposals queue meanwhile)."""
        self.lease_forfeited: Ballot = ZERO
        """Leader: a ballot whose lease we gave up for a transfer: no lease in it again.
        Invariant: ``lease_until`` is never extended while ``ballot == lease_forfeited``."""
        self.transfer_result = ""
        """How the last transfer this node led ended ("" while none has)."""
        self.transfers = 0
        """Transfers this node started as leader."""
        self.handed_to = 0
        """The node our last TimeoutNow named (0: none yet)."""
        self._caught_up: dict[int, int] = {}
        """Leader: peer -> the highest first unchosen slot it said it had learned up
        to (TransferReady of our ballot)."""
        self._preferred_try = now
        self._handover_try = now
        self._peer_heard: dict[int, float] = {}
        """Leader: when each peer's last Accepted or ReadAck arrived."""
        self.stale_ballot: dict[str, int] = {}
        """Messages received whose ballot is below the highest this node has seen, by
        message type: the paths that must ignore an older ballot, counted so that the
        simulator can show they ran ("Accept (fenced)": refused by a fence)."""

        self.rebuilding = rebuilding or bootstrapping
        """True while this node's acceptor state cannot be trusted: it does not vote."""
        self.bootstrapping = bootstrapping
        """Started with the bootstrap flag on an empty disk, and not yet known whether
        the cluster is new (every peer fresh) or exists (then this node rebuilds).
        Invariant: ``bootstrapping`` implies ``rebuilding``."""
        self.majority_lost = False
        """The nodes known to have lost their state (this one, peers that answered that
        they are rebuilding) contain a quorum: no rebuild can finish on its own."""
        self.rebuild_info: dict[int, RebuildInfo] = {}
        self.rebuild_query_due = now
        self.rebuild_caught_up = False
        """Every peer answered and we learned every slot they ever accepted: once a
        snapshot of our state is durable, the rebuild can finish."""
        self.rebuilt_from = rebuilt_from
        """After a rebuild: our acceptor holds nothing below this slot (like compaction).
        Durable (``Persist.rebuilt``): a restart must not forget it, or the node would
        report an empty, "complete" history for slots it lost."""
        self.fences: dict[int, FenceState] = {
            owner: FenceState(f.lifted, set(f.up)) for owner, f in (fences or {}).items()
        }
        """owner -> the fences we hold against the owner's ballots: put up before we
        answered its rebuild query, lifted once it rebuilt. Durable (``Persist.fences``).
        Invariant: we promise and accept no ballot a fence refuses."""
        self.fenced_refused = 0
        """Prepare and Accept messages refused because a fence covers their ballot."""
        self.rebuild_nonce = int(rng.random() * (1 << 53)) if self.rebuilding else 0
        """This incarnation's rebuild query number: random, so another incarnation's
        answers (which its fences did not precede) are told apart and ignored."""
        self.fence_bound: Ballot = promised
        """Every ballot of ours that an earlier incarnation of this node may have used
        is at most this, and every ballot we run from now on is above it: the bound
        we lift our peers' fences to (the promise we start voting with)."""
        self.elections = 0
        self.leader_changes = 0
        self._ready = Ready()
        # Leader: phase 1 per configuration (see "Membership").
        self._promised: set[int] = set()
        """Nodes that promised our ballot (leader or candidate)."""
        self._reported: dict[int, Entry] = {}
        """slot -> the highest-ballot entry any promiser reported there, for slots we
        have not proposed in yet (leader)."""
        self._reported_end = 0
        """One past the highest slot a promiser reported (leader): up to here, a slot
        nobody reported gets a no-op."""
        self._compacted = 0
        """The highest ``log_start`` a promiser reported (leader): below it slots are
        chosen and fetched, never proposed."""
        self._fill_to = 0
        """Leader: propose no-ops up to here when idle, so that a chosen configuration
        takes over without waiting for client commands."""
        self._prepare_asked: dict[int, float] = {}
        """node -> when we last sent it our Prepare as leader (a new configuration's
        voters are asked once its slots come into reach)."""
        self._refresh_membership()
        self._commit_sent = -1
        recovered = [s for s, e in self.acceptor.accepted.items() if e.ballot == promised]
        if recovered:
            heapq.heapify(recovered)
            self._unlearned[promised] = recovered

    # -- public inputs -------------------------------------------------------------------

    @property
    def node_id(self) -> int:
        """This replica's id."""
        return self._node_id

    @property
    def is_leader(self) -> bool:
        """True while this replica leads (it may be deposed without knowing yet)."""
        return self.role is Role.LEADER

    def propose(self, value: bytes) -> bool:
        """Propose ``value`` (a batch of commands) in the next slot; False if not leader."""
        if self.role is not Role.LEADER:
            return False
        self.queued.append(value)
        self._fill_window()
        return True

    def read(self, token: object) -> bool:
        """Ask for a linearizable read; ``token`` comes back in ``Ready.reads`` once it
        may be served (or must be refused). False at once if not leader."""
        if self.role is not Role.LEADER or (self.transfer and self.transfer.abdicated):
            return False  # abdicated: a probe would renew the grants the target needs gone
        # Until the takeover is settled the read index is not known yet (-1): a slot
        # at or above next_slot may still hold a value an earlier ballot chose.
        index = self.next_slot if self._settled() else -1
        if self.now < self.lease_until:
            # Lease held: no other leader can exist until it ends (the acceptors that
            # granted it promise nobody else before theirs ends): no round needed, and
            # once settled every write acknowledged so far is below
            # max(first_unchosen, read_floor): ours were chosen and applied before their
            # answer, earlier ballots' were re-proposed or fetched below read_floor.
            # Writes still in flight were acknowledged to nobody: no waiting for them.
            if index >= 0:
                index = max(self.first_unchosen, self.read_floor)
            self.pending_reads.append((0, index, token))
            return True
        if self.read_probe == self.read_probe_sent:
            self.read_probe += 1  # reads of one pass share one probe
            self.read_acks[self.read_probe] = {self.node_id}
        self.pending_reads.append((self.read_probe, index, token))
        return True

    def _settled(self) -> bool:
        """Leader: every slot a promiser reported has been proposed in, and a phase-1
        quorum of every configuration in reach (current and pending) has promised, so
        no slot from ``next_slot`` on holds a value an earlier ballot chose: a read
        index may be taken (docs/membership.md, "Reads")."""
        return self.next_slot >= self._reported_end and quorum_of_each(
            self._all_configs(), self._promised, phase=1
        )

    def transfer_leadership(
        self, target: int, *, catchup: int = TRANSFER_CATCHUP_TIMEOUTS
    ) -> str | None:
        """Start handing the leadership to ``target`` (see *Leader transfer*); None
        when started, else why not. The outcome lands in ``transfer_result``. The
        target gets ``catchup`` election timeouts to catch up (new commands wait)."""
        refused = self.transfer_refusal(target)
        if refused is not None:
            return refused
        deadline = self.now + self.config.election_timeout[1] * catchup
        self.transfer = _Transfer(target, deadline)
        self.transfers += 1
        self.transfer_result = f"in progress: to node {target}"
        self._send_now((target,), TransferRequest(self.node_id, self.ballot, self.first_unchosen))
        return None

    def transfer_refusal(self, target: int) -> str | None:
        """Why the leadership cannot be handed to ``target`` now (None: it can): the
        target must be a voter of every configuration in reach (see *Leader transfer*)."""
        if self.role is not Role.LEADER:
            return f"node {self.node_id} is not the leader (leader: {self.leader or 'unknown'})"
        if target == self.node_id:
            return f"node {target} already leads"
        if self.transfer is not None:
            return f"a transfer to node {self.transfer.target} is under way"
        if self.config_change is not None:
            return (
                f"a configuration change (epoch {self.config_change}) is being proposed: "
                "transfer once it is chosen"
            )
        return self._target_refusal(target)

    def _target_refusal(self, target: int) -> str | None:
        """Why ``target`` cannot lead after us: it must be a voter of every
        configuration in reach (the one governing our first unchosen slot and the
        pending ones), or it could not run, or would step down at once."""
        reach = self.membership.from_slot(self.first_unchosen)
        current = reach[0][1]
        if target in self.membership.retired:
            return f"node {target} was removed from the cluster"
        for start, config in reach:
            if target in config.voters:
                continue
            if start == reach[0][0]:
                later = [(s, c) for s, c in reach if target in c.voters]
                if later:
                    return (
                        f"node {target} is not a voter yet (configuration epoch "
                        f"{later[0][1].epoch} makes it one from slot {later[0][0]})"
                    )
                if target in current.learners:
                    return f"node {target} is a learner, not a voter (promote it first)"
                if not any(target in c.nodes for _, c in reach):
                    voters = ", ".join(map(str, current.voters))
                    return f"node {target} is not a member of the cluster (voters: {voters})"
                return f"node {target} is a learner, not a voter (promote it first)"
            return (
                f"node {target} is being removed (configuration epoch {config.epoch}, in "
                f"force from slot {start}, does not count it)"
            )
        return None

    @property
    def read_floor(self) -> int:
        """Leader: the end of the slots promisers reported (re-proposed) or compacted
        (fetched). Once settled, every value an earlier ballot chose sits below it, so
        a read under the lease waits for ``max(first_unchosen, read_floor)`` only."""
        return max(self._reported_end, self._compacted)

    def step(self, msg: Message) -> None:
        """Feed one received message (stale or foreign messages are ignored)."""
        if self.disowned and msg.src in self.disowned:
            self._refuse_disowned(msg)
            return
        retired = self.membership.retired
        if retired and msg.src in retired and self._refuses_removed(msg):
            return
        ballot = getattr(msg, "ballot", None)
        if ballot is not None and ballot < self.highest_seen:
            name = type(msg).__name__
            self.stale_ballot[name] = self.stale_ballot.get(name, 0) + 1
        match msg:
            case Accept():
                self._on_accept(msg)
            case Accepted():
                self._on_accepted(msg)
            case Commit():
                self._on_commit(msg)
            case Prepare():
                self._on_prepare(msg)
            case Promise():
                self._on_promise(msg)
            case Nack():
                self._on_nack(msg)
            case Fetch():
                self._on_fetch(msg)
            case Decided():
                self._learn_values(msg)
            case PreVote():
                self._on_prevote(msg)
            case PreVoteReply():
                self._on_prevote_reply(msg)
            case ReadAck():
                self._on_read_ack(msg)
            case RebuildQuery():
                self._on_rebuild_query(msg)
            case RebuildInfo():
                if self.rebuilding and msg.nonce == self.rebuild_nonce:
                    self.rebuild_info[msg.src] = msg
                    self._try_finish_rebuild()
            case FenceLift():
                self._on_fence_lift(msg)
            case Fenced():
                self._on_fenced(msg)
            case Removed():
                if msg.node == self.node_id and self.removed is None:
                    self._become_removed(f"node {msg.src} says: {msg.reason}")
            case TransferRequest():
                self._on_transfer_request(msg)
            case TransferReady():
                self._on_transfer_ready(msg)
            case TimeoutNow():
                self._on_timeout_now(msg)
            case _:
                pass

    def tick(self, now: float) -> None:
        """Advance time: elections, heartbeats, retransmissions, fetches."""
        self.now = now
        if self.rebuilding:
            self._rebuild_tick()
        elif self.role is Role.LEADER:
            self.leader_contact = now
            if self.transfer is not None and now >= self.transfer.deadline:
                self._end_transfer()
            elif self.transfer is None:
                self._maybe_hand_over()
            if now >= self.heartbeat_due and not (self.transfer and self.transfer.abdicated):
                self._heartbeat()
        elif now >= self.election_deadline:
            self._start_prevote()
        if self.commit_hint > self.first_unchosen and now >= self.fetch_due:
            # Nothing arrived for a while (or nothing was asked yet): ask afresh.
            self.fetch_next = self.first_unchosen
            self._fetch(self._fetch_target(), self.first_unchosen)

    def ready(self) -> Ready:
        """What the driver must do now."""
        r = self._ready
        if self.role is Role.LEADER and self.read_probe > self.read_probe_sent:
            self._send_now(
                self.peers,
                Commit(self.node_id, self.ballot, self.first_unchosen, self.read_probe),
            )
            self.read_probe_sent = self.read_probe
            self.probe_sent_at[self.read_probe] = self.now
            self._commit_sent = self.first_unchosen
            self._check_read_quorum(self.read_probe)
        if self.pending_reads:
            self._release_reads(r)
        r.persist.absorb(self.acceptor.take_pending())
        if (
            self.role is Role.LEADER
            and self.first_unchosen > self._commit_sent
            and not (self.transfer and self.transfer.abdicated)
        ):
            # Followers learn promptly; an Accept in this Ready already carries it.
            if not any(isinstance(s.msg, Accept) for s in r.send_now):
                self._send_now(self.peers, Commit(self.node_id, self.ballot, self.first_unchosen))
            self._commit_sent = self.first_unchosen
        return r

    def advance(self) -> None:
        """The driver carried out the last ``ready()``."""
        self._ready = Ready()

    def next_deadline(self) -> float:
        """When ``tick`` must next be called."""
        leading = self.role is Role.LEADER
        deadline = self.heartbeat_due if leading else self.election_deadline
        if leading and self.transfer is not None:
            t = self.transfer
            # Abdicated: no heartbeats until the transfer's deadline.
            deadline = t.deadline if t.abdicated else min(deadline, t.deadline)
        if self.rebuilding:
            deadline = self.rebuild_query_due
        if self.commit_hint > self.first_unchosen:
            deadline = min(deadline, max(self.fetch_due, self.now))
        return deadline

    def compact(self, slot: int) -> None:
        """Forget chosen values and accepted entries below ``slot`` (snapshot durable)."""
        slot = min(slot, self.first_unchosen)
        for s in [s for s in self.chosen if s < slot]:
            del self.chosen[s]
        self.acceptor.forget_below(slot)
        self.log_start = max(self.log_start, slot)
        self._refresh_membership()

    def skip_to(self, slot: int) -> None:
        """Everything below ``slot`` is covered by a restored snapshot: start there.

        A leader or candidate steps down first: its Commit(b, c) would otherwise claim
        that slots it skipped were chosen, and a follower holding a value this leader
        proposed there in ``b`` (but that lost to a higher ballot) would learn it.
        """
        if slot > self.first_unchosen:
            if self.role is not Role.FOLLOWER:
                self._become_follower(0)
            for s in [s for s in self.chosen if s < slot]:
                del self.chosen[s]
            self.first_unchosen = slot
            self.log_start = slot
            self._refresh_membership()
            self._emit_chosen()

    # -- membership ----------------------------------------------------------------------

    @property
    def configuration(self) -> Configuration:
        """The configuration governing our first unchosen slot."""
        return self.membership.at(self.first_unchosen)

    def configurations(self) -> list[tuple[int, Configuration]]:
        """``(start slot, configuration)``: the current configuration, then every
        pending one (chosen, in force from its start slot)."""
        return self.membership.from_slot(self.first_unchosen)

    def change_in_flight(self) -> bool:
        """True while a configuration change is proposed or chosen but not yet in force."""
        return self.config_change is not None or self.membership.pending_after(self.first_unchosen)

    def propose_configuration(self, config: Configuration) -> int:
        """Propose ``config`` as the next configuration; returns its epoch.

        Leader only, one change at a time. ``ConfigChangeError`` (a ``ValueError``)
        says why a change is refused: not the leader, a change still in flight, not
        the next epoch, a changed alpha, a removed id reused. Whether the change
        leaves a live quorum is the caller's check (``Configuration.live_quorums``).
        The change is chosen like any value; it governs from ``alpha`` slots after
        the slot it is chosen in (the leader fills those with no-ops when idle).
        """
        if self.role is not Role.LEADER:
            raise ConfigChangeError(
                f"node {self.node_id} is not the leader (leader: {self.leader or 'unknown'})"
            )
        if self.transfer is not None:
            raise ConfigChangeError(
                f"a leader transfer to node {self.transfer.target} is under way: change "
                "the configuration once it is over"
            )
        if self.change_in_flight():
            raise ConfigChangeError(
                "a configuration change is already in flight: one change at a time "
                f"(latest epoch {self.membership.latest.epoch}, in force from slot "
                f"{self.membership.starts[-1]})"
            )
        why = self.membership.check(config)
        if why is not None:
            raise ConfigChangeError(why)
        if self.disowned & set(config.nodes):
            raise ConfigChangeError(
                f"nodes {sorted(self.disowned & set(config.nodes))} belong to the cluster "
                "before its forced recovery and are refused for good: give them new ids"
            )
        self.config_change = config.epoch
        self.queued.insert(0, encode_config_entry(config))
        self._fill_window()
        return config.epoch

    def add_learner(self, node: int) -> int:
        """Propose adding the new id ``node`` as a learner (see ``propose_configuration``)."""
        return self.propose_configuration(self.membership.latest.add_learner(node))

    def promote(self, node: int, *, q1: int = 0, q2: int = 0) -> int:
        """Propose making learner ``node`` a voter (quorum sizes: majorities unless given)."""
        return self.propose_configuration(self.membership.latest.promote(node, q1=q1, q2=q2))

    def remove(self, node: int, *, q1: int = 0, q2: int = 0) -> int:
        """Propose removing ``node`` (the leader itself too: it steps down once the new
        configuration is in force)."""
        return self.propose_configuration(self.membership.latest.remove(node, q1=q1, q2=q2))

    def replace(self, old: int, new: int, *, q1: int = 0, q2: int = 0) -> int:
        """Propose replacing voter ``old`` by the new id ``new`` in one change."""
        return self.propose_configuration(self.membership.latest.replace(old, new, q1=q1, q2=q2))

    def membership_state(self, slot: int) -> MembershipState:
        """What a snapshot of the slots below ``slot`` must carry about membership."""
        return self.membership.state(slot)

    def install_membership(self, state: MembershipState) -> None:
        """Adopt a snapshot's membership (before ``skip_to`` its slot)."""
        if state.slot > self.first_unchosen and state.configs:
            self.membership.install(state)
            self._refresh_membership()

    def force_configuration(
        self, config: Configuration, disowned: Iterable[int], reason: str
    ) -> None:
        """Apply an operator's forced recovery (``pyxos recover --force-new-cluster``,
        ``core/recovery.py``): ``config`` governs every slot from here on, unless the
        timeline already holds it or a later one (a snapshot taken since the recovery);
        the ``disowned`` ids, the old cluster's, are refused for good with ``reason``.
        Called at startup, after the snapshot is restored and before any input."""
        self.disowned = frozenset(disowned) - {self._node_id}
        self.disowned_reason = reason
        m = self.membership
        if m.latest.epoch < config.epoch:
            # The disowned ids stay out of the timeline's ``retired``: that set decides
            # whether a configuration entry is effective, on every node alike, and a
            # node that joins later and learns the log from slot 0 never hears of them.
            # Only this node's handling of their messages, and what it proposes, differ.
            retired = tuple(sorted(m.retired))
            m.install(MembershipState(self.first_unchosen, ((0, config),), retired))
        self._refresh_membership()

    def _refuse_disowned(self, msg: Message) -> None:
        """``msg`` comes from a node of the cluster before a forced recovery: take
        nothing from it (its reports and values belong to another history), and tell it
        why if it acts as a member or asks for the log."""
        if isinstance(msg, PreVote | Prepare | Accept | Commit | RebuildQuery | Fetch):
            self.refused_removed += 1
            epoch = self.quorum.epoch
            self._send_now((msg.src,), Removed(self.node_id, msg.src, epoch, self.disowned_reason))

    def _refresh_membership(self) -> None:
        m = self.membership
        before = self.peers
        m.advance(self.first_unchosen, self.log_start)
        self.quorum = m.at(self.first_unchosen)
        self.members = tuple(sorted(m.nodes_from(self.first_unchosen)))
        self.peers = tuple(n for n in self.members if n != self.node_id)
        if self.role is Role.LEADER and self._node_id not in self.quorum.voters:
            # A leader the configuration in force no longer counts hands over: it tells
            # everyone, old peers and new, what is chosen, and steps down.
            everyone = tuple(sorted(set(before) | set(self.peers)))
            self._send_now(everyone, Commit(self.node_id, self.ballot, self.first_unchosen))
            # The slots in flight were chosen before the handover's TransferReady could
            # act: if its target is caught up (it answered), it runs at once all the
            # same. Our lease ends for good here: we step down and never lead again.
            t = self.transfer
            if t is not None and t.target in self._caught_up and t.target in self.quorum.voters:
                self.transfer = None
                self.transfer_result = f"done: handed to node {t.target} (removed)"
                self._forfeit_lease()
                self.handed_to = t.target
                self._send_now(everyone, TimeoutNow(self.node_id, self.ballot, t.target))
        if self.removed is None and self._node_id in m.retired:
            self._become_removed(
                f"removed from the cluster (configuration epoch {self.quorum.epoch} "
                f"does not name node {self._node_id})"
            )
        elif self.role is Role.LEADER and self._node_id not in self.quorum.voters:
            # The configuration in force no longer counts us: hand over (step down).
            self._become_follower(0)

    def _become_removed(self, reason: str) -> None:
        """We are not a member any more, for good: never run or lead again.

        We still answer Prepare and Accept: for the slots before our removal took over
        we are a voter, and a new leader may need our promise and report there (the
        node that knew them chosen may have lost its disk since; the simulator found a
        run where a removed node that stopped answering left no phase-1 quorum for
        them). Our vote is counted nowhere else."""
        self.removed = reason
        if self.role is not Role.FOLLOWER:
            self._become_follower(0)

    def _refuses_removed(self, msg: Message) -> bool:
        """``msg`` comes from a removed node: refuse it (True) and say why if it acts
        as a member (runs, leads, rebuilds). Its answers still count where it is a
        voter: the configurations before its removal (see ``_become_removed``)."""
        if not isinstance(msg, PreVote | Prepare | Accept | Commit | RebuildQuery):
            return False
        self._refuse_removed(msg.src)
        return True

    def _refuse_removed(self, src: int) -> None:
        self.refused_removed += 1
        reason = (
            f"node {src} was removed from the cluster; configuration epoch "
            f"{self.quorum.epoch} has voters {list(self.quorum.voters)} and learners "
            f"{list(self.quorum.learners)}"
        )
        self._send_now((src,), Removed(self.node_id, src, self.quorum.epoch, reason))

    def _on_config_chosen(self, slot: int, value: bytes) -> None:
        config = self.membership.chosen(slot, value, self._config_delay())
        if config is not None:
            # A lease is only as good as the configurations that granted it: one more
            # configuration to bind, a new lease (see docs/membership.md, "Leases").
            self.lease_until = float("-inf")
        if self.config_change is not None and (
            config is None or config.epoch >= self.config_change
        ):
            self.config_change = None
        if config is not None and self.role is Role.LEADER:
            # Fill the window up to where it takes over, so an idle cluster does not
            # wait for client commands to bring it into force.
            self._fill_to = max(self._fill_to, self.membership.starts[-1])

    def _hint_chosen(self, to: int, their_first_unchosen: int) -> None:
        """A removed node tells a former peer that is behind how far the log is
        chosen (an empty Decided): the slots it lacks were chosen before we left, and
        may need our copy (we still answer Fetch)."""
        if self.first_unchosen > their_first_unchosen:
            fu = self.first_unchosen
            self._send_now((to,), Decided(self._node_id, fu, (), fu))

    def _config_delay(self) -> int | None:
        """Slots from choosing a configuration to its taking over (None: alpha)."""
        return None

    def _all_configs(self) -> list[Configuration]:
        return [c for _, c in self.membership.from_slot(self.first_unchosen)]

    # -- acceptor side -------------------------------------------------------------------

    def _on_prepare(self, msg: Prepare) -> None:
        if self.removed is not None:
            self._hint_chosen(msg.src, msg.slot)
        if self.rebuilding:
            self._note_ballot(msg.ballot)
            return  # no vote while our acceptor state cannot be trusted
        if self._fence_refuses(msg):
            return
        if self._lease_held_against(msg.src) > self.now:
            # We granted a lease to another leader (or have just started and may have
            # forgotten one): promise nobody else until it ends.
            self._note_ballot(msg.ballot)
            return
        entries = self.acceptor.on_prepare(msg.ballot, msg.slot)
        self._note_ballot(msg.ballot)
        if entries is None:
            self._send_after_sync(
                (msg.src,), Nack(self.node_id, msg.ballot, self.acceptor.promised, self.leader)
            )
            return
        if msg.ballot > self.ballot and self.role is not Role.FOLLOWER and msg.src != self.node_id:
            self._become_follower(msg.ballot.node)
        promise = Promise(self.node_id, msg.ballot, tuple(entries), self._acceptor_start())
        self._send_after_sync((msg.src,), promise)

    def _on_accept(self, msg: Accept) -> None:
        if self.removed is not None:
            self._hint_chosen(msg.src, msg.chosen)
        if self.rebuilding:
            self._heard_from_leader(msg.ballot)
            self._learn_commit(msg.ballot, msg.chosen)
            return
        if self._fence_refuses(msg):
            return
        if not self.acceptor.on_accept(msg.ballot, msg.slot, msg.values):
            self._send_after_sync(
                (msg.src,), Nack(self.node_id, msg.ballot, self.acceptor.promised, self.leader)
            )
            return
        self._heard_from_leader(msg.ballot)
        self._send_after_sync(
            (msg.src,), Accepted(self.node_id, msg.ballot, msg.slot, len(msg.values))
        )
        self._note_accepted(msg.ballot, msg.slot, msg.values)
        self._learn_commit(msg.ballot, msg.chosen)

    def _on_commit(self, msg: Commit) -> None:
        if msg.ballot < self.acceptor.promised:
            self._send_now(
                (msg.src,), Nack(self.node_id, msg.ballot, self.acceptor.promised, self.leader)
            )
            return
        self._heard_from_leader(msg.ballot)
        self._learn_commit(msg.ballot, msg.chosen)
        if msg.read and not self.rebuilding:
            self._send_now((msg.src,), ReadAck(self.node_id, msg.ballot, msg.read))

    def _on_read_ack(self, msg: ReadAck) -> None:
        if self.role is not Role.LEADER or msg.ballot != self.ballot:
            return
        self._peer_heard[msg.src] = self.now
        acks = self.read_acks.get(msg.read)
        if acks is not None:
            acks.add(msg.src)
            self._check_read_quorum(msg.read)

    def _check_read_quorum(self, probe: int) -> None:
        acks = self.read_acks.get(probe)
        if acks is not None and quorum_of_each(self._all_configs(), acks, phase=2):
            self.read_confirmed = max(self.read_confirmed, probe)
            sent = self.probe_sent_at.get(probe)
            lease = self.config.lease_seconds
            if sent is not None and lease > 0 and self.ballot != self.lease_forfeited:
                self.lease_until = max(
                    self.lease_until, sent + lease * (1.0 - self.config.clock_drift)
                )
            for p in [p for p in self.read_acks if p <= probe]:
                del self.read_acks[p]
                self.probe_sent_at.pop(p, None)

    def _release_reads(self, r: Ready) -> None:
        if self.role is not Role.LEADER:
            r.reads.extend((token, False) for _, _, token in self.pending_reads)
            self.pending_reads.clear()
            return
        keep = []
        settled: bool | None = None
        for probe, index, token in self.pending_reads:
            if index < 0:
                if settled is None:
                    settled = self._settled()
                if not settled:
                    keep.append((probe, index, token))
                    continue
                # Under the lease (probe 0) as in read(); a probed read the old way.
                index = max(self.first_unchosen, self.read_floor) if probe == 0 else self.next_slot
            if probe <= self.read_confirmed and index <= self.first_unchosen:
                r.reads.append((token, True))
            else:
                keep.append((probe, index, token))
        self.pending_reads = keep

    def _heard_from_leader(self, ballot: Ballot) -> None:
        self._note_ballot(ballot)
        if ballot.node == self.node_id:
            return
        if self.role is Role.PRECANDIDATE or (
            self.role is not Role.FOLLOWER and ballot > self.ballot
        ):
            self._become_follower(ballot.node)
        if self.leader != ballot.node:
            self.leader = ballot.node
            self.leader_changes += 1
        self.leader_contact = self.now
        self.election_deadline = self.now + self._election_timeout()
        lease = self.config.lease_seconds
        if lease > 0 and self.lease_dropped.get(ballot.node) != ballot:
            grants = self.lease_grants
            grants[ballot.node] = max(grants.get(ballot.node, self.now), self.now + lease)
            if ballot > self.lease_ballots.get(ballot.node, ZERO):
                self.lease_ballots[ballot.node] = ballot

    def _lease_held_against(self, candidate: int) -> float:
        """Until when (our clock) a lease we granted to someone other than ``candidate``
        forbids promising ``candidate``; expired grants are dropped."""
        now = self.now
        held = float("-inf")
        grants = self.lease_grants
        for holder, until in list(grants.items()):
            if until <= now:
                del grants[holder]
            elif holder != candidate and until > held:
                held = until
        return held

    def _on_prevote(self, msg: PreVote) -> None:
        # Grant only if we too have lost the leader: a node that comes back from a
        # partition then cannot start an election that would depose a healthy leader.
        # Nor to a node far behind us: its phase 1 would re-propose its whole gap.
        # Nor while a lease we granted forbids promising the asker: its Prepare would
        # be refused anyway.
        if self.removed is not None:
            self._hint_chosen(msg.src, msg.first_unchosen)
        recent = self.now - self.leader_contact < self.config.election_timeout[0]
        lagging = msg.first_unchosen + self.config.window < self.first_unchosen
        fence = self.fences.get(msg.src)
        if fence is not None and fence.up:
            # Its ballots would be refused: have it lift our fences first.
            self._send_now((msg.src,), Fenced(self.node_id, tuple(sorted(fence.up))))
        granted = (
            not (self.leader != 0 and recent)
            and not self.rebuilding
            and not lagging
            and self._lease_held_against(msg.src) <= self.now
            and not (fence is not None and fence.up)
        )
        self._send_now((msg.src,), PreVoteReply(self.node_id, msg.ballot, granted, self.leader))

    # -- leader transfer ---------------------------------------------------------------------

    def _on_transfer_request(self, msg: TransferRequest) -> None:
        if (
            self.rebuilding
            or self.removed is not None
            or msg.ballot < self.acceptor.promised
            or self.role is Role.LEADER
        ):
            return
        # Every slot below the leader's first unchosen one is chosen: fetch what we lack.
        self.commit_hint = max(self.commit_hint, msg.index)
        if self.first_unchosen >= msg.index:
            ready = TransferReady(self.node_id, msg.ballot, self.first_unchosen)
            self._send_now((msg.src,), ready)

    def _on_transfer_ready(self, msg: TransferReady) -> None:
        t = self.transfer
        if self.role is Role.LEADER and msg.ballot == self.ballot:
            known = self._caught_up
            known[msg.src] = max(known.get(msg.src, 0), msg.first_unchosen)
        if (
            t is None
            or t.abdicated
            or self.role is not Role.LEADER
            or msg.ballot != self.ballot
            or msg.src != t.target
            or self.in_flight
            or msg.first_unchosen < self.first_unchosen
        ):
            return
        why = self._target_refusal(t.target)
        if why is not None:
            # A change re-proposed from an earlier ballot was chosen meanwhile and does
            # not count the target: give up before abdicating.
            self.transfer = None
            self.transfer_result = f"failed: {why}; this node resumed"
            self._fill_window()
            return
        # Abdicate: the lease ends now and never comes back in this ballot, so the
        # acceptors may drop the grants behind it (the target's Prepare then goes
        # through at once). Acknowledgements of probes sent before count for no lease.
        t.abdicated = True
        t.deadline = self.now + self.config.election_timeout[1]
        self._forfeit_lease()
        self.handed_to = t.target
        self._send_now(self.peers, TimeoutNow(self.node_id, self.ballot, t.target))

    def _forfeit_lease(self) -> None:
        """End our lease for good in this ballot; refuse the reads still waiting (the
        clients retry at the new leader): their probe would renew the grants the
        target needs gone."""
        self.lease_forfeited = self.ballot
        self.lease_until = float("-inf")
        self.probe_sent_at.clear()
        self._ready.reads.extend((token, False) for _, _, token in self.pending_reads)
        self.pending_reads.clear()
        self.read_acks.clear()
        self.read_probe_sent = self.read_probe

    def _on_timeout_now(self, msg: TimeoutNow) -> None:
        # The sender ended its lease of this ballot for good: drop our grant to it, if
        # that is the ballot it was made for (a later ballot's lease stands).
        if msg.ballot.node == msg.src:
            if self.lease_dropped.get(msg.src, ZERO) < msg.ballot:
                self.lease_dropped[msg.src] = msg.ballot
            if self.lease_ballots.get(msg.src) == msg.ballot:
                self.lease_grants.pop(msg.src, None)
        if (
            msg.target != self.node_id
            or self.rebuilding
            or self.removed is not None
            or self._node_id not in self.quorum.voters
            or self.role is Role.LEADER
            or msg.ballot < self.acceptor.promised
        ):
            return
        if self._lease_held_against(self.node_id) > self.now:
            return  # another lease (or our restart hold) still binds our promise
        self._start_election()

    def _end_transfer(self) -> None:
        """The transfer timed out: resume leading (queue, heartbeats; no lease again
        in this ballot if we abdicated)."""
        t = self.transfer
        if t is None:
            return
        self.transfer = None
        stage = "did not win" if t.abdicated else "did not catch up"
        self.transfer_result = f"failed: node {t.target} {stage} in time; this node resumed"
        self.heartbeat_due = self.now
        self._fill_window()

    def _maybe_hand_over(self) -> None:
        """Leader, no transfer under way: hand over to a voter if a chosen change
        removes us (before it takes over), or to the preferred leader once it answers."""
        now = self.now
        heard = self._peer_heard
        recent = now - 2 * self.config.heartbeat_interval
        if now >= self._handover_try and self.config_change is None:
            reach = self._all_configs()
            if any(self._node_id not in c.voters for c in reach):
                # A chosen change removes us: the voters of every configuration in
                # reach that answered lately, the preferred one first, then the latest.
                able = [
                    v
                    for v in reach[-1].voters
                    if heard.get(v, -1e18) >= recent and self.transfer_refusal(v) is None
                ]
                if able:
                    self._handover_try = now + 2 * self.config.election_timeout[1]
                    best = max(able, key=lambda v: (v == self.preferred_leader, heard[v], -v))
                    self.transfer_leadership(best)
                    return
        preferred = self.preferred_leader
        if (
            preferred not in (0, self.node_id)
            and now >= self._preferred_try
            and heard.get(preferred, -1e18) >= recent
            and self.transfer_refusal(preferred) is None
        ):
            # One election timeout to catch up: a preferred node far behind costs the
            # writes that wait at most that, every ten election timeouts.
            self._preferred_try = now + 10 * self.config.election_timeout[1]
            self.transfer_leadership(preferred, catchup=1)

    # -- rebuilding ------------------------------------------------------------------------

    def _acceptor_start(self) -> int:
        """The first slot our acceptor's reports are complete for."""
        return max(self.log_start, self.rebuilt_from)

    def _on_rebuild_query(self, msg: RebuildQuery) -> None:
        if msg.src not in self.peers:
            return
        # Fence every ballot the asker owns before we answer (the answer waits for the
        # fsync): a late Accept of its lost incarnation either reached us before, and
        # is in the figures we report, or is refused from now on. A rebuilding node
        # fences too: it will vote again one day.
        fence = self.fences.setdefault(msg.src, FenceState())
        if msg.nonce not in fence.up:
            change = Fence(msg.src, msg.nonce)
            fence.apply(change)
            self._ready.persist.fences.append(change)
        if self.rebuilding:
            # Our own state is no bound for anyone; say so, so that the asker need
            # not wait for us (see _try_finish_rebuild).
            info = RebuildInfo(
                self.node_id,
                ZERO,
                -1,
                rebuilding=True,
                fresh=self.bootstrapping,
                nonce=msg.nonce,
            )
        else:
            last = max(max(self.acceptor.accepted, default=-1), self._acceptor_start() - 1)
            held = tuple(f for o, st in sorted(self.fences.items()) for f in st.records(o))
            if self.fence_bound > ZERO:
                # Our own earlier incarnations' ballots, in case the asker held a fence
                # against them that it lost with its disk (see "Rebuilding").
                held += (Fence(self.node_id, -1, self.fence_bound),)
            info = RebuildInfo(
                self.node_id,
                self.acceptor.promised,
                last,
                fresh=self._fresh(),
                nonce=msg.nonce,
                fences=held,
            )
        self._send_after_sync((msg.src,), info)

    def _fence_refuses(self, msg: Prepare | Accept) -> bool:
        """True (and the sender is told) if a fence forbids promising or accepting
        ``msg.ballot``: a ballot of an incarnation of its owner that lost its state."""
        src, ballot = msg.src, msg.ballot
        owner = ballot.node
        fence = self.fences.get(owner)
        if fence is None or owner == self.node_id or not fence.refuses(ballot):
            return False
        self.fenced_refused += 1
        name = f"{type(msg).__name__} (fenced)"  # shown with the stale-ballot counts
        self.stale_ballot[name] = self.stale_ballot.get(name, 0) + 1
        self._note_ballot(ballot)
        if fence.up:
            # The owner rebuilt (or is rebuilding) and has not lifted them yet.
            self._send_now((owner,), Fenced(self.node_id, tuple(sorted(fence.up))))
        else:
            # A ballot of a lost incarnation, or one the owner picked too low: make it
            # pick above the bound.
            above = max(self.acceptor.promised, fence.lifted)
            self._send_after_sync((src,), Nack(self.node_id, ballot, above, self.leader))
        return True

    def _on_fence_lift(self, msg: FenceLift) -> None:
        fence = self.fences.get(msg.src)
        if fence is None or msg.nonce not in fence.up:
            return  # lifted already, or a fence we never held: nothing to lower
        change = Fence(msg.src, msg.nonce, msg.bound)
        fence.apply(change)
        self._ready.persist.fences.append(change)

    def _on_fenced(self, msg: Fenced) -> None:
        if self.rebuilding:
            return  # our fences are lifted when the rebuild ends
        # Every fence against us belongs to this incarnation's finished rebuild or to
        # an earlier incarnation: fence_bound bounds the ballots of all of them.
        for nonce in msg.nonces:
            self._send_now((msg.src,), FenceLift(self.node_id, nonce, self.fence_bound))

    def _fresh(self) -> bool:
        """A member that has never held state: nothing promised, accepted or learned."""
        return (
            self.acceptor.promised == ZERO
            and not self.acceptor.accepted
            and self.first_unchosen == 0
            and not self.chosen
            and self._acceptor_start() == 0
        )

    def peers_unanswered(self) -> set[int]:
        """While rebuilding or bootstrapping: the peers that have not answered yet."""
        return {p for p in self.peers if p not in self.rebuild_info}

    def peers_without_state(self) -> set[int]:
        """While rebuilding or bootstrapping: the peers that answered that they are
        rebuilding or bootstrapping too."""
        return {p for p, i in self.rebuild_info.items() if i.rebuilding}

    def _rebuild_tick(self) -> None:
        self._try_finish_rebuild()
        if not self.rebuilding or self.now < self.rebuild_query_due:
            return
        # Ask again whoever has not answered, or answered that it was rebuilding too.
        missing = tuple(
            p for p in self.peers if p not in self.rebuild_info or self.rebuild_info[p].rebuilding
        )
        self._send_now(missing, RebuildQuery(self.node_id, self.rebuild_nonce))
        self.rebuild_query_due = self.now + self.config.heartbeat_interval * 2

    def _try_finish_rebuild(self) -> None:
        if not self.rebuilding:
            return
        answers = self.rebuild_info
        if self.bootstrapping:
            if any(not i.fresh for i in answers.values()):
                # Somebody holds (or held) state: the cluster exists, and our empty
                # disk may be a wiped member's. Rebuild like one (see the notes).
                self.bootstrapping = False
            elif self.peers_unanswered():
                return
            else:
                self._finish_bootstrap()
                return
        # Peers that lost their state too bound nothing. The rest bound everything as
        # long as the nodes without state contain no phase-1 and no phase-2 quorum:
        # then every ballot that reached phase 2 was promised durably by one of the
        # rest, and every chosen slot was accepted by one of them.
        lost = {self.node_id} | {p for p, i in answers.items() if i.rebuilding}
        self.majority_lost = any(
            c.is_phase1_quorum(lost) or c.is_phase2_quorum(lost) for c in self._all_configs()
        )
        if self.majority_lost or self.peers_unanswered():
            return
        infos = [i for i in answers.values() if not i.rebuilding]
        last = max((i.last_slot for i in infos), default=-1)
        self.commit_hint = max(self.commit_hint, last + 1)
        if self.first_unchosen <= last:
            return  # still learning what may have been chosen with our lost votes
        self.rebuild_caught_up = True

    def join_fresh(self) -> None:
        """This node's id was never used before (a node being added to the cluster):
        its empty state is the truth, so it votes (once a configuration names it)
        without a bootstrap round. The caller vouches for the id being new: ids of
        removed nodes are never reused (docs/membership.md), and this is the id's first
        start (it never sent anything: the server asks whether the cluster ever heard
        from it). Nor does it hold its promise for a lease after it starts: it granted
        no lease in an earlier life (a leader handing over to a node that had just
        joined waited in vain for it to run on TimeoutNow, and an election timeout
        went by)."""
        if self._fresh():
            self.lease_grants.pop(0, None)
            if self.bootstrapping:
                self._finish_bootstrap()

    def _finish_bootstrap(self) -> None:
        """Every peer answered fresh: a new cluster, and our empty state is the truth."""
        self.bootstrapping = False
        self.rebuilding = False
        self.majority_lost = False
        self._ready.persist.rebuilt = self.rebuilt_from
        self.election_deadline = self.now + self._election_timeout()
        self._lift_fences()

    def finish_rebuild(self, snapshot_slot: int) -> None:
        """End a rebuild once a snapshot covering every slot below ``snapshot_slot`` is
        durable (the service layer takes it when ``rebuild_caught_up``): raise the
        promise to the peers' maximum and vote again, reporting nothing below that
        slot, which a new leader then fetches (the snapshot can serve it)."""
        if not (self.rebuilding and self.rebuild_caught_up):
            raise RuntimeError("finish_rebuild before the rebuild caught up")
        if snapshot_slot < self.first_unchosen:
            return  # an older snapshot: wait for the one taken after catching up
        promised = max(
            (i.promised for i in self.rebuild_info.values() if not i.rebuilding), default=ZERO
        )
        if promised > self.acceptor.promised:
            self.acceptor.promised = promised
            self.acceptor.pending.promised = promised
        self._note_ballot(promised)
        # Fences our lost disk held: every peer that kept its state holds them too.
        for info in self.rebuild_info.values():
            for fence in info.fences:
                if fence.owner != self.node_id and fence.owner in self.members:
                    held = self.fences.setdefault(fence.owner, FenceState())
                    held.apply(fence)
                    self._ready.persist.fences.append(fence)
        # A fence we held may have been lost with our disk before any peer that
        # answered us held it too. A peer that answered that it is rebuilding lost its
        # state since its old incarnations' Accepts left: those of their ballots that
        # reached phase 2 are at most what we vote with (see "Rebuilding").
        bound = self.acceptor.promised
        for peer, info in sorted(self.rebuild_info.items()):
            if info.rebuilding and bound > ZERO and peer in self.members:
                change = Fence(peer, -1, bound)
                self.fences.setdefault(peer, FenceState()).apply(change)
                self._ready.persist.fences.append(change)
        self.rebuilt_from = snapshot_slot
        self.rebuilding = False
        self.majority_lost = False
        self._ready.persist.rebuilt = snapshot_slot
        self.election_deadline = self.now + self._election_timeout()
        self._lift_fences()

    def _lift_fences(self) -> None:
        """The rebuild is over: our peers may lift the fences our query put up. Our old
        incarnations' ballots stay fenced up to the promise we vote with; ours are
        above it. A lost FenceLift is sent again when a peer says it still fences us."""
        self.fence_bound = self.acceptor.promised
        lift = FenceLift(self.node_id, self.rebuild_nonce, self.fence_bound)
        self._send_after_sync(self.peers, lift)

    # -- learning --------------------------------------------------------------------------

    def _note_accepted(self, ballot: Ballot, slot: int, values: Sequence[bytes]) -> None:
        """Our acceptor accepted ``values`` from ``slot`` in ``ballot``: learn those that
        a commit point of ``ballot`` already covers, remember the others."""
        if len(self._unlearned) > 1 or ballot not in self._unlearned:
            self._forget_lower_ballots()
        heap = self._unlearned.setdefault(ballot, [])
        point = self._commit_point.get(ballot, 0)
        first = self.first_unchosen
        chosen = self.chosen
        self.learn_steps += len(values)
        for i, value in enumerate(values):
            s = slot + i
            if s < first:
                continue
            if s < point:
                chosen.setdefault(s, value)
            else:
                heapq.heappush(heap, s)

    def _forget_lower_ballots(self) -> None:
        promised = self.acceptor.promised
        for b in [b for b in self._unlearned if b < promised]:
            del self._unlearned[b]
        for b in [b for b in self._commit_point if b < promised]:
            del self._commit_point[b]

    def _learn_commit(self, ballot: Ballot, chosen_end: int) -> None:
        """Slots below ``chosen_end`` are chosen; keep those we accepted in ``ballot``.

        Costs the slots newly covered that we accepted in ``ballot``, not the gap."""
        if chosen_end <= self.first_unchosen:
            return
        self.commit_hint = max(self.commit_hint, chosen_end)
        if chosen_end > self._commit_point.get(ballot, 0):
            if len(self._commit_point) > 1:
                self._forget_lower_ballots()
            self._commit_point[ballot] = chosen_end
        heap = self._unlearned.get(ballot)
        if heap and heap[0] < chosen_end:
            accepted = self.acceptor.accepted
            chosen = self.chosen
            first = self.first_unchosen
            while heap and heap[0] < chosen_end:
                s = heapq.heappop(heap)
                self.learn_steps += 1
                if s < first or s in chosen:
                    continue
                entry = accepted.get(s)
                if entry is not None and entry.ballot == ballot:
                    chosen[s] = entry.value
        self._emit_chosen()

    def _learn_values(self, msg: Decided) -> None:
        first = self.first_unchosen
        chosen = self.chosen
        values = msg.values
        self.learn_steps += len(values)
        for i, value in enumerate(values):
            s = msg.slot + i
            if s >= first:
                chosen.setdefault(s, value)
        if not values and msg.end > self.commit_hint:
            self.commit_hint = msg.end  # a hint only: fetched on the next tick
        if values:
            end = msg.slot + len(values)
            self.commit_hint = max(self.commit_hint, end)
            # The first message of a reply says where the reply ends: ask the same peer
            # for what follows at once, so the next reply is on its way while this one
            # is applied (pipelining).
            reply_end = max(msg.end, end)
            if reply_end > self.fetch_next:
                self.fetch_next = reply_end
                if self.commit_hint > reply_end:
                    self._fetch(msg.src, reply_end, pipelined=True)
        self._emit_chosen()
        if self.first_unchosen > first:
            # The fetch is alive only while it fills the front of the gap. A Decided
            # that lands further on (one before it was lost) keeps no timer alive:
            # else, under load, pipelined replies would keep arriving and the lost
            # slots would never be asked for again.
            self.fetch_due = self.now + self._fetch_timeout()

    def _emit_chosen(self) -> None:
        start = self.first_unchosen
        s = start
        chosen = self.chosen
        committed = self._ready.committed
        changed = False
        while s in chosen:
            value = chosen[s]
            committed.append(Entry(s, ZERO, value))
            if value[:1] == b"\xc1" and is_config_entry(value):
                self._on_config_chosen(s, value)
                changed = True
            s += 1
        if s != start:
            self.first_unchosen = s
            self._ready.persist.chosen = s
            self.commit_hint = max(self.commit_hint, s)
            starts = self.membership.starts
            if changed or (starts[-1] > start and any(start < st <= s for st in starts)):
                self._refresh_membership()
            if self.role is Role.LEADER:
                if changed and self.transfer is None:
                    self._maybe_hand_over()  # a change that removes us: hand over now
                self._fill_window()

    def _fetch_target(self) -> int:
        if not self.peers:
            return 0
        # Mostly the leader; now and then any peer, in case the leader cannot serve.
        if self.leader not in (0, self.node_id) and self.rng.random() < 0.75:
            return self.leader
        return self.peers[int(self.rng.random() * len(self.peers)) % len(self.peers)]

    def _fetch_timeout(self) -> float:
        return self.config.heartbeat_interval * 2

    def _fetch(self, peer: int, start: int, *, pipelined: bool = False) -> None:
        """Ask ``peer`` for every chosen value from ``start`` to ``commit_hint``.

        A pipelined Fetch (for what follows a reply under way) does not restart the
        timer that re-asks from ``first_unchosen``: only progress at the front does."""
        if peer == 0 or peer == self.node_id:
            return
        self._send_now((peer,), Fetch(self.node_id, start, self.commit_hint))
        if not pipelined:
            self.fetch_due = self.now + self._fetch_timeout()

    def defer_fetch(self, until: float) -> None:
        """Send no Fetch before ``until`` (a snapshot that covers the gap is arriving)."""
        self.fetch_due = max(self.fetch_due, until)

    def _on_fetch(self, msg: Fetch) -> None:
        if self.role is Role.LEADER and msg.end > self.next_slot:
            # Someone knows of a slot above everything we proposed (accepted by a
            # minority our phase 1 did not hear): our promise covers every slot, so
            # settle them with no-ops, or an idle cluster never chooses them.
            self._fill_to = max(self._fill_to, msg.end)
            self._fill_window()
        end = min(msg.end, self.first_unchosen)
        if msg.slot < self.log_start or msg.slot >= end:
            return
        # The reply streams: up to fetch_window Decided messages, each naming where the
        # whole reply ends (so the asker can ask for what follows before it is done).
        config = self.config
        stop = min(end, msg.slot + config.fetch_batch * config.fetch_window)
        values = [self.chosen[s] for s in range(msg.slot, stop)]
        chunks = self._chunks(values)[: config.fetch_window]
        reply_end = msg.slot + chunks[-1][1]
        for lo, hi in chunks:
            decided = Decided(self.node_id, msg.slot + lo, tuple(values[lo:hi]), reply_end)
            self._send_now((msg.src,), decided)

    def _chunks(self, values: Sequence[bytes]) -> list[tuple[int, int]]:
        """Split ``values`` into runs ``[lo, hi)`` for one message each: at most
        ``fetch_batch`` values and about ``fetch_bytes`` bytes (at least one value)."""
        batch, limit = self.config.fetch_batch, self.config.fetch_bytes
        chunks: list[tuple[int, int]] = []
        lo = size = 0
        for i, value in enumerate(values):
            if i > lo and (i - lo >= batch or size + len(value) > limit):
                chunks.append((lo, i))
                lo, size = i, 0
            size += len(value)
        if lo < len(values):
            chunks.append((lo, len(values)))
        return chunks

    # -- elections ---------------------------------------------------------------------------

    def _election_timeout(self) -> float:
        lo, hi = self.config.election_timeout
        if self.preferred_leader == self.node_id:
            hi = (lo + hi) / 2  # the preferred node tends to run first
        return self.rng.uniform(lo, hi)

    def _note_ballot(self, ballot: Ballot) -> None:
        if ballot > self.highest_seen:
            self.highest_seen = ballot

    def _next_ballot(self) -> Ballot:
        return max(self.highest_seen, self.acceptor.promised).next_for(self.node_id)

    def _start_prevote(self) -> None:
        if self.removed is not None or self._node_id not in self.quorum.voters:
            # Learners, joiners and removed nodes never run (nobody counts their vote).
            self.election_deadline = self.now + self._election_timeout()
            return
        held = self._lease_held_against(self.node_id)
        if held > self.now:
            # Our own promise is bound by the leases we granted, like anyone's.
            self.election_deadline = held
            return
        self.role = Role.PRECANDIDATE
        self.election_deadline = self.now + self._election_timeout()
        self.grants = {self.node_id}
        self.ballot = self._next_ballot()
        if quorum_of_each(self._all_configs(), self.grants, phase=1):
            self._start_election()
            return
        self._send_now(self.peers, PreVote(self.node_id, self.ballot, self.first_unchosen))

    def _on_prevote_reply(self, msg: PreVoteReply) -> None:
        if self.role is not Role.PRECANDIDATE or msg.ballot != self.ballot:
            return
        if msg.granted:
            self.grants.add(msg.src)
            if quorum_of_each(self._all_configs(), self.grants, phase=1):
                self._start_election()

    def _start_election(self) -> None:
        self.role = Role.CANDIDATE
        self.elections += 1
        self.ballot = self._next_ballot()
        self.highest_seen = self.ballot
        self.prepare_slot = self.first_unchosen
        self.promises = {}
        self.election_deadline = self.now + self._election_timeout()
        # Our own promise is durable before the Prepare leaves: a restart then never
        # reuses this ballot, because the next one is chosen above our promise.
        entries = self.acceptor.on_prepare(self.ballot, self.prepare_slot)
        assert entries is not None, "a fresh ballot is above our own promise"
        self._send_after_sync(self.peers, Prepare(self.node_id, self.ballot, self.prepare_slot))
        self._on_promise(Promise(self.node_id, self.ballot, tuple(entries), self._acceptor_start()))

    def _on_promise(self, msg: Promise) -> None:
        if msg.ballot != self.ballot:
            return
        if self.role is Role.LEADER:
            # A voter of a configuration that came into reach (see "Membership"); a late
            # answer to the election's Prepare adds nothing (we had a quorum without it).
            if msg.src in self._promised or msg.src not in self._prepare_asked:
                return
            self._promised.add(msg.src)
            if msg.log_start > self.next_slot:
                # It compacted chosen slots we have not proposed in: fetch, never propose.
                self._compacted = max(self._compacted, msg.log_start)
                self.commit_hint = max(self.commit_hint, msg.log_start)
                self.next_slot = msg.log_start
                self.fetch_next = self.first_unchosen
                self._fetch(msg.src, self.first_unchosen)
            self._merge_report(msg, self.next_slot)
            self._fill_window()
            return
        if self.role is not Role.CANDIDATE:
            return
        self.promises[msg.src] = msg
        # A phase-1 quorum of every configuration governing a slot we know the
        # configuration of: the current one and the pending ones.
        if quorum_of_each(self._all_configs(), self.promises.keys(), phase=1):
            self._become_leader()

    def _on_nack(self, msg: Nack) -> None:
        self._note_ballot(msg.promised)
        if self.role is Role.FOLLOWER or msg.ballot != self.ballot:
            return
        if msg.promised > self.ballot:
            self._become_follower(msg.leader if msg.leader != self.node_id else 0)

    def _become_follower(self, leader: int) -> None:
        if self.transfer is not None:
            target = self.transfer.target
            self.transfer = None
            self.transfer_result = (
                f"done: handed to node {target}"
                if leader == target
                else f"failed: deposed by node {leader or 'unknown'} first"
            )
        self.role = Role.FOLLOWER
        self.lease_until = float("-inf")
        self.read_acks.clear()
        self.probe_sent_at.clear()
        # A read index taken under a lost leadership may miss another leader's writes.
        self._ready.reads.extend((token, False) for _, _, token in self.pending_reads)
        self.pending_reads.clear()
        self.in_flight.clear()
        self.queued.clear()
        self.promises = {}
        self.config_change = None
        self._promised = set()
        self._reported = {}
        self._reported_end = 0
        self._compacted = 0
        self._fill_to = 0
        self._prepare_asked = {}
        if leader and leader != self.leader:
            self.leader = leader
            self.leader_changes += 1
        self.election_deadline = self.now + self._election_timeout()

    def _become_leader(self) -> None:
        self.role = Role.LEADER
        if self.leader != self.node_id:
            self.leader_changes += 1
        self.leader = self.node_id
        self.leader_contact = self.now
        # Slots some promiser compacted away are chosen but missing from its report:
        # fetch them, never re-propose them.
        compacted = max(p.log_start for p in self.promises.values())
        if compacted > self.first_unchosen:
            self.commit_hint = max(self.commit_hint, compacted)
            best = max(self.promises.values(), key=lambda p: p.log_start)
            self.fetch_next = self.first_unchosen
            self._fetch(best.src, self.first_unchosen)
        start = max(self.prepare_slot, compacted)
        self._promised = set(self.promises)
        self._reported = {}
        self._reported_end = start
        self._compacted = compacted
        self._prepare_asked = {}
        self._peer_heard = {}
        self._caught_up = {}
        # A change chosen before we led takes over once the slots up to its start are
        # filled: fill them with no-ops if no commands come (as its proposer would).
        self._fill_to = self.membership.starts[-1] if self.change_in_flight() else 0
        for promise in self.promises.values():
            self._merge_report(promise, start)
        self.promises = {}
        self.in_flight.clear()
        self.next_slot = start
        self._fill_window()
        if not self.in_flight:
            # Announce the new leadership at once (followers stop their elections).
            self._send_now(self.peers, Commit(self.node_id, self.ballot, self.first_unchosen))
        self.heartbeat_due = self.now + self.config.heartbeat_interval
        self._commit_sent = self.first_unchosen

    def _merge_report(self, promise: Promise, floor: int) -> None:
        """Keep, per slot from ``floor``, the highest-ballot entry promisers reported:
        the value a slot is re-proposed with (a no-op where nobody reported one, up to
        the highest slot reported). Reports of more promisers than a quorum are as
        safe as a quorum's (the highest ballot among a superset is still a value its
        ballot's leader proposed, at least as high as the quorum's)."""
        reported = self._reported
        for entry in promise.accepted:
            slot = entry.slot
            if slot < floor:
                continue
            seen = reported.get(slot)
            if seen is None or entry.ballot > seen.ballot:
                reported[slot] = entry
            if slot >= self._reported_end:
                self._reported_end = slot + 1

    def _reproposed(self, entry: Entry) -> bytes:
        """The value re-proposed for a slot a promiser reported ``entry`` at."""
        return entry.value

    # -- leader ------------------------------------------------------------------------------

    def _propose_slots(self, values: list[bytes]) -> None:
        slot = self.next_slot
        self.next_slot += len(values)
        for i, value in enumerate(values):
            self.in_flight[slot + i] = _InFlight(value, set(), self.now)
        ok = self.acceptor.on_accept(self.ballot, slot, values)
        assert ok, "a leader's promise covers its own ballot"
        # Many values (re-proposals after an election) go in several bounded messages.
        for lo, hi in self._chunks(values) if len(values) > 1 else ((0, len(values)),):
            accept = Accept(
                self.node_id, self.ballot, slot + lo, tuple(values[lo:hi]), self.first_unchosen
            )
            self._send_now(self.peers, accept)
            # Our own vote counts only once our acceptance is durable.
            self._send_after_sync(
                (self.node_id,), Accepted(self.node_id, self.ballot, slot + lo, hi - lo)
            )

    def _on_accepted(self, msg: Accepted) -> None:
        if self.role is not Role.LEADER or msg.ballot != self.ballot:
            return
        self._peer_heard[msg.src] = self.now
        span = self.membership.span
        config, end = span(msg.slot)
        counted = self._phase2_counted
        for s in range(msg.slot, msg.slot + msg.count):
            flight = self.in_flight.get(s)
            if flight is None:
                continue
            flight.acks.add(msg.src)
            if s >= end:
                config, end = span(s)
            # A phase-2 quorum of the configuration that governs this slot.
            if counted(config, flight.acks):
                del self.in_flight[s]
                self.chosen[s] = flight.value
        self._emit_chosen()
        self._fill_window()

    def _phase2_counted(self, config: Configuration, acks: set[int]) -> bool:
        """True if ``acks`` hold a phase-2 quorum of ``config`` (voters only)."""
        return config.is_phase2_quorum(acks)

    def _fill_window(self) -> None:
        """Propose into the next slots, in slot order, while the window has room: a
        reported value, a no-op below the highest reported slot, a queued value, or a
        no-op up to ``_fill_to``. Only into slots whose configuration we know (below
        ``first_unchosen + alpha``), in which we vote, and for whose configuration we
        hold a phase-1 quorum of promises (its voters are asked if not)."""
        if self.role is not Role.LEADER or self.transfer is not None:
            return  # a transfer: new slots wait until it ends (or the old leader resumes)
        room = self.config.window - len(self.in_flight)
        horizon = self.first_unchosen + self.membership.alpha
        t = self.next_slot
        values: list[bytes] = []
        queued = self.queued
        qi = 0
        reported = self._reported
        while room > 0 and t < horizon:
            config, end = self.membership.span(t)
            if not self._may_propose_in(config):
                break
            stop = min(horizon, end, t + room)
            idle = False
            while t < stop:
                entry = reported.pop(t, None) if reported else None
                if entry is not None:
                    values.append(self._reproposed(entry))
                elif t < self._reported_end:
                    values.append(NOOP)
                elif qi < len(queued):
                    values.append(queued[qi])
                    qi += 1
                elif t < self._fill_to:
                    values.append(NOOP)
                else:
                    idle = True
                    break
                t += 1
                room -= 1
            if idle:
                break
        if qi:
            del queued[:qi]
        if values:
            self._propose_slots(values)

    def _may_propose_in(self, config: Configuration) -> bool:
        """True if we may propose in slots ``config`` governs; if only promises are
        missing, ask its voters that have not promised (again each heartbeat)."""
        if self._node_id not in config.voters:
            return False  # it does not count us: we step down once it is in force
        if config.is_phase1_quorum(self._promised):
            return True
        asked = self._prepare_asked
        later = self.now - self.config.heartbeat_interval
        ask = tuple(
            v
            for v in config.voters
            if v not in self._promised and v != self._node_id and asked.get(v, -1e18) <= later
        )
        for v in ask:
            asked[v] = self.now
        self._send_now(ask, Prepare(self._node_id, self.ballot, self.next_slot))
        return False

    def _heartbeat(self) -> None:
        self.heartbeat_due = self.now + self.config.heartbeat_interval
        stale = self.now - self.config.heartbeat_interval
        resend = sorted(s for s, f in self.in_flight.items() if f.sent_at <= stale)
        # Resend unacknowledged proposals (lossy network), consecutive runs together.
        run: list[int] = []
        for s in resend:
            if run and s != run[-1] + 1:
                self._resend(run)
                run = []
            run.append(s)
        if run:
            self._resend(run)
        self._fill_window()
        if self.transfer is not None:
            ask = TransferRequest(self.node_id, self.ballot, self.first_unchosen)
            self._send_now((self.transfer.target,), ask)
        if self.config.lease_seconds > 0 and self.read_probe == self.read_probe_sent:
            # Every heartbeat renews the lease: a fresh probe, acked by the acceptors
            # (in a ballot whose lease we gave up, the acks renew nothing but tell us
            # who is up: see _check_read_quorum and _maybe_hand_over).
            self.read_probe += 1
            self.read_acks[self.read_probe] = {self.node_id}
        probe = self.read_probe if self.read_probe > self.read_confirmed else 0
        self._send_now(self.peers, Commit(self.node_id, self.ballot, self.first_unchosen, probe))
        if probe:
            self.read_probe_sent = self.read_probe
            self.probe_sent_at.setdefault(probe, self.now)
        self._commit_sent = self.first_unchosen

    def _resend(self, slots: list[int]) -> None:
        values = []
        missing: set[int] = set()
        for s in slots:
            flight = self.in_flight[s]
            flight.sent_at = self.now
            values.append(flight.value)
            missing.update(m for m in self.members if m not in flight.acks)
        others = tuple(m for m in sorted(missing) if m != self.node_id)
        if others:
            for lo, hi in self._chunks(values):
                accept = Accept(
                    self.node_id, self.ballot, slots[lo], tuple(values[lo:hi]), self.first_unchosen
                )
                self._send_now(others, accept)
        if self.node_id in missing:
            # Our own Accepted is on its way after the fsync; nothing to resend.
            pass

    def post(self, to: tuple[int, ...], msg: Message) -> None:
        """Queue ``msg`` to leave with the next Ready, at once (for the service layer)."""
        self._send_now(to, msg)

    # -- output helpers ---------------------------------------------------------------------

    def _send_now(self, to: tuple[int, ...], msg: Message) -> None:
        if to:
            self._ready.send_now.append(Send(to, msg))

    def _send_after_sync(self, to: tuple[int, ...], msg: Message) -> None:
        if to:
            self._ready.send_after_sync.append(Send(to, msg))
