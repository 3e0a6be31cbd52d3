"""The quorum keys of a node's configuration: ``quorum`` and ``preferred_leader``.

Theory of operation
-------------------
``quorum = { q1 = 4, q2 = 2 }`` in a node's TOML file sets flexible quorum sizes
(docs/architecture.md, *Flexible quorums*); the table becomes the configuration's
``q1`` and ``q2`` keys, which the command line's ``--q1``/``--q2`` also set and which
win. The sizes are checked against the members before anything starts (``q1 + q2``
must exceed their number), and a ``preferred_leader`` must be one of them. Errors are
``ValueError`` with the key in the message; ``server.config`` turns them into its
``ConfigError``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from pyxos.core.quorum import quorum_sizes

__all__ = ["check_quorum", "flatten_quorum"]


def flatten_quorum(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` with its ``quorum`` table as the keys ``q1`` and ``q2`` (a key already
    set, by an override, wins)."""
    values = dict(raw)
    table = values.pop("quorum", None)
    if table is None:
        return values
    if not isinstance(table, Mapping):
        raise ValueError(f"quorum: expected a table {{ q1 = N, q2 = N }}, got {table!r}")
    extra = sorted(set(table) - {"q1", "q2"})
    if extra:
        raise ValueError(f"quorum: unknown key {extra[0]!r}; known keys: q1, q2")
    for key in ("q1", "q2"):
        if key in table and values.get(key) is None:
            values[key] = table[key]
    return values


def check_quorum(
    members: Collection[int], q1: int | None, q2: int | None, preferred: int | None = None
) -> None:
    """Refuse quorum sizes that do not fit ``members`` or do not intersect, and a
    preferred leader that is not a member."""
    try:
        quorum_sizes(len(members), q1, q2)
    except ValueError as e:
        raise ValueError(f"quorum: {e} ({len(members)} members)") from None
    if preferred is not None and preferred not in members:
        raise ValueError(f"preferred_leader: node {preferred} is not among the peers")
