"""Deliberately broken protocol variants, to prove the checks are not vacuous.

Theory of operation
-------------------
Each mutant is the real node with one textbook rule removed. The simulator must catch
every one of them within a stated number of seeds (see ``tests/test_mutants.py``);
a check that never fires on a broken protocol proves nothing about a correct one.
Mutants live in the package (not only in tests) so that ``pyxos sim ... --mutant``
can replay a failing seed of a mutant exactly.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from pyxos.core.acceptor import Acceptor
from pyxos.core.ballot import ZERO, Ballot
from pyxos.core.membership import Configuration
from pyxos.core.messages import Accept, Commit, Entry, Message, Prepare, ReadAck, TransferReady
from pyxos.core.quorum import FlexibleQuorum, QuorumSystem
from pyxos.core.ready import Ready, Rng
from pyxos.core.replica import NOOP, Replica
from pyxos.core.synod import Proposer, SynodNode
from pyxos.objects import Lock, replicated
from pyxos.statemachine.base import Application, Applied
from pyxos.statemachine.kv import KVStore
from pyxos.statemachine.replicated import (
    _DIGEST_MASK,
    ReplicatedApp,
    ReplicatedAppWithoutDedup,
    _session_hash,
    decode_batch,
)
from pyxos.storage.fs import FileSystem
from pyxos.storage.wal import (
    SEGMENT_HEADER_SIZE,
    WAL,
    RecoveryReport,
    WALCorruption,
    _find_intact_record,
    _Segment,
)

__all__ = [
    "APP_MUTANTS",
    "LAYER_MUTANTS",
    "QUORUM_MUTANTS",
    "REPLICA_MUTANTS",
    "STORE_MUTANTS",
    "SYNOD_MUTANTS",
    "WAL_MUTANTS",
    "NoFenceLock",
    "NonIntersectingQuorum",
    "SetOrderApp",
    "WallClockApp",
]


class _PromiseIgnoringAcceptor(Acceptor):
    """Accepts any ballot, even below its promise."""

    def on_accept(self, ballot: Ballot, slot: int, values: Sequence[bytes]) -> bool:
        saved = self.promised
        self.promised = min(self.promised, ballot)
        ok = super().on_accept(ballot, slot, values)
        self.promised = max(saved, self.promised)
        return ok


class _AcceptedIgnoringProposer(Proposer):
    """Proposes its own value even when an acceptor reported an accepted one."""

    def choose_value(self) -> bytes:
        return self.value


class IgnorePromiseNode(SynodNode):
    """Synod node whose acceptor ignores its promise when asked to accept."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acceptor = _PromiseIgnoringAcceptor(
            self.acceptor.promised, self.acceptor.accepted.values()
        )


class IgnoreAcceptedNode(SynodNode):
    """Synod node whose proposer ignores the values reported in promises."""

    def __init__(self, node_id: int, quorum: QuorumSystem, rng: Rng, **kw: Any) -> None:
        super().__init__(node_id, quorum, rng, **kw)
        self.proposer = _AcceptedIgnoringProposer(node_id, quorum)


class ForgetPromiseNode(SynodNode):
    """Synod node whose acceptor forgets its promise on restart (keeps accepted)."""

    def __init__(
        self,
        node_id: int,
        quorum: QuorumSystem,
        rng: Rng,
        *,
        promised: Ballot = ZERO,
        accepted: Iterable[Entry] = (),
        **kw: Any,
    ) -> None:
        accepted = list(accepted)
        # The accepted entries still raise the promise (the acceptor rule does), so
        # forget down to the highest accepted ballot only.
        floor = max((e.ballot for e in accepted), default=ZERO)
        super().__init__(node_id, quorum, rng, promised=floor, accepted=accepted, **kw)


SYNOD_MUTANTS: dict[str, type[SynodNode]] = {
    "ignore-promise": IgnorePromiseNode,
    "ignore-accepted": IgnoreAcceptedNode,
    "forget-promise": ForgetPromiseNode,
}
"""Broken single-decree variants, by the name ``--mutant`` takes."""


class NoReproposeReplica(Replica):
    """A new leader that fills every slot with a no-op instead of re-proposing."""

    def _reproposed(self, entry: Entry) -> bytes:
        return NOOP


