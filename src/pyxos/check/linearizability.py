"""Linearizability checker for key-value store histories.

Theory of operation
===================

A history is linearizable if every operation can be given a single instant (its
linearization point) between its call and its return such that, taken in the order of
those instants, the operations are a legal run of a sequential key-value store starting
from an empty store. An operation whose outcome is unknown has no return: its point may
be anywhere after its call, or it may never take effect.

1. Per key (P-compositionality). Operations on different keys never constrain each other,
   so each key's sub-history is checked on its own, as one register holding a string or
   "absent". Gets with an unknown outcome, and gets, puts and deletes that returned a
   definite failure, constrain nothing and are dropped first.

2. Value abstraction. Only values that some operation compares the register with matter:
   the outputs of gets and the ``expected`` of every cas. Every other value written is
   replaced by one token, OTHER, so the register's state is a small int.

3. Search: Wing & Gong's, with Lowe's improvements. A configuration is the set of
   operations already decided (linearized, or skipped for good) and the register's
   state; the search walks configurations depth first, with an explicit stack.

   - Just-in-time linearization: the *forced* operation is the undecided one of known
     outcome that returns first. Only operations called no later than it returns may be
     linearized before it (the others must follow it). It is tried first, then ops that
     make it legal if it is not, then the other candidates in call order.
   - Memoization: a configuration reached again by another order cannot succeed where
     the first visit failed. Dominance strengthens it: one with the same definite ops
     decided and the same state but *more* optional ops used up is no better either.
   - Unknown-outcome writes are *optional*: success is declared once every operation of
     known outcome is placed, so one that never helps is never linearized ("never took
     effect"). It is only linearized right before an operation that needs its effect
     (illegal before, legal after); any linearization can be rearranged into that form
     by moving optional ops later or dropping them. Optional ops with the same effect
     are interchangeable once called, so only the first one is tried.
   - Partial-order reduction: a read of the current value (or a cas failing against it)
     that may go now changes nothing, so it can go first in any completion; it is then
     the only move tried.
   - Dead ends found early: if the forced op is illegal and no candidate can produce the
     value it needs, or if leaving the current value would strand an op that still needs
     it with nothing left to write it again, the configuration is abandoned at once.

4. Counterexample windows. Cut a linearizable history at any time T, keeping the ops
   called by T and making those still running at T optional: it stays linearizable (cut
   the linearization at T). Likewise a *window* starting at the call of op i, checked from
   an unknown starting value with the earlier ops still in flight then made optional,
   is linearizable if the history is. So a failing window proves the history is not
   linearizable, on its own; and both properties are monotone (in T, and in i), so the
   smallest failing window is found by binary search: first the earliest T (always a
   return: the operation returning then is the *culprit*), then the latest start i.
   Windows are tried where the search is stuck (around the forced op no branch gets
   past), growing 8, 16, 32... ops back from it. An unknown starting value is a state
   of its own, narrowed by failed cas ops (the set of values it cannot be), and resolved
   by the first read.

5. Budgets. The exhaustive search that proves a long, very concurrent history wrong can
   take long, where a short window near the violation shows it in milliseconds. So the
   full search runs in chunks, and when it has not got further for a while, windows
   where it is stuck are tried; each window check has a budget of configurations and
   counts as undecided past it (then it proves nothing).
"""

from __future__ import annotations

import time
from bisect import bisect_left, bisect_right
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from pyxos.check.generic import load_kv_history
from pyxos.check.history import HistoryError, Operation

__all__ = ["CheckResult", "check_history", "run_check"]

# Abstract operation kinds. Definite ones must be linearized; optional ones may be.
_READ = 0  # a: the value read
_WRITE = 1  # a: the value written (put, and delete writing _ABSENT)
_CAS = 2  # a: expected, b: value written
_CAS_FAIL = 3  # a: expected (the register did not hold it)
_OPT_WRITE = 4  # a: the value written, if it takes effect
_OPT_CAS = 5  # a: expected, b: value written, if it takes effect

# Abstract register states.
_ANY = -1  # "some value we do not know" (start of a window); every read resolves it
_ABSENT = 0
_OTHER = 1  # any value that no operation of the problem compares with
_NO_GUARD = -(1 << 62)  # configuration not reached through an optional operation
_INF = float("inf")

_EXIT_OK = 0
_EXIT_VIOLATION = 1
_EXIT_BAD_INPUT = 2
_EXIT_TIMEOUT = 3


