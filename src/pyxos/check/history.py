"""Client histories, as the linearizability checker reads them.

A history is JSON lines, one operation a line (see docs/architecture.md, "Histories").
Two kinds of line exist: the key-value store's (:class:`Operation`, below) and an
*application operation* of any application (:class:`AppOperation`), which carries the
operation's name and its input and output as JSON::

    {"client": 3, "op": "add", "input": 5, "output": 12,
     "call": 1200, "return": 1850, "ok": true}

What ``input`` and ``output`` hold is the model's business (pyxos.check.models documents
each shipped model's); a model refuses a line that lacks what it needs. ``ok`` and
``return`` mean the same on both kinds (below). A line is an application operation
exactly when it has an ``input`` field.

A key-value line::

    {"client": 3, "op": "cas", "key": "k", "value": "b", "expected": "a",
     "call": 1200, "return": 1850, "output": null, "ok": true}

Meaning of the fields, per operation:

- ``get``: ``output`` is the value read, ``null`` when the key was absent.
- ``put``: sets ``key`` to ``value``.
- ``delete``: removes ``key``.
- ``cas``: if the key's current value equals ``expected`` (``null``: the key must be
  absent) it is set to ``value`` and ``ok`` is true; otherwise nothing changes and ``ok``
  is false. A cas with ``ok: false`` is a real outcome (the comparison failed).

Every field a line's operation needs must be present, ``null`` where that is its
value: ``value`` for put and cas, ``expected`` for every cas (``null`` means "absent",
so a missing ``expected`` is not read as one), ``output`` for a get that returned
(``null`` means "absent"). A line that leaves one out is refused, never read as null.

``call`` and ``return`` are nanoseconds on one clock. ``return: null`` or ``ok: null``
means the outcome is unknown (the client timed out): the operation may have taken
effect at any moment after its call, or never. A get, put or delete that returned with
``ok: false`` failed definitely and did not take effect.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import msgspec

__all__ = [
    "AppOperation",
    "HistoryError",
    "OpKind",
    "Operation",
    "app_op_to_json",
    "dump_history",
    "is_app_line",
    "load_history",
    "op_to_json",
    "parse_app_line",
    "parse_line",
]

OpKind = Literal["get", "put", "cas", "delete"]


class HistoryError(ValueError):
    """A history file or line is malformed.

    ``line`` is the 1-based line number when known; ``reason`` says what is wrong.
    """

    def __init__(self, reason: str, *, line: int | None = None, path: str | None = None) -> None:
        self.reason = reason
        self.line = line
        self.path = path
        where = ""
        if path is not None:
            where += f"{path}: "
        if line is not None:
            where += f"line {line}: "
        super().__init__(f"{where}{reason}")


class Operation(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One client operation on one key, completed or with an unknown outcome.

    Field names follow the JSON format, except ``return_``, which is ``return`` in JSON.
    The constructor validates the fields that the operation's kind requires.
    """

    client: int
    op: OpKind
    key: str
    # The value written by put and cas; null for get and delete.
    value: str | None = None
    # The value cas compares with; null (for cas) means "the key must be absent".
    expected: str | None = None
    call: int
    # None: the client never learned the outcome (timeout); see ``unknown``.
    return_: int | None = msgspec.field(name="return")
    # The value a get read (None: key absent). Ignored for other kinds.
    output: str | None = None
    # True: succeeded. False: a cas whose comparison failed, or a definite failure of
    # another kind. None: outcome unknown.
    ok: bool | None

    def __post_init__(self) -> None:
        if self.call < 0:
            raise ValueError("call must be >= 0")
        if self.return_ is not None and self.return_ < self.call:
            raise ValueError(f"return ({self.return_}) is before call ({self.call})")
        if self.op in ("put", "cas") and self.value is None:
            raise ValueError(f"{self.op} needs a string value")
        if self.op in ("get", "delete") and self.value is not None:
            raise ValueError(f"{self.op} takes no value")
        if self.op != "cas" and self.expected is not None:
            raise ValueError(f"{self.op} takes no expected value")

    @property
    def unknown(self) -> bool:
        """Whether the outcome is unknown (``return`` or ``ok`` is null)."""
        return self.return_ is None or self.ok is None


class _Present(msgspec.Struct):
    """Which of the fields that default to null a line really carries."""

    output: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    expected: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


_decoder = msgspec.json.Decoder(Operation)
_present_decoder = msgspec.json.Decoder(_Present)
_encoder = msgspec.json.Encoder()