class CommitIndexReplica(Replica):
    """A follower that takes the commit index alone as proof, without the ballot."""

    def _learn_commit(self, ballot: Ballot, chosen_end: int) -> None:
        for s in range(self.first_unchosen, chosen_end):
            entry = self.acceptor.accepted.get(s)
            if entry is not None:
                self.chosen.setdefault(s, entry.value)
        super()._learn_commit(ballot, chosen_end)


class UnpersistedPromiseReplica(Replica):
    """An acceptor that never writes its promise to disk (keeps accepted entries)."""

    def ready(self) -> Ready:
        r = super().ready()
        r.persist.promised = None
        return r


class AmnesiacReplica(Replica):
    """After its log was corrupted or wiped, votes at once as if it were a new node."""

    def __init__(
        self, *args: Any, rebuilding: bool = False, bootstrapping: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, rebuilding=False, bootstrapping=False, **kwargs)


class UnconfirmedReadReplica(Replica):
    """A leader that serves reads from its local state at once, without confirming its
    leadership with a quorum or waiting for its read index."""

    def read(self, token: object) -> bool:
        if not self.is_leader:
            return False
        self.pending_reads.append((0, 0, token))
        return True


class EternalLeaseReplica(Replica):
    """A leader whose lease, once granted, never runs out (clock trouble)."""

    def _check_read_quorum(self, probe: int) -> None:
        super()._check_read_quorum(probe)
        if self.lease_until > float("-inf"):
            self.lease_until = float("inf")


class HeartbeatDeafReplica(Replica):
    """A follower that learns chosen slots only from the commit index an Accept carries,
    never from a Commit heartbeat: once the load stops, it never learns the last slots.
    Clients see nothing wrong (the leader answers them); the replicas never converge."""

    def _on_commit(self, msg: Commit) -> None:
        if msg.ballot < self.acceptor.promised:
            super()._on_commit(msg)  # the Nack, as the real one
            return
        self._heard_from_leader(msg.ballot)
        if msg.read and not self.rebuilding:
            self._send_now((msg.src,), ReadAck(self.node_id, msg.ballot, msg.read))


class WrongDriftMarginReplica(Replica):
    """A leader whose lease is *lengthened* by the clock-drift bound instead of
    shortened (the margin's sign flipped): it outlives the grants behind it."""

    def _check_read_quorum(self, probe: int) -> None:
        sent = self.probe_sent_at.get(probe)
        before = self.lease_until
        super()._check_read_quorum(probe)
        if sent is not None and self.lease_until > before:
            config = self.config
            longer = sent + config.lease_seconds * (1.0 + config.clock_drift)
            self.lease_until = max(before, longer)


class DriftBlindLeaseReplica(Replica):
    """A leader that ignores the clock-drift bound: its lease lasts exactly as long as
    the grants behind it, which is safe only if every clock runs at one rate (a grant
    starts when the probe arrives, after the lease started)."""

    def _check_read_quorum(self, probe: int) -> None:
        sent = self.probe_sent_at.get(probe)
        before = self.lease_until
        super()._check_read_quorum(probe)
        if sent is not None and self.lease_until > before:
            self.lease_until = max(before, sent + self.config.lease_seconds)


class RebuildQuorumReplica(Replica):
    """A rebuilding node that finishes once a quorum of its peers answered, instead of
    every peer: the promise a peer it did not hear from holds may be above the maximum
    it raises its own to (the worked counterexample in ``core/replica.py``). Only that
    one condition is weakened: a bootstrapping node still waits for every peer (an
    earlier version of this mutant dropped the bootstrap path, so the simulator, whose
    nodes bootstrap, saw a cluster that never started instead of the unsafe rebuild),
    and a lost majority still stops the rebuild."""

    def peers_unanswered(self) -> set[int]:
        missing = super().peers_unanswered()
        if self.bootstrapping or not self.rebuilding:
            return missing
        answered = {p for p, i in self.rebuild_info.items() if not i.rebuilding}
        return set() if self.quorum.is_phase1_quorum(answered) else missing


