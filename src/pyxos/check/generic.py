"""Linearizability checking against any sequential specification (a model).

Theory of operation
===================

A history is linearizable with respect to a model (pyxos.check.models) if every
operation can be given a single instant between its call and its return such that,
taken in the order of those instants from the model's initial state, each operation's
output is the one the model's ``step`` gives. An operation whose outcome is unknown
(no return) may take effect at any instant after its call, or never, and its output is
not compared: the Porcupine rule (there, such an operation returns "at infinity" and
matches any output, which amounts to the same, since ``step`` is total).

1. Per partition (P-compositionality), when the model has ``partition``. Operations
   that failed definitely (``ok: false``) took no effect and are dropped; so are
   read-only operations (``readonly``) of unknown outcome, which constrain nothing.

2. Search: Wing & Gong's, with Lowe's just-in-time linearization, as Porcupine does it
   (the key-value checker, pyxos.check.linearizability, is the same search specialised
   to a register). A configuration is the set of operations already linearized and
   the model's state. The *forced* operation is the undecided one of known outcome that
   returns first; any undecided operation called no later than that return may be
   linearized next (others must follow it). Depth first, with an explicit stack:

   - Memoization: a configuration reached again by another order cannot succeed where
     the first visit failed. With dominance: one with the same definite operations
     linearized and the same state but *more* unknown-outcome ones used up has fewer
     options, so it fails too.
   - Unknown-outcome operations are optional: success is declared once every
     operation of known outcome is placed (the rest never took effect). Tried after
     the definite ones; one whose ``step`` leaves the state as it is is never tried
     (the same as not taking effect), and of several with the same input only the
     first called (they are interchangeable once called).
   - Partial-order reduction: a read-only operation whose output fits the current
     state can go first in any completion (it changes nothing), so it is then the
     only move tried.

3. The verdict. Not linearizable: the report names the forced operation that no
   branch got past, the longest prefix that could be explained (the last operations of
   it and the model's state after it), what the model would output for that operation
   there, and the operations concurrent with it.

4. Budget: with a deadline, a search that runs past it gives "unknown" (timed out).

Cost (bench/bench_models.py, linearizable histories, 2 busy cores): a few hundred
operations of any shipped model take milliseconds. What makes a search long is an
order that the history reveals only much later: a queue's concurrent enqueues are told
apart only when their items come out, so a long queue under many concurrent clients
can take minutes (about 30 s for 500 operations of 16 clients with a queue some 25
items long); unknown-outcome operations of a counter multiply the orders to try (about
7 s for 1,000 operations of 16 clients, 2% unknown). Check such histories with a
``--timeout``; a partitioned model (keys) splits the cost.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pyxos.check.history import (
    AppOperation,
    HistoryError,
    Operation,
    is_app_line,
    parse_app_line,
    parse_line,
)
from pyxos.check.models import KV, Model, ModelOp, resolve_model

__all__ = [
    "ModelCheckResult",
    "check_model",
    "kv_operation",
    "load_kv_history",
    "load_model_history",
    "run_model_check",
]

_EXIT_OK = 0
_EXIT_VIOLATION = 1
_EXIT_BAD_INPUT = 2
_EXIT_TIMEOUT = 3
_YIELD_MASK = 1023  # check the deadline every 1024 configurations


class _Timeout(Exception):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelCheckResult:
    """The verdict of :func:`check_model`.

    ``ok`` is True only if every partition was proven linearizable; ``timed_out`` if
    the search ran out of time first. When not linearizable: ``partition`` names the
    failing partition, ``stuck`` is the operation no linearization gets past,
    ``prefix`` the longest explained sequence of operations before it (in
    linearization order), ``state`` the model's state after that prefix,
    ``model_output`` what the model outputs for ``stuck`` there, and ``concurrent`` the
    operations that overlap ``stuck`` in time.
    """

    ok: bool
    model: str
    timed_out: bool = False
    partition: Hashable = None
    stuck: ModelOp | None = None
    prefix: list[ModelOp] = field(default_factory=list)
    state: Any = None
    model_output: Any = None
    concurrent: list[ModelOp] = field(default_factory=list)
    partitions_checked: int = 0
    ops_checked: int = 0
    configs: int = 0
    elapsed_s: float = 0.0

    def describe(self, model: Model | None = None, tail: int = 10, *, timing: bool = True) -> str:
        """A human-readable explanation of the verdict (several lines for a violation).
        ``timing=False`` leaves out the wall-clock time the search took (so that a
        replayed simulation prints the same words)."""
        took = f"in {self.elapsed_s:.3f} s " if timing else ""
        scope = (
            f"{self.ops_checked} operations in {self.partitions_checked} partition(s) "
            f"{took}({self.configs} configurations)"
        )
        if self.ok:
            return f"linearizable ({self.model}): checked {scope}"
        if self.timed_out:
            return f"unknown ({self.model}): the search timed out after checking {scope}"
        assert self.stuck is not None

        def show(m: ModelOp, output: Any = None, use: bool = False) -> str:
            what = _describe(model, m.input, output if use else m.output)
            if m.op.unknown:
                what = _describe(model, m.input, "?") + "  (outcome unknown)"
            ret = "?" if m.op.return_ is None else str(m.op.return_)
            return f"client {m.op.client:<5} {what:<44} call {m.op.call}  return {ret}"

        where = "" if self.partition is None else f" partition {self.partition!r}"
        lines = [
            f"NOT linearizable ({self.model}){where}: checked {scope}",
            "No order of the operations, each taking effect at one instant between its"
            " call and return, gets past:",
            f"  {show(self.stuck)}",
            f"The longest explainable prefix has {len(self.prefix)} operation(s); the"
            f" state after it: {self.state!r}, where the model outputs"
            f" {self.model_output!r} for it.",
        ]
        if self.prefix:
            lines.append(f"The last {min(tail, len(self.prefix))} of that prefix, in order:")
            lines.extend(f"  {show(m)}" for m in self.prefix[-tail:])
        if self.concurrent:
            lines.append("Operations concurrent with it:")
            lines.extend(f"  {show(m)}" for m in self.concurrent[:tail])
        return "\n".join(lines)


def _describe(model: Model | None, input: Any, output: Any) -> str:
    describe = getattr(model, "describe", None)
    if describe is None:
        return f"{input!r} -> {output!r}"
    text: str = describe(input, output)
    return text


# -- reading a history -------------------------------------------------------------------


def kv_operation(m: ModelOp) -> Operation | None:
    """The key-value line of a ``kv`` model operation (for the register checker), or
    None for a definite failure (``ok: false``), which took no effect.

    Note the one difference between the two forms: an application-form ``cas`` outputs
    whether the comparison held, and ``ok: false`` means it failed without effect; a
    key-value line's ``cas`` says the comparison failed with ``ok: false``.
    """
    op = m.op
    if op.ok is False and op.return_ is not None:
        return None
    kind, key, value, expected = m.input
    if kind == "cas":
        return Operation(
            client=op.client,
            op="cas",
            key=key,
            value=value,
            expected=expected,
            call=op.call,
            return_=op.return_,
            output=None,
            ok=None if op.unknown else bool(m.output),
        )
    return Operation(
        client=op.client,
        op=kind,
        key=key,
        value=value,
        call=op.call,
        return_=op.return_,
        output=m.output if kind == "get" and not op.unknown else None,
        ok=op.ok,
    )


def load_kv_history(path: str | Path) -> list[Operation]:
    """Read a key-value history whose lines may be in either form (key-value lines, or
    application operations of the ``kv`` model), as key-value lines.

    Raises :class:`HistoryError` (with the line number) or :class:`OSError`, like
    :func:`load_model_history`.
    """
    model = KV()
    ops: list[Operation] = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                if is_app_line(raw):
                    app = parse_app_line(raw)
                    try:
                        inp, out = model.parse(app)
                    except ValueError as e:
                        raise HistoryError(str(e)) from None
                    kv = kv_operation(ModelOp(app, inp, out))
                    if kv is not None:
                        ops.append(kv)
                else:
                    ops.append(parse_line(raw))
            except HistoryError as e:
                raise HistoryError(e.reason, line=lineno, path=str(path)) from None
    return ops


def _from_kv_line(op: Operation) -> ModelOp:
    """A key-value line as an operation of the ``kv`` model (for the generic search)."""
    app = AppOperation(
        client=op.client,
        op=op.op,
        input={"key": op.key},
        call=op.call,
        return_=op.return_,
        ok=op.ok if op.op != "cas" or op.ok is None else True,
    )
    if op.op == "cas":
        return ModelOp(app, ("cas", op.key, op.value, op.expected), op.ok)
    out = op.output if op.op == "get" else None
    return ModelOp(app, (op.op, op.key, op.value, None), out)


def load_model_history(path: str | Path, model: Model) -> list[ModelOp]:
    """Read a JSON-lines history for ``model``. Blank lines are skipped.

    Every line must be an application operation the model can read; for the ``kv``
    model, key-value lines (the original format) are read too. Raises
    :class:`HistoryError` with the line number and the reason for the first bad line,
    and :class:`OSError` if the file cannot be read.
    """
    ops: list[ModelOp] = []
    kv = isinstance(model, KV)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                if is_app_line(raw):
                    op = parse_app_line(raw)
                    try:
                        inp, out = model.parse(op)
                    except ValueError as e:
                        raise HistoryError(str(e)) from None
                    ops.append(ModelOp(op, inp, out))
                elif kv:
                    ops.append(_from_kv_line(parse_line(raw)))
                else:
                    parse_app_line(raw)  # a malformed line: say what is wrong with it
                    raise HistoryError(  # pragma: no cover - parse_app_line raises
                        'an application operation needs "input"; the field is missing'
                    )
            except HistoryError as e:
                raise HistoryError(e.reason, line=lineno, path=str(path)) from None
    return ops


# -- the search ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Failure:
    stuck: int  # definite op index
    prefix: list[tuple[bool, int]]
    state: Any


def _search(
    model: Model,
    defs: Sequence[ModelOp],
    opts: Sequence[ModelOp],
    deadline: float | None,
    counter: list[int],
) -> _Failure | None:
    """Search for a linearization of one partition (see the module notes).

    ``defs`` (known outcome) and ``opts`` (unknown outcome) are sorted by call.
    Returns None if linearizable, else where the search got furthest.
    """
    n_def = len(defs)
    if n_def == 0:
        return None
    step: Callable[[Any, Any], tuple[Any, Any]] = model.step
    equal: Callable[[Any, Any], bool] = getattr(model, "equal", None) or _eq
    readonly_of = getattr(model, "readonly", None)
    dinp = [m.input for m in defs]
    dout = [m.output for m in defs]
    dro = [bool(readonly_of(x)) if readonly_of else False for x in dinp]
    dcall = [m.op.call for m in defs]
    dret: list[int] = [m.op.return_ for m in defs]  # type: ignore[misc]
    order = sorted(range(n_def), key=lambda j: (dret[j], j))
    def_hi = [bisect_right(dcall, dret[j]) for j in order]
    oinp = [m.input for m in opts]
    ocall = [m.op.call for m in opts]
    opt_hi = [bisect_right(ocall, dret[j]) for j in order]
    classes: dict[Any, int] = {}
    oclass = [classes.setdefault(x, len(classes)) for x in oinp]

    # A child: (is_optional, index, new_state)
    def expand(base: int, rest: int, omask: int, st: Any, dptr: int) -> list[tuple[bool, int, Any]]:
        forced = order[dptr]
        cand = ~rest & ((1 << (def_hi[dptr] - base)) - 1)
        first: list[tuple[bool, int, Any]] = []
        others: list[tuple[bool, int, Any]] = []
        while cand:
            low = cand & -cand
            cand ^= low
            j = base + low.bit_length() - 1
            ns, out = step(st, dinp[j])
            if not equal(out, dout[j]):
                continue
            if dro[j]:
                return [(False, j, st)]  # partial-order reduction: a fitting read goes first
            if j == forced:
                first.append((False, j, ns))
            else:
                others.append((False, j, ns))
        ohi = opt_hi[dptr]
        ocand = ~omask & ((1 << ohi) - 1) if ohi else 0
        optional: list[tuple[bool, int, Any]] = []
        if ocand:
            seen: set[int] = set()
            while ocand:
                low = ocand & -ocand
                ocand ^= low
                k = low.bit_length() - 1
                c = oclass[k]
                if c in seen:
                    continue  # interchangeable with an earlier one
                seen.add(c)
                ns, _ = step(st, oinp[k])
                if ns == st:
                    continue  # no effect: the same as never taking effect
                optional.append((True, k, ns))
        # Preference: the forced op, the other definite ones in call order, the optional.
        children = optional[::-1]
        children.extend(reversed(others))
        children.extend(first)
        return children

    memo: dict[tuple[int, int, Any], list[int]] = {}
    init = model.init()
    stack: list[tuple[list[tuple[bool, int, Any]], int, int, int, Any, int]] = [
        (expand(0, 0, 0, init, 0), 0, 0, 0, init, 0)
    ]
    path: list[tuple[bool, int]] = []
    furthest = -1
    best = _Failure(order[0], [], init)
    configs = 0
    while stack:
        children, base, rest, omask, _st, dptr = stack[-1]
        if not children:
            stack.pop()
            if path:
                path.pop()
            continue
        is_opt, idx, ns = children.pop()
        if is_opt:
            nb, nr, nom = base, rest, omask | (1 << idx)
        else:
            nom = omask
            off = idx - base
            if off == 0:
                r = rest | 1
                sh = (~r & (r + 1)).bit_length() - 1  # trailing ones
                nb, nr = base + sh, r >> sh
            else:
                nb, nr = base, rest | (1 << off)
        key = (nb, nr, ns)
        seen = memo.get(key)
        if seen is None:
            memo[key] = [nom]
        else:
            if any(not m & ~nom for m in seen):
                continue  # dominated by a configuration that failed
            seen.append(nom)
        configs += 1
        if not configs & _YIELD_MASK and deadline is not None and time.monotonic() > deadline:
            counter[0] += configs
            raise _Timeout
        nd = dptr
        while nd < n_def:
            j = order[nd]
            if j >= nb and not (nr >> (j - nb)) & 1:
                break
            nd += 1
        if nd == n_def:
            counter[0] += configs
            return None
        if nd > furthest:
            furthest = nd
            best = _Failure(order[nd], [*path, (is_opt, idx)], ns)
        grandchildren = expand(nb, nr, nom, ns, nd)
        if grandchildren:
            path.append((is_opt, idx))
            stack.append((grandchildren, nb, nr, nom, ns, nd))
    counter[0] += configs
    return best


def _eq(a: Any, b: Any) -> bool:
    return bool(a == b)


def check_model(
    model: Model, ops: Sequence[ModelOp], timeout_s: float | None = None
) -> ModelCheckResult:
    """Check whether ``ops`` is a linearizable history of ``model``.

    Partitions are checked in order of first appearance; checking stops at the first
    that is not linearizable. With ``timeout_s``, a search running past it gives
    ``ok=False, timed_out=True``, unless a violation was already proven.
    """
    t0 = time.monotonic()
    deadline = None if timeout_s is None else t0 + timeout_s
    partition = getattr(model, "partition", None)
    readonly = getattr(model, "readonly", None)
    parts: dict[Hashable, tuple[list[ModelOp], list[ModelOp]]] = {}
    for m in ops:
        op = m.op
        if op.ok is False and op.return_ is not None:
            continue  # a definite failure took no effect
        if op.unknown and readonly is not None and readonly(m.input):
            continue  # an unknown read constrains nothing
        key = partition(m.input) if partition is not None else None
        defs, opts = parts.setdefault(key, ([], []))
        (opts if op.unknown else defs).append(m)
    counter = [0]
    checked = n_ops = 0
    for key, (defs, opts) in parts.items():
        defs.sort(key=lambda m: m.op.call)
        opts.sort(key=lambda m: m.op.call)
        try:
            failure = _search(model, defs, opts, deadline, counter)
        except _Timeout:
            return ModelCheckResult(
                ok=False,
                model=model.name,
                timed_out=True,
                partitions_checked=checked,
                ops_checked=n_ops,
                configs=counter[0],
                elapsed_s=time.monotonic() - t0,
            )
        checked += 1
        n_ops += len(defs) + len(opts)
        if failure is not None:
            prefix = [(opts if o else defs)[i] for o, i in failure.prefix]
            stuck = defs[failure.stuck]
            _, model_out = model.step(failure.state, stuck.input)
            lo, hi = stuck.op.call, stuck.op.return_
            assert hi is not None
            concurrent = [
                m
                for m in sorted([*defs, *opts], key=lambda m: m.op.call)
                if m is not stuck
                and m.op.call <= hi
                and (m.op.return_ is None or m.op.return_ >= lo)
            ]
            return ModelCheckResult(
                ok=False,
                model=model.name,
                partition=key,
                stuck=stuck,
                prefix=prefix,
                state=failure.state,
                model_output=model_out,
                concurrent=concurrent,
                partitions_checked=checked,
                ops_checked=n_ops,
                configs=counter[0],
                elapsed_s=time.monotonic() - t0,
            )
    return ModelCheckResult(
        ok=True,
        model=model.name,
        partitions_checked=checked,
        ops_checked=n_ops,
        configs=counter[0],
        elapsed_s=time.monotonic() - t0,
    )


def run_model_check(path: str, model_spec: str, out: TextIO, timeout_s: float | None = None) -> int:
    """Check the history at ``path`` against the model named ``model_spec`` (see
    :func:`pyxos.check.models.resolve_model`) and print the verdict to ``out``.

    Returns the exit code: 0 linearizable, 1 not, 2 bad input (unknown model, unreadable,
    malformed or empty file, a line lacking what the model needs), 3 timed out. The
    ``kv`` model is judged by the register checker (pyxos.check.linearizability).
    """
    try:
        model = resolve_model(model_spec)
    except ValueError as e:
        print(f"error: {e}", file=out)
        return _EXIT_BAD_INPUT
    if isinstance(model, KV):
        from pyxos.check.linearizability import run_check

        return run_check(path, out, timeout_s=timeout_s)
    try:
        ops = load_model_history(path, model)
    except HistoryError as e:
        print(f"error: bad history: {e}", file=out)
        return _EXIT_BAD_INPUT
    except OSError as e:
        print(f"error: cannot read {path}: {e.strerror or e}", file=out)
        return _EXIT_BAD_INPUT
    if not ops:
        print(f"error: {path} holds no operations: an empty history proves nothing", file=out)
        return _EXIT_BAD_INPUT
    result = check_model(model, ops, timeout_s=timeout_s)
    print(result.describe(model), file=out)
    if result.ok:
        return _EXIT_OK
    return _EXIT_TIMEOUT if result.timed_out else _EXIT_VIOLATION