def parse_line(line: bytes | str) -> Operation:
    """Decode one JSON line into an :class:`Operation`.

    Raises :class:`HistoryError` (without a line number) if the line is malformed,
    including when it lacks a field its operation needs (see the module notes).
    """
    try:
        op = _decoder.decode(line)
    except msgspec.ValidationError as e:
        raise HistoryError(str(e)) from None
    except msgspec.DecodeError as e:
        raise HistoryError(f"invalid JSON: {e}") from None
    # A null the decoder filled in for an absent field must not pass for a real one.
    if (op.op == "cas" and op.expected is None) or (
        op.op == "get" and op.output is None and not op.unknown
    ):
        present = _present_decoder.decode(line)
        if op.op == "cas" and present.expected is msgspec.UNSET:
            raise HistoryError(
                'a cas needs "expected" (null: the key must be absent); the field is missing'
            )
        if op.op == "get" and present.output is msgspec.UNSET:
            raise HistoryError(
                'a get that returned needs "output" (null: the key was absent); '
                "the field is missing"
            )
    return op


class AppOperation(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One operation of any application, completed or with an unknown outcome.

    ``op`` names the operation; ``input`` and ``output`` are JSON values whose meaning
    the model defines (``msgspec.UNSET`` when the line lacks the field: a model that
    needs it refuses the line, a null is never assumed). ``return: null`` or ``ok: null``
    means the outcome is unknown (the operation may have taken effect at any moment
    after its call, or never; its output is not read). ``ok: false`` with a return is
    a definite failure: the operation did not take effect (a refusal the application
    *answers*, such as a lock that is held, is an output with ``ok: true``).
    """

    client: int
    op: str
    input: Any = msgspec.UNSET
    output: Any = msgspec.UNSET
    call: int
    return_: int | None = msgspec.field(name="return")
    ok: bool | None

    def __post_init__(self) -> None:
        if self.call < 0:
            raise ValueError("call must be >= 0")
        if self.return_ is not None and self.return_ < self.call:
            raise ValueError(f"return ({self.return_}) is before call ({self.call})")
        if not self.op:
            raise ValueError("op must name the operation")

    @property
    def unknown(self) -> bool:
        """Whether the outcome is unknown (``return`` or ``ok`` is null)."""
        return self.return_ is None or self.ok is None

    @property
    def answered(self) -> bool:
        """Whether the operation returned an output (it completed with ``ok: true``);
        only then is ``output`` read."""
        return self.return_ is not None and self.ok is True


class _Probe(msgspec.Struct):
    """Whether a line carries ``input`` (an application operation)."""

    input: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


_app_decoder = msgspec.json.Decoder(AppOperation)
_probe_decoder = msgspec.json.Decoder(_Probe)


def is_app_line(line: bytes | str) -> bool:
    """Whether ``line`` is an application operation (has ``input``); False also for a
    line that is not a JSON object (its parser then says what is wrong)."""
    try:
        return _probe_decoder.decode(line).input is not msgspec.UNSET
    except (msgspec.ValidationError, msgspec.DecodeError):
        return False


def parse_app_line(line: bytes | str) -> AppOperation:
    """Decode one JSON line into an :class:`AppOperation`; :class:`HistoryError` (no
    line number) if it is malformed. Whether ``input`` and ``output`` hold what the
    operation needs is the model's check (``Model.parse``)."""
    if not is_app_line(line):
        try:
            parse_line(line)
        except HistoryError:
            pass
        else:
            raise HistoryError(
                'a key-value line (no "input"): check a key-value history with --model kv'
            )
    try:
        op = _app_decoder.decode(line)
    except msgspec.ValidationError as e:
        raise HistoryError(str(e)) from None
    except msgspec.DecodeError as e:
        raise HistoryError(f"invalid JSON: {e}") from None
    if op.input is msgspec.UNSET:
        raise HistoryError(
            'an application operation needs "input" (null where it takes none); '
            "the field is missing"
        )
    return op


def app_op_to_json(op: AppOperation) -> dict[str, Any]:
    """The JSON object of ``op`` (fields left UNSET are left out)."""
    result: dict[str, Any] = msgspec.to_builtins(op)
    return result


def load_history(path: str | Path) -> list[Operation]:
    """Read a JSON-lines history file. Blank lines are skipped.

    Raises :class:`HistoryError` with the line number and the reason for the first
    malformed line, and :class:`OSError` if the file cannot be read.
    """
    ops: list[Operation] = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                ops.append(parse_line(raw))
            except HistoryError as e:
                raise HistoryError(e.reason, line=lineno, path=str(path)) from None
    return ops


def op_to_json(op: Operation) -> dict[str, Any]:
    """The JSON object of ``op`` as a dict, with the key ``return`` (not ``return_``)."""
    result: dict[str, Any] = msgspec.to_builtins(op)
    return result


def dump_history(ops: Iterable[Operation | AppOperation], path: str | Path) -> None:
    """Write ``ops`` to ``path`` as JSON lines, one operation a line."""
    with open(path, "wb") as f:
        for op in ops:
            f.write(_encoder.encode(op))
            f.write(b"\n")