class RebuildNoFenceReplica(Replica):
    """A peer that answers a rebuild query without fencing the asker's ballots: a late
    Accept of the wiped leader's old ballot, still in flight, can then complete a
    quorum with the vote the rebuilt node forgot, for a slot its rebuild did not cover
    (the gap the simulator found on the real WAL, seed 224)."""

    def _fence_refuses(self, msg: Prepare | Accept) -> bool:
        return False


class ConfigImmediateReplica(Replica):
    """A new configuration governs from the slot after the one it is chosen in, not
    ``alpha`` slots later: a leader with slots in flight past it counts their votes
    in a configuration whose voters never promised its ballot (no window)."""

    def _config_delay(self) -> int | None:
        return 1


class LearnerVotesReplica(Replica):
    """A leader that counts a learner's Accepted towards a phase-2 quorum."""

    def _phase2_counted(self, config: Configuration, acks: set[int]) -> bool:
        counted = sum(1 for a in acks if a in config.voters or a in config.learners)
        return counted >= config.q2


class RemovedVotesReplica(Replica):
    """A removed node that keeps voting, and a leader that keeps sending it Accepts and
    counts its vote towards the quorum of the configuration that removed it."""

    def _refresh_membership(self) -> None:
        super()._refresh_membership()
        retired = self.membership.retired - {self.node_id}
        self.members = tuple(sorted(set(self.members) | retired))
        self.peers = tuple(n for n in self.members if n != self.node_id)

    def _become_removed(self, reason: str) -> None:
        pass

    def _refuses_removed(self, msg: Message) -> bool:
        return False

    def _phase2_counted(self, config: Configuration, acks: set[int]) -> bool:
        retired = self.membership.retired
        counted = sum(1 for a in acks if a in config.voters or a in retired)
        return counted >= config.q2


class TransferKeepsLeaseReplica(Replica):
    """A leader that hands its leadership over but keeps its lease: the acceptors drop
    their grants on TimeoutNow, the target is elected, and the old leader would still
    serve reads from its lease (caught by the lease check)."""

    def _on_transfer_ready(self, msg: TransferReady) -> None:
        until, forfeited, sent = self.lease_until, self.lease_forfeited, dict(self.probe_sent_at)
        super()._on_transfer_ready(msg)
        self.lease_until, self.lease_forfeited = until, forfeited
        self.probe_sent_at.update(sent)


class NewConfigNoPhase1Replica(Replica):
    """A leader that proposes in slots a newer configuration governs without a phase-1
    quorum of that configuration's voters (its phase 1 in the older one taken as
    enough): a value a quorum of the new voters chose in an earlier ballot, which the
    old voters it heard from never saw, is overwritten."""

    def _may_propose_in(self, config: Configuration) -> bool:
        return self.node_id in config.voters


REPLICA_MUTANTS: dict[str, type[Replica]] = {
    "new-config-no-phase1": NewConfigNoPhase1Replica,
    "config-immediate": ConfigImmediateReplica,
    "learner-votes": LearnerVotesReplica,
    "removed-votes": RemovedVotesReplica,
    "drift-blind-lease": DriftBlindLeaseReplica,
    "wrong-drift-margin": WrongDriftMarginReplica,
    "heartbeat-deaf": HeartbeatDeafReplica,
    "rebuild-quorum": RebuildQuorumReplica,
    "rebuild-no-fence": RebuildNoFenceReplica,
    "transfer-keeps-lease": TransferKeepsLeaseReplica,
    "eternal-lease": EternalLeaseReplica,
    "unconfirmed-reads": UnconfirmedReadReplica,
    "amnesia": AmnesiacReplica,
    "no-repropose": NoReproposeReplica,
    "commit-index": CommitIndexReplica,
    "unpersisted-promise": UnpersistedPromiseReplica,
}
"""Broken Multi-Paxos variants, by the name ``pyxos sim kv --mutant`` takes."""


class NonIntersectingQuorum(FlexibleQuorum):
    """Counting quorums whose sizes skip the ``q1 + q2 > n`` check (the one a node's
    configuration, ``pyxos serve`` and ``pyxos sim kv --q1/--q2`` enforce at start).

    With ``q1 = q2 = n // 2`` a phase-1 quorum can miss every acceptor of a phase-2
    quorum: a new leader's phase 1 does not see a value chosen before it, two leaders
    elected on either side of a partition both commit, and a lease or read-index round
    confirmed by a phase-2 quorum does not fence off the other leader."""

    def __init__(self, members: Iterable[int], q1: int, q2: int) -> None:
        ordered = tuple(sorted(set(members)))
        self._members = ordered
        self.q1 = q1
        self.q2 = q2
        self._set = frozenset(ordered)


