"""Client authentication: bearer tokens with roles ``read`` and ``write``.

Theory of operation
-------------------
Anyone who reaches a client or HTTP port could read and write (issue 12, item 3).
With ``tokens`` configured, every client must present a token: the HTTP API in an
``Authorization: Bearer <token>`` header, the binary protocol in its ``Hello``
(``Hello.token``). The node never holds a plain token: the configuration maps the
SHA-256 of each token (64 hex digits) to its role, and a presented token is hashed
and looked up. A ``read`` token may get and list; a ``write`` token may also put,
delete and cas. Without a valid token nothing is served; with a read token a write
is refused before it reaches the log, so nothing changes.

Neither tokens nor their hashes are logged or reported (``/v1/status``, metrics):
refusals are counted (``auth_refused``, ``auth_forbidden``) and logged without them.

Config (``tokens``): a table ``{"<sha256 hex>" = "read" | "write"}`` or the path of a
TOML file holding such a table. ``pyxos token new`` prints a fresh token and its line.
"""

from __future__ import annotations

import hashlib
import secrets
import tomllib
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "READ_OPS",
    "ROLES",
    "TokenError",
    "Tokens",
    "hash_token",
    "new_token",
]

ROLES = ("read", "write")
"""The roles a token may have; ``write`` includes ``read``."""

READ_OPS = frozenset({"get", "list"})
"""The commands a ``read`` token may run."""


class TokenError(ValueError):
    """The tokens configuration is invalid; the message says why (never a token)."""


def hash_token(token: str) -> str:
    """The SHA-256 of ``token`` (UTF-8) in hex: what the configuration stores."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


class Tokens:
    """The configured token hashes and their roles."""

    __slots__ = ("_roles",)

    def __init__(self, roles: Mapping[str, str]) -> None:
        checked: dict[str, str] = {}
        for digest, role in roles.items():
            if (
                not isinstance(digest, str)
                or len(digest) != 64
                or any(c not in "0123456789abcdef" for c in digest.lower())
            ):
                raise TokenError(
                    "tokens: keys must be SHA-256 hashes of tokens (64 hex digits), "
                    "never the tokens themselves"
                )
            if role not in ROLES:
                raise TokenError(f"tokens: role must be 'read' or 'write', got {role!r}")
            checked[digest.lower()] = role
        if not checked:
            raise TokenError("tokens: no token configured (nobody could connect)")
        self._roles = checked

    @classmethod
    def load(cls, source: Mapping[str, str] | str | Path) -> Tokens:
        """From a table, or from the TOML file at a path holding one."""
        if isinstance(source, Mapping):
            return cls(source)
        try:
            with open(source, "rb") as f:
                raw = tomllib.load(f)
        except OSError as e:
            raise TokenError(f"tokens: cannot read {source}: {e.strerror or e}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            raise TokenError(f"tokens: {source} is not a TOML table of hash = role") from None
        return cls(raw)

    def role(self, token: str | None) -> str | None:
        """The role of ``token``; None if it is missing or unknown."""
        if not token:
            return None
        return self._roles.get(hash_token(token))

    def __len__(self) -> int:
        return len(self._roles)

    def __repr__(self) -> str:
        return f"Tokens({len(self._roles)} configured)"
