"""Configurations: who votes, who only learns, and which configuration governs a slot.

Theory of operation
-------------------
Membership changes go through the log (docs/membership.md has the safety argument).
A :class:`Configuration` is a value: its ``voters`` (the acceptors counted in
quorums), its ``learners`` (nodes that receive Accepts and Commits and learn, but are
never counted), its quorum sizes ``q1`` and ``q2`` (phase 1 and phase 2, with
``q1 + q2 > len(voters)``: Flexible Paxos), ``alpha`` and an ``epoch`` that numbers
the configurations of one cluster (0: the founding one).

A change is a log entry: the core recognises a chosen value that starts with
:data:`CONFIG_MAGIC` (a byte no msgpack value begins with, so it cannot be an
application batch) and the application never sees it (the service layer applies it
as a no-op). **The alpha rule** (Lamport, "Paxos Made Simple", section 3): a
configuration chosen in slot ``s`` governs every slot from ``s + alpha`` on, until the
next one takes over. So the configuration governing slot ``t`` is a function of the
chosen values of slots ``<= t - alpha`` only, the same on every replica, and a node
that has learned every slot below ``f`` knows the configuration of every slot below
``f + alpha``. ``alpha`` is fixed at cluster creation (the founding configuration takes
it from ``ReplicaConfig.window``) and no change may alter it.

An entry is *effective* only if it is the next epoch (``epoch == latest.epoch + 1``),
keeps ``alpha``, and names no node that an earlier configuration removed (ids are never
reused). Every replica decides this from the log alone, so a second change chosen
concurrently (two leaders, each unaware of the other's) is a no-op everywhere.

:class:`Membership` is the timeline a replica keeps: the configuration governing its
first unchosen slot, the pending ones (chosen, not yet in force), and every id that a
configuration has ever named and none current or pending still does (``retired``).
Its :meth:`Membership.state` is what a snapshot carries (``MembershipState``), so a node
that catches up by snapshot learns the configurations of the slots it skipped.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Iterable, Mapping, Sequence

import msgspec

from pyxos.core.quorum import QuorumSystem

__all__ = [
    "CONFIG_MAGIC",
    "ConfigChangeError",
    "Configuration",
    "Membership",
    "MembershipState",
    "decode_config_entry",
    "encode_config_entry",
    "founding_configuration",
    "is_config_entry",
    "quorum_of_each",
]

CONFIG_MAGIC = b"\xc1pyxos-config\x00"
"""Prefix of a configuration entry in the log. 0xc1 is the one byte msgpack never
uses, so no application batch (a msgpack array) and no no-op (``b""``) starts with it."""


class ConfigChangeError(ValueError):
    """A membership change was refused (the message says why)."""


class Configuration(msgspec.Struct, frozen=True, array_like=True):
    """Who votes (``voters``), who only learns (``learners``), the quorum sizes.

    Implements :class:`~pyxos.core.quorum.QuorumSystem` (``members`` are the voters).
    """

    epoch: int
    voters: tuple[int, ...]
    learners: tuple[int, ...] = ()
    q1: int = 0
    """Phase-1 quorum size (0: a majority of the voters)."""
    q2: int = 0
    """Phase-2 quorum size (0: a majority of the voters)."""
    alpha: int = 256
    """Slots between choosing a configuration and its taking over (fixed per cluster)."""
    addresses: tuple[tuple[int, str], ...] = ()
    """``(node, "host:port")``: the peer address of each member this configuration
    names, so that every replica (and a node joining) learns where to reach a member
    added at run time. Empty in a founding configuration (its members' addresses are in
    every node's own config) and in entries written before addresses existed."""

    def __post_init__(self) -> None:
        # msgspec calls this on decode too: a malformed entry is refused the same way.
        voters = tuple(sorted(set(self.voters)))
        learners = tuple(sorted(set(self.learners)))
        if not voters:
            raise ConfigChangeError("a configuration needs at least one voter")
        if voters[0] < 1 or (learners and learners[0] < 1):
            raise ConfigChangeError("node ids must be >= 1")
        if set(voters) & set(learners):
            raise ConfigChangeError(f"nodes {sorted(set(voters) & set(learners))} are both")
        n = len(voters)
        q1 = self.q1 or n // 2 + 1
        q2 = self.q2 or n // 2 + 1
        if not (1 <= q1 <= n and 1 <= q2 <= n) or q1 + q2 <= n:
            raise ConfigChangeError(
                f"quorum sizes q1={q1} q2={q2} do not intersect over {n} voters "
                "(need 1 <= q <= n and q1 + q2 > n)"
            )
        if self.alpha < 1:
            raise ConfigChangeError("alpha must be >= 1")
        if self.epoch < 0:
            raise ConfigChangeError("epoch must be >= 0")
        addresses = tuple(sorted(dict(self.addresses).items()))
        for node, address in addresses:
            if node < 1 or not address or len(address) > 300:
                raise ConfigChangeError(f"bad address {address!r} of node {node}")
        msgspec.structs.force_setattr(self, "voters", voters)
        msgspec.structs.force_setattr(self, "learners", learners)
        msgspec.structs.force_setattr(self, "q1", q1)
        msgspec.structs.force_setattr(self, "q2", q2)
        msgspec.structs.force_setattr(self, "addresses", addresses)

    # -- QuorumSystem ----------------------------------------------------------------

    @property
    def members(self) -> tuple[int, ...]:
        """The voters, ascending (the acceptors a quorum is counted from)."""
        return self.voters

    @property
    def nodes(self) -> tuple[int, ...]:
        """Voters and learners, ascending: everyone who receives the log."""
        return tuple(sorted((*self.voters, *self.learners)))

    def _count(self, acceptors: Collection[int]) -> int:
        voters = self.voters
        return sum(1 for a in acceptors if a in voters)

    def is_phase1_quorum(self, acceptors: Collection[int]) -> bool:
        """True if at least ``q1`` voters are in ``acceptors`` (learners never count)."""
        return self._count(acceptors) >= self.q1

    def is_phase2_quorum(self, acceptors: Collection[int]) -> bool:
        """True if at least ``q2`` voters are in ``acceptors`` (learners never count)."""
        return self._count(acceptors) >= self.q2

    def live_quorums(self, live: Collection[int]) -> bool:
        """True if the ``live`` nodes hold a phase-1 and a phase-2 quorum: what the
        server checks before proposing a change (a change that leaves no live quorum
        would stall the cluster; it is refused there, not here)."""
        return self.is_phase1_quorum(live) and self.is_phase2_quorum(live)

    # -- changes (each returns the next epoch's configuration) -------------------------

    def _next(
        self,
        voters: Iterable[int],
        learners: Iterable[int],
        q1: int,
        q2: int,
        added: tuple[tuple[int, str], ...] = (),
    ) -> Configuration:
        voters, learners = tuple(voters), tuple(learners)
        named = set(voters) | set(learners)
        addresses = tuple((n, a) for n, a in (*self.addresses, *added) if n in named)
        return Configuration(
            self.epoch + 1, voters, learners, q1, q2, self.alpha, tuple(dict(addresses).items())
        )

    def address_of(self, node: int) -> str | None:
        """The peer address this configuration gives ``node`` (None: none given)."""
        return dict(self.addresses).get(node)

    def with_addresses(self, known: Mapping[int, str]) -> Configuration:
        """The same configuration, with an address from ``known`` for each of its nodes
        that has none yet (the server fills in its members' addresses this way)."""
        have = dict(self.addresses)
        extra = {n: known[n] for n in self.nodes if n not in have and n in known}
        if not extra:
            return self
        return msgspec.structs.replace(self, addresses=tuple((have | extra).items()))

    def add_learner(self, node: int, address: str = "") -> Configuration:
        """``node`` (a new id) receives the log without voting (at ``address``); the
        voters and their quorum sizes stay as they are."""
        if node in self.voters or node in self.learners:
            raise ConfigChangeError(f"node {node} is already a member")
        added = ((node, address),) if address else ()
        return self._next(self.voters, (*self.learners, node), self.q1, self.q2, added)

    def promote(self, node: int, *, q1: int = 0, q2: int = 0) -> Configuration:
        """Learner ``node`` becomes a voter (quorum sizes: majorities unless given)."""
        if node not in self.learners:
            raise ConfigChangeError(f"node {node} is not a learner")
        learners = [n for n in self.learners if n != node]
        return self._next((*self.voters, node), learners, q1, q2)

    def remove(self, node: int, *, q1: int = 0, q2: int = 0) -> Configuration:
        """``node`` (voter or learner) leaves for good; its id is never used again."""
        if node not in self.voters and node not in self.learners:
            raise ConfigChangeError(f"node {node} is not a member")
        voters = [n for n in self.voters if n != node]
        learners = [n for n in self.learners if n != node]
        return self._next(voters, learners, q1, q2)

    def replace(
        self, old: int, new: int, *, q1: int = 0, q2: int = 0, address: str = ""
    ) -> Configuration:
        """Voter ``old`` leaves and the new id ``new`` votes in its place, in one change."""
        if old not in self.voters:
            raise ConfigChangeError(f"node {old} is not a voter")
        if new in self.voters or new in self.learners:
            raise ConfigChangeError(f"node {new} is already a member")
        voters = [n for n in self.voters if n != old] + [new]
        added = ((new, address),) if address else ()
        return self._next(voters, self.learners, q1, q2, added)

    def with_quorums(self, q1: int, q2: int) -> Configuration:
        """The same members with other quorum sizes (flexible quorums)."""
        return self._next(self.voters, self.learners, q1, q2)


_encoder = msgspec.msgpack.Encoder()
_config_decoder = msgspec.msgpack.Decoder(Configuration)


def encode_config_entry(config: Configuration) -> bytes:
    """The log value that proposes ``config``."""
    return CONFIG_MAGIC + _encoder.encode(config)


def is_config_entry(value: bytes) -> bool:
    """True if ``value`` is a configuration entry (not an application batch)."""
    return value[:1] == b"\xc1" and value.startswith(CONFIG_MAGIC)


def decode_config_entry(value: bytes) -> Configuration:
    """The configuration a log value proposes; ``ConfigChangeError`` if malformed."""
    try:
        return _config_decoder.decode(value[len(CONFIG_MAGIC) :])
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ConfigChangeError(f"malformed configuration entry: {e}") from None


class MembershipState(msgspec.Struct, frozen=True, array_like=True):
    """What a snapshot of the slots below ``slot`` carries about membership: the
    configurations that govern slots from ``slot`` on (``(start, configuration)``,
    the first governing ``slot`` itself), and the retired ids."""

    slot: int
    configs: tuple[tuple[int, Configuration], ...]
    retired: tuple[int, ...] = ()


class Membership:
    """The configuration timeline of one replica (see the module notes)."""

    def __init__(self, founding: Configuration) -> None:
        self.starts: list[int] = [0]
        """Ascending: ``configs[i]`` governs ``[starts[i], starts[i + 1])``."""
        self.configs: list[Configuration] = [founding]
        self.retired: set[int] = set()
        """Ids a configuration named once and no current or pending one names: never
        a member again (ids are not reused)."""
        self.refused: list[tuple[int, str]] = []
        """(slot, why) of configuration entries chosen but not effective."""

    @property
    def alpha(self) -> int:
        """The cluster's alpha (the same in every configuration)."""
        return self.configs[0].alpha

    @property
    def latest(self) -> Configuration:
        """The newest configuration chosen (maybe not yet in force)."""
        return self.configs[-1]

    def at(self, slot: int) -> Configuration:
        """The configuration governing ``slot`` (as far as this timeline knows)."""
        return self.configs[bisect.bisect_right(self.starts, slot) - 1]

    def span(self, slot: int) -> tuple[Configuration, int]:
        """The configuration governing ``slot`` and the slot where the next starts
        (a large number if none is known)."""
        i = bisect.bisect_right(self.starts, slot) - 1
        end = self.starts[i + 1] if i + 1 < len(self.starts) else 1 << 62
        return self.configs[i], end

    def from_slot(self, slot: int) -> list[tuple[int, Configuration]]:
        """``(start, configuration)`` of the one governing ``slot`` and every later one."""
        i = bisect.bisect_right(self.starts, slot) - 1
        return list(zip(self.starts[i:], self.configs[i:], strict=True))

    def pending_after(self, slot: int) -> bool:
        """True if a chosen configuration starts after ``slot`` (a change in flight)."""
        return self.starts[-1] > slot

    def check(self, config: Configuration) -> str | None:
        """Why ``config`` cannot follow the latest one (None: it can)."""
        latest = self.latest
        if config.epoch != latest.epoch + 1:
            return f"epoch {config.epoch} does not follow epoch {latest.epoch}"
        if config.alpha != latest.alpha:
            return f"alpha {config.alpha} differs from the cluster's {latest.alpha}"
        reused = sorted(set(config.nodes) & self.retired)
        if reused:
            return f"nodes {reused} were removed and their ids are never reused"
        return None

    def chosen(self, slot: int, value: bytes, delay: int | None = None) -> Configuration | None:
        """A configuration entry was chosen at ``slot`` (entries arrive in slot order):
        record it if effective, in force from ``slot + alpha`` (``delay`` replaces
        alpha there: only a mutant does that); returns it, or None if refused."""
        try:
            config = decode_config_entry(value)
        except ConfigChangeError as e:
            self.refused.append((slot, str(e)))
            return None
        why = self.check(config)
        if why is not None:
            self.refused.append((slot, why))
            return None
        start = slot + (self.alpha if delay is None else delay)
        while self.starts and self.starts[-1] >= start:  # only in a mutant's timeline
            self.starts.pop()
            self.configs.pop()
        self.starts.append(start)
        self.configs.append(config)
        return config

    def advance(self, first_unchosen: int, keep_from: int) -> None:
        """Slots below ``first_unchosen`` are chosen: ids no current or pending
        configuration names retire. Configurations wholly below ``keep_from`` (the
        oldest slot a snapshot may still be taken at) are forgotten."""
        i = bisect.bisect_right(self.starts, first_unchosen) - 1
        current: set[int] = set()
        for config in self.configs[i:]:
            current.update(config.nodes)
        for config in self.configs[:i]:
            self.retired.update(n for n in config.nodes if n not in current)
        j = bisect.bisect_right(self.starts, min(keep_from, first_unchosen)) - 1
        if j > 0:
            del self.starts[:j]
            del self.configs[:j]

    def nodes_from(self, slot: int) -> set[int]:
        """Every voter and learner of the configurations governing ``slot`` and later."""
        out: set[int] = set()
        for _, config in self.from_slot(slot):
            out.update(config.nodes)
        return out

    def state(self, slot: int) -> MembershipState:
        """What a snapshot of the slots below ``slot`` carries (``slot`` at least the
        oldest start kept)."""
        configs = tuple(
            (start, config)
            for start, config in zip(self.starts, self.configs, strict=True)
            if start - self.alpha < slot or start == self.starts[0]
        )
        i = max(0, bisect.bisect_right([s for s, _ in configs], slot) - 1)
        # Retired as of ``slot``: an id retired since is still named by a configuration
        # governing a slot from ``slot`` on.
        named: set[int] = set()
        for _, config in configs[i:]:
            named.update(config.nodes)
        return MembershipState(slot, configs[i:], tuple(sorted(self.retired - named)))

    def install(self, state: MembershipState) -> None:
        """Adopt a snapshot's membership (it covers more of the log than we learned)."""
        if not state.configs:
            return
        self.starts = [s for s, _ in state.configs]
        self.configs = [c for _, c in state.configs]
        self.retired = set(state.retired)


def quorum_of_each(
    configs: Sequence[Configuration], acceptors: Collection[int], *, phase: int
) -> bool:
    """True if ``acceptors`` hold a phase-``phase`` quorum of every configuration."""
    if phase == 1:
        return all(c.is_phase1_quorum(acceptors) for c in configs)
    return all(c.is_phase2_quorum(acceptors) for c in configs)


def founding_configuration(quorum: QuorumSystem, window: int) -> Configuration:
    """The configuration of slot 0: ``quorum`` itself if it is a :class:`Configuration`,
    else its members as voters with its quorum sizes (``q1``/``q2`` if it has them,
    majorities otherwise) and ``alpha = window``."""
    if isinstance(quorum, Configuration):
        return quorum
    q1 = int(getattr(quorum, "q1", 0))
    q2 = int(getattr(quorum, "q2", 0))
    try:
        return Configuration(0, tuple(quorum.members), (), q1, q2, window)
    except ConfigChangeError:
        # Sizes that do not intersect: only a mutant passes them (the server validates
        # its quorum sizes at start); keep them, so the simulator can show the harm.
        config = Configuration(0, tuple(quorum.members), (), 0, 0, window)
        msgspec.structs.force_setattr(config, "q1", q1)
        msgspec.structs.force_setattr(config, "q2", q2)
        return config