class _CheckTimeout(Exception):
    """Raised internally when the search runs past its deadline."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckResult:
    """The verdict of :func:`check_history`.

    ``ok`` is True only if every key was proven linearizable. ``timed_out`` is True if
    the search ran out of time before a verdict (then ``ok`` is False too). Otherwise,
    when a key is not linearizable, ``failing_key`` names it and ``window`` holds a short
    run of its operations, in call order, that on its own cannot be explained:

    - ``culprit`` is the operation whose return makes it fail (None if the window could
      not be narrowed in time); the window up to just before that is explainable.
    - ``window_from_start``: the window starts at the beginning of the key's history,
      where the key is absent. Otherwise it starts in the middle and fails whatever
      value the key held then.
    - ``window_maybe[i]`` is True for an operation that may or may not have taken
      effect within the window: its outcome is unknown, or it began before the window,
      or it was still running when the culprit returned.
    """

    ok: bool
    failing_key: str | None = None
    window: list[Operation] = field(default_factory=list)
    window_maybe: list[bool] = field(default_factory=list)
    culprit: Operation | None = None
    window_from_start: bool = True
    keys_checked: int = 0
    ops_checked: int = 0
    elapsed_s: float = 0.0
    timed_out: bool = False

    def describe(self) -> str:
        """A human-readable explanation of the verdict, several lines for a violation."""
        scope = (
            f"{self.ops_checked} operations on {self.keys_checked} keys in {self.elapsed_s:.3f} s"
        )
        if self.ok:
            return f"linearizable: checked {scope}"
        if self.timed_out:
            return f"unknown: the search timed out after checking {scope}"
        start = "an absent key" if self.window_from_start else "any value of the key"
        lines = [
            f"NOT linearizable: key {self.failing_key!r} (checked {scope})",
            f"No order of {_these(len(self.window))}, each taking effect at one instant"
            f" between its call and return, is a legal run starting from {start}.",
        ]
        if any(self.window_maybe):
            lines.append(
                "'?': may or may not have taken effect (outcome unknown, began before the"
                " window, or still running when the last one returned)."
            )
        if self.culprit is not None:
            lines.append("'=>': until this one returned, the operations could be explained.")
        maybe = self.window_maybe or [False] * len(self.window)
        # Unknown-outcome ops called long before the window may take effect in it, so
        # they belong to it; but beyond a few, listing them says little.
        first = next((op.call for op, m in zip(self.window, maybe, strict=True) if not m), None)
        stale = [
            n
            for n, op in enumerate(self.window)
            if maybe[n] and op.unknown and first is not None and op.call < first
        ]
        hidden = set(stale[:-_SHOWN_STALE]) if len(stale) > _SHOWN_STALE else set()
        if hidden:
            lines.append(
                f" ?  ... {len(hidden)} earlier operations with unknown outcome,"
                " not shown (in result.window)"
            )
        pairs = zip(self.window, maybe, strict=True)
        shown = [pair for n, pair in enumerate(pairs) if n not in hidden]
        if len(shown) > _SHOWN_MAX:
            lines.append(
                f"    ... {len(shown) - _SHOWN_MAX} earlier operations not shown (in result.window)"
            )
            shown = shown[-_SHOWN_MAX:]
        times = [t for op, _ in shown for t in (op.call, op.return_) if t is not None]
        t0 = min(times, default=0)
        unit = _time_unit(max(times, default=0) - t0)
        for op, is_maybe in shown:
            mark = "=>" if op is self.culprit else "? " if is_maybe else "  "
            lines.append(f" {mark} {_format_op(op, t0, unit)}")
        return "\n".join(lines)


def _these(n: int) -> str:
    return "this 1 operation" if n == 1 else f"these {n} operations"


_SHOWN_STALE = 3  # unknown-outcome ops from before a window that describe() lists
_SHOWN_MAX = 40  # operations describe() lists; the latest ones


def _time_unit(span_ns: int) -> tuple[str, float, int]:
    """A unit to show times relative to the window's start: (suffix, ns per unit, digits)."""
    if span_ns < 10_000:
        return "ns", 1.0, 0
    if span_ns < 10_000_000:
        return "us", 1e3, 1
    return "ms", 1e6, 3


def _format_op(op: Operation, t0: int, unit: tuple[str, float, int]) -> str:
    suffix, scale, digits = unit

    def when(t: int | None) -> str:
        return "?" if t is None else f"+{(t - t0) / scale:.{digits}f}{suffix}"

    def val(v: str | None) -> str:
        return "absent" if v is None else repr(v)

    if op.op == "get":
        what = f"get -> {val(op.output)}" if not op.unknown else "get"
    elif op.op == "put":
        what = f"put {val(op.value)}"
    elif op.op == "delete":
        what = "delete"
    else:
        what = f"cas {val(op.expected)} -> {val(op.value)}"
    if op.unknown:
        outcome = "outcome unknown"
    elif op.op == "cas":
        outcome = "ok" if op.ok else "failed (value differed)"
    else:
        outcome = "ok" if op.ok else "failed"
    return (
        f"client {op.client:<4} {what:<36} call {when(op.call):>13}"
        f"  return {when(op.return_):>13}  {outcome}"
    )