def non_intersecting(members: Sequence[int], q1: int | None, q2: int | None) -> FlexibleQuorum:
    """The ``non-intersecting-quorums`` mutant's quorum system: the given sizes, else
    ``n // 2`` each (at least 1), unchecked."""
    half = max(1, len(members) // 2)
    return NonIntersectingQuorum(members, q1 or half, q2 or half)


QUORUM_MUTANTS: dict[str, Callable[[Sequence[int], int | None, int | None], FlexibleQuorum]] = {
    "non-intersecting-quorums": non_intersecting
}
"""Broken quorum systems, by the name ``pyxos sim kv --mutant`` takes: the nodes and
the checks (what counts as chosen, whom a lease must cover) use the same one."""


A = TypeVar("A", bound=Application)


class SessionlessSnapshotStore(ReplicatedApp[A]):
    """A replication layer whose snapshot leaves out the session table (keeps the
    application's state).

    A replica that restores such a snapshot (after a restart, or by InstallSnapshot)
    has forgotten which commands it already applied: a retry of one of them, chosen
    again in a later slot, is applied a second time there and nowhere else. The log
    still agrees; the replicas' states and answers do not.
    """

    def snapshot(self) -> bytes:
        sessions, self._sessions = self._sessions, OrderedDict()
        try:
            return super().snapshot()
        finally:
            self._sessions = sessions


class FreshOnlyStore(ReplicatedApp[A]):
    """A replication layer that asserts every command it applies is new: it forgets
    that a retry of a command that was already chosen is chosen again and reaches
    ``apply``.

    The assertion trips inside a node during a run; the simulator must report that as a
    violation with the seed and its replay command, not die with a traceback.
    """

    def apply(self, slot: int, value: bytes) -> list[Applied]:
        try:
            entries = decode_batch(value) if value else []
        except msgspec.DecodeError:
            entries = []
        for client, seq, _ in entries:
            session = self.session(client)
            assert session is None or seq > session[0], (
                f"client {client} seq {seq} applied twice (slot {slot})"
            )
        return super().apply(slot, value)


class LatestOnlyDedupStore(ReplicatedApp[KVStore]):
    """A session table that recognises a repeat of a client's latest request but takes
    an older one for new and applies it again (it compares ``seq`` with the latest for
    equality, not order).

    An older request reaches the log only as a message that arrives long after the
    client moved on: a duplicate replayed several election timeouts later, or one held
    back that long. Without such messages this mutant survives ``--faults dup`` over
    300 seeds; with them it is caught at once (see ``tests/test_sim_stale.py``).
    """

    def apply(self, slot: int, value: bytes) -> list[Applied]:
        try:
            entries = decode_batch(value) if value else []
        except msgspec.DecodeError:
            entries = []
        for client, seq, _ in entries:
            session = self._sessions.get(client)
            if session is not None and seq < session.seq:
                del self._sessions[client]  # forgotten: the older request applies anew
                if self._digest is not None:
                    self._digest = (self._digest - _session_hash(session)) & _DIGEST_MASK
        return super().apply(slot, value)


StoreFactory = Callable[[], ReplicatedApp[KVStore]]
"""Makes the replicated state of one simulated KV node (a mutant's, or the real one)."""

STORE_MUTANTS: dict[str, StoreFactory] = {
    "double-apply": lambda: ReplicatedAppWithoutDedup(KVStore()),
    "sessionless-snapshot": lambda: SessionlessSnapshotStore(KVStore()),
    "fresh-only": lambda: FreshOnlyStore(KVStore()),
    "latest-only-dedup": lambda: LatestOnlyDedupStore(KVStore()),
}
"""Broken replication layers around the KV store, by the name ``pyxos sim kv
--mutant`` takes."""

LAYER_MUTANTS: dict[str, Callable[[Application], ReplicatedApp[Any]]] = {
    "double-apply": ReplicatedAppWithoutDedup,
    "sessionless-snapshot": SessionlessSnapshotStore,
    "fresh-only": FreshOnlyStore,
}
"""The same broken replication layers around any application (``pyxos sim app``)."""


class SkipDamagedRecordWAL(WAL):
    """Recovery that cuts a damaged record out of the log and carries on with the
    records after it, instead of reporting corruption: a "salvage" that silently
    forgets whatever promise or acceptance that record held."""

    @staticmethod
    def _recover(
        dirpath: Path, fs: FileSystem, initial: Sequence[tuple[int, bytes]] = ()
    ) -> tuple[list[_Segment], RecoveryReport]:
        for _ in range(64):
            try:
                return WAL._recover(dirpath, fs, initial)
            except WALCorruption as e:
                data = fs.read_bytes(e.path)
                start = max(e.offset, SEGMENT_HEADER_SIZE)
                follower = _find_intact_record(data, start + 1, len(data))
                if e.offset < SEGMENT_HEADER_SIZE or follower is None:
                    raise
                fs.truncate(e.path, e.offset)
                f = fs.open_append(e.path)
                try:
                    f.write(data[follower:])
                    f.sync()
                finally:
                    f.close()
        return WAL._recover(dirpath, fs, initial)


class SwallowFsyncErrorWAL(WAL):
    """A WAL that ignores a failed fsync ("the next one will succeed"): after Linux
    dropped the dirty pages, it reports the records durable and the node acknowledges
    what a power loss then takes."""

    def _write_group(self, segment: _Segment, group: list[bytes]) -> None:
        data = b"".join(group)
        self._active.write(data)
        with contextlib.suppress(OSError):
            self._active.sync()
        with self._lock:
            segment.count += len(group)
            segment.size += len(data)


WAL_MUTANTS: dict[str, type[WAL]] = {
    "wal-skip-damaged": SkipDamagedRecordWAL,
    "wal-swallow-fsync-error": SwallowFsyncErrorWAL,
}
"""Broken write-ahead logs, by the name ``pyxos sim kv --mutant`` takes (they matter
with ``--faults ...,disk``)."""


# -- broken applications (pyxos sim app) ------------------------------------------------------


class WallClockApp:
    """DELIBERATELY BROKEN: an application that stamps its state with the replica's
    clock on every command, as ``self.updated = time.time()`` would.

    Wraps any application; its answers are the wrapped one's (the history stays
    linearizable), but the state (the stamp is part of its snapshot) depends on which
    replica applied the command. ``clock_offset`` is this replica's clock (the
    simulator gives each replica process its own, deterministically, so a seed
    replays). Exists so the simulator can prove its divergence check catches a
    non-deterministic application; its ``state_digest`` is deliberately the default
    hash of the snapshot.
    """

    _FORWARDED = frozenset({"validate", "reject", "json_command", "json_query", "json_result"})

    def __init__(self, app: Application, *, clock_offset: float) -> None:
        self.app = app
        self.clock_offset = clock_offset
        self.applied = 0
        self.updated = 0.0
        """When the last command was applied, by this replica's clock."""

    def __getattr__(self, name: str) -> Any:
        # The wrapped application's optional hooks, but not its state digest.
        if name in WallClockApp._FORWARDED:
            return getattr(self.app, name)
        raise AttributeError(name)

    def apply(self, command: bytes) -> bytes:
        """The wrapped application's ``apply``, then the stamp."""
        result = self.app.apply(command)
        self.applied += 1
        self.updated = self.clock_offset + self.applied / 1000
        return result

    def query(self, q: bytes) -> bytes:
        """The wrapped application's ``query``."""
        return self.app.query(q)

    def snapshot(self) -> bytes:
        """The stamp and the wrapped application's snapshot."""
        return msgspec.msgpack.encode((self.updated, self.app.snapshot()))

    def restore(self, data: bytes) -> None:
        """Back from ``snapshot()``."""
        try:
            updated, inner = msgspec.msgpack.decode(data, type=tuple[float, bytes])
        except msgspec.DecodeError as e:
            raise ValueError(f"not a wall-clock snapshot: {e}") from None
        self.app.restore(inner)
        self.updated = updated


class SetOrderApp:
    """DELIBERATELY BROKEN: an application that keeps what the first element of a set
    of strings is, as ``self.first = next(iter(self.seen))`` would.

    Wraps any application; its answers are the wrapped one's (the history stays
    linearizable). It keeps the distinct commands it applied in a ``set`` of ``str``
    (each command's hex) and, in its state and snapshot, the one the set yields first.
    A ``set`` of ``str`` iterates in an order set by the process's hash seed
    (``PYTHONHASHSEED``, random per process by default): two replicas in one process
    agree on it (the set is rebuilt on ``restore`` by the same additions in the same
    order, so even a restored replica agrees), replicas in two processes need not.
    Exists so the simulator can prove that its cross-process replay
    (``pyxos.sim.determinism``) catches an application whose state depends on the
    process it runs in, which no check inside one process can see. Its
    ``state_digest`` is deliberately the default hash of the snapshot.
    """

    _FORWARDED = frozenset({"validate", "reject", "json_command", "json_query", "json_result"})

    def __init__(self, app: Application) -> None:
        self.app = app
        self.seen: set[str] = set()
        """The distinct commands applied, as hex."""
        self.added: list[str] = []
        """The same, in the order they were first applied (the snapshot's)."""
        self.first = ""
        """The command the set yields first: depends on the hash seed."""

    def __getattr__(self, name: str) -> Any:
        # The wrapped application's optional hooks, but not its state digest.
        if name in SetOrderApp._FORWARDED:
            return getattr(self.app, name)
        raise AttributeError(name)

    def apply(self, command: bytes) -> bytes:
        """The wrapped application's ``apply``; the command joins the set."""
        result = self.app.apply(command)
        self._add(command.hex())
        self.first = next(iter(self.seen))
        return result

    def _add(self, item: str) -> None:
        if item not in self.seen:
            self.seen.add(item)
            self.added.append(item)

    def query(self, q: bytes) -> bytes:
        """The wrapped application's ``query``."""
        return self.app.query(q)

    def snapshot(self) -> bytes:
        """The commands in the order applied, the first, and the wrapped snapshot."""
        return msgspec.msgpack.encode((self.added, self.first, self.app.snapshot()))

    def restore(self, data: bytes) -> None:
        """Back from ``snapshot()``."""
        try:
            added, first, inner = msgspec.msgpack.decode(data, type=tuple[list[str], str, bytes])
        except msgspec.DecodeError as e:
            raise ValueError(f"not a set-order snapshot: {e}") from None
        self.app.restore(inner)
        self.seen, self.added = set(), []
        for item in added:
            self._add(item)
        self.first = first


class NoFenceLock(Lock):
    """DELIBERATELY BROKEN: a lock without fencing tokens. Every grant carries token 1,
    and ``release`` and ``renew`` look only at the owner, so a holder whose grant
    expired cannot be told from the current one. Exists so the simulator can prove the
    lock model's linearizability check catches it (``pyxos sim app --app lock
    --mutant no-fence``)."""

    @replicated
    def acquire(self, owner: str, ttl: int) -> int | None:
        """Take the lock; token 1, always."""
        self._advance()
        if self.holder_ is None:
            self.token = 1
            self.holder_ = owner
        elif self.holder_ != owner:
            return None
        self.expires = self.now + ttl
        return self.token

    @replicated
    def renew(self, owner: str, token: int, ttl: int) -> bool:
        """Extend the grant of ``owner``, whatever the token."""
        self._advance()
        if self.holder_ != owner:
            return False
        self.expires = self.now + ttl
        return True

    @replicated
    def release(self, owner: str, token: int) -> bool:
        """Free the lock if ``owner`` holds it, whatever the token."""
        self._advance()
        if self.holder_ != owner:
            return False
        self.holder_ = None
        return True


APP_MUTANTS: tuple[str, ...] = ("wall-clock", "set-order", "no-fence")
"""Broken applications, by the name ``pyxos sim app --mutant`` takes: ``wall-clock``
wraps any application in :class:`WallClockApp`, ``set-order`` in
:class:`SetOrderApp`; ``no-fence`` runs :class:`NoFenceLock` in place of the lock."""
