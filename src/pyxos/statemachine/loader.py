"""Finding an application by its import path, ``"module:Factory"``.

``pyxos serve --app`` and the ``app`` setting of the node configuration name the
application this way: the module is imported (from the Python path, which includes
the current directory for ``pyxos serve``) and ``Factory`` (a class or any callable
taking no arguments; dotted attributes allowed) is called once per node to make the
application. Errors say which part of the path is wrong.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import cast

from pyxos.statemachine.base import Application

__all__ = ["DEFAULT_APP", "load_factory", "make_app"]

DEFAULT_APP = "pyxos.statemachine.kv:KVStore"
"""The application a node serves unless told otherwise: the key-value store."""

_REQUIRED = ("apply", "query", "snapshot", "restore")


def import_spec(spec: str, what: str, expected: str = "'module:attr'") -> object:
    """The object named by ``spec`` (``"module:attr"``, ``attr`` may be dotted);
    ``ValueError`` starting with ``what`` and ``spec`` if it cannot be found, including
    when the user's module raises while importing."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{what} {spec!r}: expected {expected}")
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"{what} {spec!r}: cannot import module {module_name!r}: {e}") from None
    except Exception as e:  # the user's module failed while importing
        raise ValueError(
            f"{what} {spec!r}: importing {module_name!r} raised {type(e).__name__}: {e}"
        ) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{what} {spec!r}: module {module_name!r} has no {attr!r}") from None
    return obj


def load_factory(spec: str) -> Callable[[], Application]:
    """The factory named by ``spec`` (``"module:Factory"``); ``ValueError`` saying what
    is wrong if it cannot be imported or does not make an application."""
    obj = import_spec(spec, "app", f"'module:Factory', e.g. {DEFAULT_APP!r}")
    attr = spec.partition(":")[2]
    if not callable(obj):
        raise ValueError(f"app {spec!r}: {attr!r} is not a class or a function")
    if isinstance(obj, type):
        missing = [m for m in _REQUIRED if not callable(getattr(obj, m, None))]
        if missing:
            raise ValueError(
                f"app {spec!r}: {attr} is not an application: it has no "
                f"{', '.join(missing)} (the contract: docs/architecture.md, "
                "*The application contract*)"
            )
    return cast(Callable[[], Application], obj)


def make_app(spec: str) -> Application:
    """Load ``spec`` and call its factory once; ``ValueError`` if that fails or what it
    returns lacks a method of the contract."""
    factory = load_factory(spec)
    try:
        app = factory()
    except Exception as e:  # the user's factory failed
        raise ValueError(f"app {spec!r}: the factory raised {type(e).__name__}: {e}") from None
    missing = [m for m in _REQUIRED if not callable(getattr(app, m, None))]
    if missing:
        raise ValueError(f"app {spec!r}: what it made has no {', '.join(missing)}")
    return app