def _relevant(op: Operation) -> bool:
    """Whether ``op`` can constrain the register at all."""
    if op.unknown:
        return op.op != "get"  # an unknown read says nothing
    return op.ok is True or op.op == "cas"  # a failed get/put/delete never took effect


@dataclass(slots=True)
class _Problem:
    """One key's (sub-)history compiled for the search.

    Definite operations are numbered 0..n_def-1 in call order, optional ones
    0..n_opt-1 in call order; ``def_by_ret`` lists definite ones by return time.
    Values are small ints (see ``_ABSENT``, ``_OTHER``).
    """

    used: list[Operation] = field(default_factory=list)  # ops kept, in call order
    used_optional: list[bool] = field(default_factory=list)  # per op of ``used``
    n_def: int = 0
    dkind: list[int] = field(default_factory=list)
    da: list[int] = field(default_factory=list)
    db: list[int] = field(default_factory=list)
    # Bounded optional ops that must be skipped for good once this op is linearized.
    ddead: list[int] = field(default_factory=list)
    def_ops: list[Operation] = field(default_factory=list)
    def_call: list[int] = field(default_factory=list)
    def_return: list[int] = field(default_factory=list)
    def_by_ret: list[int] = field(default_factory=list)
    def_ret: list[int] = field(default_factory=list)  # return time of def_by_ret[p]
    # How many definite / optional ops are called no later than def_by_ret[p] returns.
    def_hi: list[int] = field(default_factory=list)
    opt_hi: list[int] = field(default_factory=list)
    okind: list[int] = field(default_factory=list)
    oa: list[int] = field(default_factory=list)
    ob: list[int] = field(default_factory=list)
    obounded: list[bool] = field(default_factory=list)
    oclass: list[int] = field(default_factory=list)
    odead: list[int] = field(default_factory=list)
    # Per value: definite ops that need the register to hold it (reads, successful
    # cas), and definite / optional ops that can put it there; indices ascending.
    observers: dict[int, list[int]] = field(default_factory=dict)
    # observers_last_return[v][n]: the latest return among observers[v][n:].
    observers_last_return: dict[int, list[int]] = field(default_factory=dict)
    def_producers: dict[int, list[int]] = field(default_factory=dict)
    opt_producers: dict[int, list[int]] = field(default_factory=dict)


def _compile(ops: Sequence[Operation], n_maybe: int = 0, until: float = _INF) -> _Problem:
    """Compile ``ops`` (relevant, sorted by call) into a search problem.

    The history is cut at time ``until``: an operation still running then (returning
    later) may or may not have taken effect, so it is optional. The first ``n_maybe``
    operations are window context (see ``_window``): optional, bounded by their return
    when it is known and before ``until``.
    """
    # Pass 1: classify, and collect the values anything compares with.
    compared: dict[str | None, int] = {None: _ABSENT}
    absent_compared = False
    has_cas_fail = False
    # (op, kind, a, b, bounded, optional) with a and b still raw values
    raw: list[tuple[Operation, int, str | None, str | None, bool, bool]] = []
    for idx, op in enumerate(ops):
        maybe = idx < n_maybe
        running = op.unknown or op.return_ is None or op.return_ > until
        optional = maybe or running
        bounded = optional and not running
        if op.op == "get":
            if optional:
                continue  # an optional read constrains nothing
            raw.append((op, _READ, op.output, None, False, False))
            compared.setdefault(op.output, len(compared) + 1)
            absent_compared |= op.output is None
        elif op.op == "cas":
            compared.setdefault(op.expected, len(compared) + 1)
            absent_compared |= op.expected is None
            if optional:
                if op.ok is False and not op.unknown:
                    continue  # a failed compare has no effect to take
                raw.append((op, _OPT_CAS, op.expected, op.value, bounded, True))
            elif op.ok:
                raw.append((op, _CAS, op.expected, op.value, False, False))
            else:
                has_cas_fail = True
                raw.append((op, _CAS_FAIL, op.expected, None, False, False))
        else:
            v = op.value if op.op == "put" else None
            kind = _OPT_WRITE if optional else _WRITE
            raw.append((op, kind, v, None, bounded, optional))
    # ids: None -> 0, OTHER -> 1, compared values -> 2.. (setdefault above skipped 1)

    def vid(v: str | None) -> int:
        return compared.get(v, _OTHER)

    pb = _Problem()
    dcall: list[int] = []
    dret: list[int] = []
    ocall: list[int] = []
    bounded_rets: list[tuple[int, int]] = []  # (return, optional index)
    classes: dict[tuple[int, int, int], int] = {}
    for op, kind, a_raw, b_raw, bounded, optional in raw:
        a = vid(a_raw)
        b = vid(b_raw) if kind in (_CAS, _OPT_CAS) else 0
        if kind >= _OPT_WRITE:
            written = a if kind == _OPT_WRITE else b
            # A register holding a value nothing reads or compares with can only be
            # overwritten blindly, unless a failed cas wants "anything but expected":
            # writing such a value is no use.
            unseen = written == _OTHER or (written == _ABSENT and not absent_compared)
            if unseen and not has_cas_fail:
                continue
            k = len(pb.okind)
            pb.okind.append(kind)
            pb.oa.append(a)
            pb.ob.append(b)
            pb.obounded.append(bounded)
            pb.oclass.append(classes.setdefault((kind, a, b), len(classes)))
            pb.opt_producers.setdefault(written, []).append(k)
            ocall.append(op.call)
            if bounded:
                assert op.return_ is not None
                bounded_rets.append((op.return_, k))
        else:
            assert op.return_ is not None
            j = len(pb.dkind)
            if kind in (_READ, _CAS):
                pb.observers.setdefault(a, []).append(j)
            if kind in (_WRITE, _CAS):
                pb.def_producers.setdefault(a if kind == _WRITE else b, []).append(j)
            pb.def_return.append(op.return_)
            pb.def_ops.append(op)
            pb.dkind.append(kind)
            pb.da.append(a)
            pb.db.append(b)
            dcall.append(op.call)
            dret.append(op.return_)
        pb.used.append(op)
        pb.used_optional.append(optional)
    pb.n_def = len(pb.dkind)
    for value, obs in pb.observers.items():
        last = pb.observers_last_return[value] = [pb.def_return[j] for j in obs]
        for n in range(len(last) - 2, -1, -1):
            last[n] = max(last[n], last[n + 1])
    pb.def_call = dcall
    pb.def_by_ret = sorted(range(pb.n_def), key=lambda j: (dret[j], j))
    pb.def_ret = [dret[j] for j in pb.def_by_ret]
    pb.def_hi = [bisect_right(dcall, r) for r in pb.def_ret]
    pb.opt_hi = [bisect_right(ocall, r) for r in pb.def_ret]
    # An optional op bounded by its return must be skipped for good as soon as an op
    # called after that return is linearized.
    bounded_rets.sort()
    brets = [r for r, _ in bounded_rets]

    def dead_mask(call: int) -> int:
        m = 0
        for _, k in bounded_rets[: bisect_right(brets, call - 1)]:
            m |= 1 << k
        return m

    if bounded_rets:
        pb.ddead = [dead_mask(c) for c in dcall]
        pb.odead = [dead_mask(c) for c in ocall]
    else:
        pb.ddead = [0] * pb.n_def
        pb.odead = [0] * len(ocall)
    return pb


