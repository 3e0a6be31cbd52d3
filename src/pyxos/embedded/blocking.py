"""A blocking facade of :class:`~pyxos.embedded.node.EmbeddedNode` for synchronous code.

Theory of operation
-------------------
:class:`BlockingNode` runs an ``EmbeddedNode`` on an event loop of its own, in a
background thread (uvloop's when installed, as ``pyxos serve``). Every blocking call
hands a coroutine to that loop (``asyncio.run_coroutine_threadsafe``) and waits for its
result, so any number of threads may call at once; each call gets its own session from
the node's pool, as in the asyncio API. ``node.proxy(obj)`` (or ``node[name]``) wraps a
hosted object so that ``proxy.incr(5)`` blocks and returns what ``await obj.incr(5)``
would; plain attributes read the local replica (possibly stale; use a ``@query`` for
a linearizable read).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Mapping
from types import TracebackType
from typing import Any, Generic, TypeVar

from pyxos.embedded.node import EmbeddedNode
from pyxos.objects.base import Replicated
from pyxos.server.config import Config

__all__ = ["BlockingNode", "BlockingProxy"]

T = TypeVar("T")
R = TypeVar("R", bound=Replicated)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class BlockingProxy(Generic[R]):
    """A hosted object whose ``@replicated`` and ``@query`` methods block."""

    def __init__(self, node: BlockingNode, obj: R) -> None:
        self._node = node
        self._obj = obj

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._obj, name)
        if getattr(attr, "_pyxos_method", None) is None:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._node.run(attr(*args, **kwargs))

        call.__name__ = name
        call.__doc__ = attr.__doc__
        return call


class BlockingNode:
    """An embedded node for synchronous programs: ``with BlockingNode(...) as node``.

    Takes the arguments of :class:`~pyxos.embedded.node.EmbeddedNode`; the node is
    created and started on the background loop.
    """

    def __init__(
        self,
        config: Config,
        objects: Mapping[str, Replicated] | None = None,
        **kwargs: Any,
    ) -> None:
        self._loop = _new_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"pyxos-embedded-{config.node_id}", daemon=True
        )
        self._thread.start()
        self._closed = False

        async def make() -> EmbeddedNode:
            return EmbeddedNode(config, objects, **kwargs)

        try:
            self.node: EmbeddedNode = self.run(make())
            """The asyncio node (use it only from the background loop)."""
            self.run(self.node.start())
        except BaseException:
            self._stop_loop()
            raise

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the node's loop and wait for its result."""
        if self._closed:
            coro.close()
            raise RuntimeError("the node is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def call(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the node's loop (e.g. ``node.call(counter.incr, 2)``)."""
        return self.run(fn(*args, **kwargs))

    def proxy(self, obj: R) -> BlockingProxy[R]:
        """``obj`` (a hosted object) with blocking methods."""
        return BlockingProxy(self, obj)

    def __getitem__(self, name: str) -> BlockingProxy[Replicated]:
        host = self.node.host
        if host is None:
            raise KeyError(name)
        return BlockingProxy(self, host.objects[name])

    def command(self, data: bytes, timeout: float | None = None) -> bytes:
        """Blocking ``EmbeddedNode.command``."""
        return self.run(self.node.command(data, timeout=timeout))

    def query(self, data: bytes, timeout: float | None = None) -> bytes:
        """Blocking ``EmbeddedNode.query``."""
        return self.run(self.node.query(data, timeout=timeout))

    def wait_for_leader(self, timeout: float = 10.0) -> int:
        """Blocking ``EmbeddedNode.wait_for_leader``."""
        return self.run(self.node.wait_for_leader(timeout))

    @property
    def is_leader(self) -> bool:
        """Whether this node leads right now."""
        return self.node.is_leader

    def close(self) -> None:
        """Stop the node and its loop thread (idempotent)."""
        if self._closed:
            return
        try:
            self.run(self.node.stop())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> BlockingNode:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
