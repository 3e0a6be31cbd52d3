"""Canonical fingerprints and fast copies of the real core objects.

Theory of operation
-------------------
The checker hashes states to know which it has seen. A state holds the *real* node
objects (:class:`~pyxos.core.replica.Replica`, :class:`~pyxos.core.synod.SynodNode`),
so their fingerprint is computed by walking the objects themselves, not a hand-written
list of fields: a field some later change adds to the core is in the fingerprint at
once, and the state counts the tests assert change (and so get looked at) instead of
silently merging states that differ in it.

:func:`canon` turns an object graph into nested tuples of plain values, in a form that
does not depend on how the state was reached: dicts and sets are sorted, enums become
their value, objects (``__dict__`` or ``__slots__``) their attributes in name order.
Frozen msgspec structs (ballots, entries, messages) are immutable values already and
stay as they are, unless values are being renamed. Left out are only

- the constants every node of a scope is built with (:data:`CONSTANTS`: ``quorum``,
  ``config``, ``rng``, ``timing``, ``members``, ``peers``, the node id) and the
  driver's scratch ``_ready`` (empty between actions: the driver always calls
  ``advance()``);
- write-only statistics that no decision reads (:data:`STATISTICS`). Leaving a
  variable that influences no transition and no checked property out of the state is
  sound: two states that differ only in it have the same futures.

``ren`` renames opaque values (see ``engine``: the symmetry reduction over values);
every ``bytes`` object found in it is replaced by its image.

:func:`clone` copies a node for a successor state, much faster than ``copy.deepcopy``:
immutable values (numbers, strings, bytes, enums, frozen structs) are shared, the
scope's constants are shared, everything mutable is copied. The core objects hold no
aliases between mutable parts (each dict, set and list has one owner), so no memo is
needed.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import msgspec

__all__ = ["CONSTANTS", "STATISTICS", "canon", "clone"]

CONSTANTS = frozenset(
    {"quorum", "members", "peers", "rng", "config", "timing", "_node_id", "_ready"}
)
"""Attributes that are the same in every state of one scope (or driver scratch)."""

STATISTICS = frozenset(
    {
        "elections",
        "leader_changes",
        "rounds_started",
        "writes",
        "syncs",
        "stale_ballot",
        "fenced_refused",
        "refused_removed",
    }
)
"""Write-only counters: no transition and no checked property reads them."""

_SKIP = CONSTANTS | STATISTICS
_ATOMS: frozenset[type] = frozenset({int, float, str, bool, type(None)})


def _sorted(items: list[Any]) -> tuple[Any, ...]:
    try:
        return tuple(sorted(items))
    except TypeError:
        return tuple(sorted(items, key=repr))


_fields_cache: dict[type, tuple[tuple[str, ...], bool]] = {}


def _fields(cls: type) -> tuple[tuple[str, ...], bool]:
    """(attribute names of instances held in slots, has __dict__)."""
    known = _fields_cache.get(cls)
    if known is None:
        names: list[str] = []
        has_dict = False
        for klass in cls.__mro__:
            slots = klass.__dict__.get("__slots__", ())
            if isinstance(slots, str):
                slots = (slots,)
            for s in slots:
                if s == "__dict__":
                    has_dict = True
                elif s != "__weakref__":
                    names.append(s)
        if "__slots__" not in cls.__dict__:
            has_dict = True
        known = _fields_cache[cls] = (tuple(names), has_dict)
    return known


def _frozen_struct(cls: type) -> bool:
    return issubclass(cls, msgspec.Struct) and bool(cls.__struct_config__.frozen)


def canon(obj: Any, ren: dict[bytes, bytes] | None = None) -> Any:
    """A hashable, order-independent rendering of ``obj`` (see the module docstring)."""
    cls = type(obj)
    if cls in _ATOMS:
        return obj
    if cls is bytes:
        return ren.get(obj, obj) if ren else obj
    if cls is dict:
        return ("{", _sorted([(canon(k, ren), canon(v, ren)) for k, v in obj.items()]))
    if cls is set or cls is frozenset:
        return ("<", _sorted([canon(x, ren) for x in obj]))
    if cls is list or cls is tuple:
        return ("[", *[canon(x, ren) for x in obj])
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, msgspec.Struct):
        if not ren and _frozen_struct(cls):
            return obj
        return (cls.__name__, *[canon(getattr(obj, f), ren) for f in obj.__struct_fields__])
    if cls is bytearray:
        return canon(bytes(obj), ren)
    slots, has_dict = _fields(cls)
    names = sorted({*slots, *(obj.__dict__ if has_dict else ())} - _SKIP)
    return (cls.__name__, *[(n, canon(getattr(obj, n), ren)) for n in names])


def clone(obj: Any, shared: dict[int, Any]) -> Any:
    """A copy of ``obj`` sharing its immutable parts and the scope's constants."""
    cls = type(obj)
    if cls in _ATOMS or cls is bytes or cls is frozenset:
        return obj
    if id(obj) in shared:
        return obj
    if cls is dict:
        return {k: clone(v, shared) for k, v in obj.items()}
    if cls is list:
        return [clone(x, shared) for x in obj]
    if cls is set:
        return set(obj)  # sets hold hashable, hence immutable, members here
    if cls is tuple:
        return tuple(clone(x, shared) for x in obj)
    copier = _copiers.get(cls)
    if copier is None:
        copier = _copiers[cls] = _make_copier(cls)
    return copier(obj, shared)


_copiers: dict[type, Callable[[Any, dict[int, Any]], Any]] = {}


def _make_copier(cls: type) -> Callable[[Any, dict[int, Any]], Any]:
    if issubclass(cls, enum.Enum) or _frozen_struct(cls):
        return lambda obj, shared: obj
    if issubclass(cls, msgspec.Struct):
        fields = cls.__struct_fields__

        def copy_struct(obj: Any, shared: dict[int, Any]) -> Any:
            return msgspec.structs.replace(
                obj, **{f: clone(getattr(obj, f), shared) for f in fields}
            )

        return copy_struct
    slots, has_dict = _fields(cls)

    def copy_object(obj: Any, shared: dict[int, Any]) -> Any:
        new = object.__new__(cls)
        for name in slots:
            if hasattr(obj, name):
                object.__setattr__(new, name, clone(getattr(obj, name), shared))
        if has_dict:
            new.__dict__.update({k: clone(v, shared) for k, v in obj.__dict__.items()})
        return new

    return copy_object