# A search child: (is_optional, index, new_state, new_guard).
_Child = tuple[bool, int, int, int]


_YIELD_EVERY = 1024


@dataclass(slots=True)
class _Progress:
    furthest: int  # forced-op position no branch has got past yet
    horizon: int  # latest return of an op a pruning decision depended on (-1: none)
    configs: int


@dataclass(slots=True)
class _Outcome:
    ok: bool
    furthest: int  # forced-op position no branch got past (when not ok)
    configs: int
    horizon: int = -1  # latest return of an op a pruning decision depended on


def _searcher(pb: _Problem, initial: int) -> Generator[_Progress, None, _Outcome]:
    """Depth-first search for a linearization of ``pb`` from register state ``initial``.

    A generator, so that callers can bound and resume it: it yields its progress every
    ``_YIELD_EVERY`` configurations and returns the outcome.

    A configuration is (base, rest, omask, state, guard): definite ops below ``base``
    are decided and bit i of ``rest`` says whether definite op ``base + i`` is;
    ``omask`` has a bit per decided optional op; ``guard`` is the state before the
    optional op just linearized (the next op must need that op's effect), or
    ``_NO_GUARD``. A state below zero is an unknown value known to differ from the
    values in ``excluded[-1 - state]`` (``_ANY``: nothing known).
    """
    n_def = pb.n_def
    if n_def == 0:
        return _Outcome(True, 0, 0)
    yield_mask = _YIELD_EVERY - 1
    dkind, da, db, ddead = pb.dkind, pb.da, pb.db, pb.ddead
    order, def_hi, opt_hi = pb.def_by_ret, pb.def_hi, pb.opt_hi
    observers, def_producers, opt_producers = pb.observers, pb.def_producers, pb.opt_producers
    observers_last_return = pb.observers_last_return
    okind, oa, ob, obounded, oclass, odead = (
        pb.okind,
        pb.oa,
        pb.ob,
        pb.obounded,
        pb.oclass,
        pb.odead,
    )
    n_opt = len(okind)
    owritten = [oa[k] if okind[k] == _OPT_WRITE else ob[k] for k in range(n_opt)]
    opt_cas = [k for k in range(n_opt) if okind[k] == _OPT_CAS]
    bounded_opt = [k for k in range(n_opt) if obounded[k]]
    excluded: list[frozenset[int]] = [frozenset()]
    unknown_state: dict[frozenset[int], int] = {frozenset(): _ANY}

    def holds(st: int, a: int) -> bool:
        """Whether the register may hold ``a`` in state ``st``."""
        return st == a or (st < 0 and a not in excluded[-1 - st])

    def without(st: int, a: int) -> int:
        """State ``st`` after learning that the register does not hold ``a``."""
        if st >= 0:
            return st
        ex = excluded[-1 - st] | {a}
        s = unknown_state.get(ex)
        if s is None:
            excluded.append(ex)
            s = unknown_state[ex] = -len(excluded)
        return s

    def legal_in(j: int, st: int) -> bool:
        kind = dkind[j]
        if kind == _WRITE:
            return True
        if kind == _CAS_FAIL:
            return st != da[j]
        return holds(st, da[j])

    def unblocks(ns: int, want: int, want_not: int) -> bool:
        return ns == want or (want_not >= 0 and ns != want_not)

    def expand(base: int, rest: int, omask: int, st: int, guard: int, dptr: int) -> list[_Child]:
        """Children of a configuration, in reverse order of preference (for pop())."""
        forced = order[dptr]
        # Definite candidates: those called no later than the forced op returns.
        all_cand = cand = ~rest & ((1 << (def_hi[dptr] - base)) - 1)
        if st >= 0:
            # Partial-order reduction: an op that leaves the state alone and is legal
            # now (a read of the current value, a cas failing against it) can move to
            # the front of any completion, so it is the only child needed. Not if that
            # would skip an optional op (ddead); not from an unknown state, which such
            # an op would narrow.
            while cand:
                low = cand & -cand
                cand ^= low
                j = base + low.bit_length() - 1
                kind = dkind[j]
                observes = (kind == _READ and da[j] == st) or (kind == _CAS_FAIL and da[j] != st)
                if observes and not ddead[j] & ~omask:
                    return [(False, j, st, _NO_GUARD)]
            cand = all_cand
        # If the forced op cannot go now, something must first make the register hold
        # ``want`` (or anything but ``want_not``).
        want = want_not = -1
        if not legal_in(forced, st):
            if dkind[forced] == _CAS_FAIL:
                want_not = st
            else:
                want = da[forced]
        blocked = want >= 0 or want_not >= 0
        producible = False
        # If an undecided op still needs the current value and nothing undecided can
        # write it again, leaving it is fatal (except by that op, if it is the only one).
        keep = False
        last_observer = -1
        obs = observers.get(st) if st >= 0 else None
        if obs:
            waiting = 0
            first_n = 0
            for n in range(bisect_left(obs, base), len(obs)):
                j = obs[n]
                if not (rest >> (j - base)) & 1:
                    waiting += 1
                    if waiting == 1:
                        first_n, last_observer = n, j
                    else:
                        break
            if waiting:
                keep = True
                for j in reversed(def_producers.get(st, ())):
                    if j < base:
                        break
                    if not (rest >> (j - base)) & 1:
                        keep = False
                        break
                if keep:
                    for k in opt_producers.get(st, ()):
                        if not (omask >> k) & 1:
                            keep = False
                            break
                if keep and observers_last_return[st][first_n] > horizon[0]:
                    # Failing here depends on ops that may return much later.
                    horizon[0] = observers_last_return[st][first_n]
                if waiting == 2:
                    last_observer = -1
        need: set[int] = set()  # values some definite candidate needs and lacks
        need_change = False  # some failed cas needs the register to change
        forced_child: _Child | None = None
        unblockers: list[_Child] = []
        others: list[_Child] = []
        guarded = guard != _NO_GUARD
        while cand:
            low = cand & -cand
            cand ^= low
            j = base + low.bit_length() - 1
            kind = dkind[j]
            a = da[j]
            if kind == _WRITE:
                ns = a
                legal = True
            elif kind == _CAS_FAIL:
                legal = st != a
                ns = without(st, a)
                if not legal:
                    need_change = True
            else:
                legal = holds(st, a)
                ns = a if kind == _READ else db[j]
                if not legal:
                    need.add(a)
            if kind != _READ and blocked and unblocks(ns, want, want_not):
                producible = True
            if not legal:
                continue
            if guarded and legal_in(j, guard):
                continue  # it did not need the optional op just linearized
            if keep and ns != st and j != last_observer:
                continue
            child = (False, j, ns, _NO_GUARD)
            if j == forced:
                forced_child = child
            elif blocked and ns != st and unblocks(ns, want, want_not):
                unblockers.append(child)
            else:
                others.append(child)
        # Optional candidates: only where something needs their effect.
        opt_unblockers: list[_Child] = []
        opt_others: list[_Child] = []
        ohi = opt_hi[dptr]
        ocand = ~omask & ((1 << ohi) - 1) if ohi else 0
        if ocand:
            if blocked and not producible:
                if want >= 0:
                    producible = any((ocand >> k) & 1 for k in opt_producers.get(want, ()))
                else:
                    producible = any(
                        (ocand >> k) & 1 and owritten[k] != want_not for k in range(ohi)
                    )
            # Optional cas ops enabled by an optional write may be needed too.
            for k in opt_cas:
                if k >= ohi:
                    break
                if (ocand >> k) & 1 and not holds(st, oa[k]):
                    need.add(oa[k])
            if need_change:
                examine: Iterable[int] = (k for k in range(ohi) if (ocand >> k) & 1)
            else:
                chosen = {k for v in need for k in opt_producers.get(v, ()) if (ocand >> k) & 1}
                chosen.update(k for k in bounded_opt if (ocand >> k) & 1)
                examine = sorted(chosen)
            seen_class: set[int] = set()
            for k in examine:
                if okind[k] == _OPT_WRITE:
                    if guarded:
                        continue  # blind write: hides the optional op before it
                elif not holds(st, oa[k]):
                    continue  # a no-op: the same as not taking effect
                ns = owritten[k]
                if ns == st or keep:
                    continue
                if obounded[k]:
                    child = (True, k, ns, _NO_GUARD)
                else:
                    if not (need_change or ns in need):
                        continue
                    c = oclass[k]
                    if c in seen_class:
                        continue  # interchangeable with an earlier one
                    seen_class.add(c)
                    child = (True, k, ns, st)
                if blocked and unblocks(ns, want, want_not):
                    opt_unblockers.append(child)
                else:
                    opt_others.append(child)
        if blocked and not producible:
            return []  # nothing that may precede the forced op can make it legal
        # Preference: the forced op, then ops that unblock it, then the rest.
        children = opt_others[::-1]
        children.extend(reversed(others))
        children.extend(reversed(opt_unblockers))
        children.extend(reversed(unblockers))
        if forced_child is not None:
            children.append(forced_child)
        return children

    horizon = [-1]  # latest return of an op a pruning decision depended on
    memo: dict[tuple[int, int, int], list[tuple[int, int]]] = {}
    root = expand(0, 0, 0, initial, _NO_GUARD, 0)
    # Frame: (children still to try, base, rest, omask, dptr)
    stack: list[tuple[list[_Child], int, int, int, int]] = [(root, 0, 0, 0, 0)]
    furthest = 0
    configs = 0
    while stack:
        children, base, rest, omask, dptr = stack[-1]
        if not children:
            stack.pop()
            continue
        is_opt, idx, ns, ng = children.pop()
        if is_opt:
            nb, nr = base, rest
            nom = omask | (1 << idx) | odead[idx]
        else:
            nom = omask | ddead[idx]
            off = idx - base
            if off == 0:
                r = rest | 1
                sh = (~r & (r + 1)).bit_length() - 1  # trailing ones
                nb, nr = base + sh, r >> sh
            else:
                nb, nr = base, rest | (1 << off)
        # Memoization with dominance: a configuration seen before with the same
        # definite ops decided and the same state, but fewer optional ops decided
        # (each one spent or skipped for good) and no stricter guard, had every option
        # this one has.
        key = (nb, nr, ns)
        seen = memo.get(key)
        if seen is None:
            memo[key] = [(nom, ng)]
        else:
            for m, g in seen:
                if not m & ~nom and g in (ng, _NO_GUARD):
                    break
            else:
                seen.append((nom, ng))
                seen = None
            if seen is not None:
                continue
        configs += 1
        if not configs & yield_mask:
            yield _Progress(furthest, horizon[0], configs)
        nd = dptr
        while nd < n_def:
            j = order[nd]
            if j >= nb and not (nr >> (j - nb)) & 1:
                break
            nd += 1
        if nd == n_def:
            return _Outcome(True, nd, configs)
        if nd > furthest:
            furthest = nd
        grandchildren = expand(nb, nr, nom, ns, ng, nd)
        if grandchildren:
            stack.append((grandchildren, nb, nr, nom, nd))
    return _Outcome(False, furthest, configs, horizon[0])


# Search budgets, in configurations (a few µs each). The full search of a key runs in
# chunks of _CHUNK; when it has not got further for _STALL configurations, windows
# around where it is stuck are tried. A window check gets _WINDOW_BUDGET and counts
# as "undecided" past it.
_CHUNK = 4096
_STALL = 16_384
_WINDOW_BUDGET = 50_000
_FIRST_WINDOW = 8  # ops; doubled until a window fails or reaches the start
_GIVE_UP = 2  # undecided window checks in a row after which trimming stops


@dataclass(slots=True)
class _KeyVerdict:
    ok: bool
    window: list[Operation] = field(default_factory=list)
    window_maybe: list[bool] = field(default_factory=list)
    culprit: Operation | None = None
    from_start: bool = True


def _run(
    search: Generator[_Progress, None, _Outcome], budget: int, deadline: float | None
) -> _Outcome | _Progress:
    """Run (or resume) ``search`` for about ``budget`` more configurations.

    Returns the outcome if the search finished, else its progress so far. Raises
    :class:`_CheckTimeout` past ``deadline``.
    """
    spent = 0
    try:
        while True:
            progress = next(search)
            spent += _YIELD_EVERY
            if deadline is not None and time.monotonic() > deadline:
                raise _CheckTimeout
            if spent >= budget:
                return progress
    except StopIteration as stop:
        outcome: _Outcome = stop.value
        return outcome


def _window(rel: Sequence[Operation], start: int, until: float) -> tuple[_Problem, int]:
    """The problem for the ops of ``rel`` called from ``rel[start]`` until ``until``.

    This is the history as it stood at time ``until`` (ops still running then may or
    may not have taken effect), seen from the call of ``rel[start]``. From the start
    of the history the key is absent. From the middle, its value is unknown, and the
    earlier ops still in flight at that call may or may not take effect inside the
    window (so they are optional, bounded by their return if known).
    """
    end = bisect_right(rel, until, key=_call_time)
    if start == 0:
        return _compile(rel[:end], 0, until), _ABSENT
    first_call = rel[start].call
    maybe = [
        op for op in rel[:start] if op.return_ is None or op.ok is None or op.return_ >= first_call
    ]
    return _compile([*maybe, *rel[start:end]], len(maybe), until), _ANY


def _call_time(op: Operation) -> int:
    return op.call


def _verdict(
    rel: Sequence[Operation], start: int, until: float, deadline: float | None
) -> bool | None:
    """Whether the window (see ``_window``) is linearizable; None: undecided in budget."""
    pb, initial = _window(rel, start, until)
    out = _run(_searcher(pb, initial), _WINDOW_BUDGET, deadline)
    return out.ok if isinstance(out, _Outcome) else None


def _find_window(
    rel: Sequence[Operation], until: float, anchor: int, deadline: float | None
) -> _KeyVerdict | None:
    """A short window of ``rel`` that is not linearizable, ending as early as possible.

    Looks for windows of the history as it stood at time ``until`` that contain
    ``rel[anchor]`` (where the search got stuck); returns None if none can be shown to
    fail within budgets. With ``until`` infinite (the whole history), the history must
    already be known not to be linearizable, and a window is always found.
    """
    # 1. A failing window: 8, 16, 32... ops back from the anchor.
    end = bisect_right(rel, until, key=_call_time)
    top = min(anchor, end - 1)
    size = _FIRST_WINDOW
    while True:
        start = max(0, top + 1 - size)
        ok = _verdict(rel, start, until, deadline)
        if ok is False:
            break
        if start == 0 or ok is None:
            # Explainable, or too hard to decide: unless the whole history is
            # known to fail, give up; else fall back to it.
            if until != _INF:
                return None
            start = 0
            break
        size *= 2
    # 2. Trim the end: the earliest return after which the window fails. Returns
    # are the only events that can make a history fail (a call adds an optional op).
    returns = sorted({r for op in rel[start:end] if (r := op.return_) is not None and r <= until})
    lo, hi = -1, len(returns)  # the window fails as of returns[hi] (or ``until``)
    undecided = 0
    while hi - lo > 1 and undecided < _GIVE_UP:
        mid = (lo + hi) // 2
        ok = _verdict(rel, start, returns[mid], deadline)
        if ok is False:
            hi = mid
        else:
            lo = mid
        undecided = undecided + 1 if ok is None else 0
    if hi < len(returns):
        until = returns[hi]
    # 3. Trim the start: the window from lo fails, the one from hi is empty.
    end = bisect_right(rel, until, key=_call_time)
    lo, hi = start, end
    undecided = 0
    while hi - lo > 1 and undecided < _GIVE_UP:
        mid = (lo + hi) // 2
        ok = _verdict(rel, mid, until, deadline)
        if ok is False:
            lo = mid
        else:
            hi = mid
        undecided = undecided + 1 if ok is None else 0
    pb, _ = _window(rel, lo, until)
    culprit = next((op for op in rel[lo:end] if op.return_ == until and not op.unknown), None)
    return _KeyVerdict(
        ok=False,
        window=pb.used,
        window_maybe=pb.used_optional,
        culprit=culprit,
        from_start=lo == 0,
    )


def _stuck_at(pb: _Problem, furthest: int, horizon: int) -> tuple[Operation, list[int]]:
    """Where a search stuck at forced op ``furthest`` ran into trouble.

    The forced op no branch got past, and times to cut the history at: that op's
    return; then, if a pruning rule consulted ops that return later, the latest of
    those returns (``horizon``).
    """
    until = [pb.def_ret[furthest]]
    if horizon > until[0]:
        until.append(horizon)
    return pb.def_ops[pb.def_by_ret[furthest]], until


def _check_key(ops: Sequence[Operation], deadline: float | None) -> _KeyVerdict:
    rel = sorted((op for op in ops if _relevant(op)), key=_call_time)
    pb = _compile(rel)
    search = _searcher(pb, _ABSENT)
    index = {id(op): n for n, op in enumerate(rel)}
    tried: set[tuple[int, float]] = set()

    def window_where_stuck(furthest: int, horizon: int) -> _KeyVerdict | None:
        # A search that is stuck is stuck around one point; if the history is not
        # linearizable there, a short window from an unknown value usually shows it
        # in milliseconds, where the exhaustive search could take very long.
        stuck, times = _stuck_at(pb, furthest, horizon)
        anchor = index[id(stuck)]
        for until in times:
            if (anchor, until) not in tried:
                tried.add((anchor, until))
                verdict = _find_window(rel, until, anchor, deadline)
                if verdict is not None:
                    return verdict
        return None

    furthest, stalled = -1, 0
    while True:
        out = _run(search, _CHUNK, deadline)
        if isinstance(out, _Outcome):
            break
        if out.furthest != furthest:
            furthest, stalled = out.furthest, 0
            continue
        stalled += _CHUNK
        if stalled >= _STALL:
            verdict = window_where_stuck(out.furthest, out.horizon)
            if verdict is not None:
                return verdict
    if out.ok:
        return _KeyVerdict(ok=True)
    # Proven not linearizable: now find the window that shows it.
    try:
        verdict = window_where_stuck(out.furthest, out.horizon)
        if verdict is None:
            verdict = _find_window(rel, _INF, len(rel) - 1, deadline)
        assert verdict is not None  # the whole history is known to fail
        return verdict
    except _CheckTimeout:
        # Only the explanation could not be narrowed in time.
        return _KeyVerdict(ok=False, window=pb.used, window_maybe=pb.used_optional)


def check_history(ops: Sequence[Operation], timeout_s: float | None = None) -> CheckResult:
    """Check whether ``ops`` is a linearizable history of a key-value store.

    Keys are checked independently, in sorted order; checking stops at the first key
    that is not linearizable, whose counterexample window is then minimized. With
    ``timeout_s``, a search that runs past it gives ``ok=False, timed_out=True``, unless
    a violation was already proven.
    """
    t0 = time.monotonic()
    deadline = None if timeout_s is None else t0 + timeout_s
    by_key: dict[str, list[Operation]] = {}
    for op in ops:
        by_key.setdefault(op.key, []).append(op)
    keys_checked = 0
    ops_checked = 0
    for key in sorted(by_key):
        key_ops = by_key[key]
        try:
            verdict = _check_key(key_ops, deadline)
        except _CheckTimeout:
            return CheckResult(
                ok=False,
                timed_out=True,
                keys_checked=keys_checked,
                ops_checked=ops_checked,
                elapsed_s=time.monotonic() - t0,
            )
        keys_checked += 1
        ops_checked += len(key_ops)
        if not verdict.ok:
            return CheckResult(
                ok=False,
                failing_key=key,
                window=verdict.window,
                culprit=verdict.culprit,
                window_maybe=verdict.window_maybe,
                window_from_start=verdict.from_start,
                keys_checked=keys_checked,
                ops_checked=ops_checked,
                elapsed_s=time.monotonic() - t0,
            )
    return CheckResult(
        ok=True,
        keys_checked=keys_checked,
        ops_checked=ops_checked,
        elapsed_s=time.monotonic() - t0,
    )


def run_check(path: str, out: TextIO, timeout_s: float | None = None) -> int:
    """Check the key-value history file at ``path`` and print the verdict to ``out``.

    Its lines may be key-value lines or application operations of the ``kv`` model
    (pyxos.check.models.KV); ``pyxos check --model`` judges other applications
    (pyxos.check.generic).

    Returns the exit code: 0 linearizable, 1 not linearizable (the failing key and the
    window are printed), 2 unreadable, malformed or empty file, 3 timed out.
    """
    try:
        ops = load_kv_history(path)
    except HistoryError as e:
        print(f"error: bad history: {e}", file=out)
        return _EXIT_BAD_INPUT
    except OSError as e:
        print(f"error: cannot read {path}: {e.strerror or e}", file=out)
        return _EXIT_BAD_INPUT
    if not ops:
        print(f"error: {path} holds no operations: an empty history proves nothing", file=out)
        return _EXIT_BAD_INPUT
    result = check_history(ops, timeout_s=timeout_s)
    print(result.describe(), file=out)
    if result.ok:
        return _EXIT_OK
    return _EXIT_TIMEOUT if result.timed_out else _EXIT_VIOLATION
