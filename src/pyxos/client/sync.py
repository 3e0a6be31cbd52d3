"""The blocking client: an ``AsyncClient`` on an event loop of its own thread.

Theory of operation
-------------------
``Client`` starts a daemon thread running a private event loop and submits every call
to it with ``asyncio.run_coroutine_threadsafe``, blocking the caller until the result
(or the exception) comes back. All retry, redirect and exactly-once logic is the
``AsyncClient``'s. A ``Client`` may be shared by threads: its commands run one at a
time, in the order the loop receives them.
"""

from __future__ import annotations

import asyncio
import builtins
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from pyxos.client.aio import DEFAULT_CLUSTER, AsyncClient, ListPage
from pyxos.statemachine.kv import DEFAULT_LIST_LIMIT

__all__ = ["Client"]

T = TypeVar("T")


class Client:
    """Blocking ``get / put / delete / cas / list``; see ``AsyncClient`` for the rules.

    ``history`` is called on the client's own thread.
    """

    def __init__(
        self,
        addresses: Sequence[str] | Mapping[int, str],
        client_id: int | None = None,
        *,
        cluster: str = DEFAULT_CLUSTER,
        timeout: float = 5.0,
        attempt_timeout: float = 1.0,
        history: Callable[[dict[str, Any]], None] | None = None,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        token: str | None = None,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="pyxos-client", daemon=True
        )
        self._thread.start()
        self._client = AsyncClient(
            addresses,
            client_id,
            cluster=cluster,
            timeout=timeout,
            attempt_timeout=attempt_timeout,
            history=history,
            ca=ca,
            cert=cert,
            key=key,
            token=token,
        )
        self._closed = False

    @property
    def client_id(self) -> int:
        """This client's session id."""
        return self._client.client_id

    @property
    def async_client(self) -> AsyncClient:
        """The ``AsyncClient`` doing the work (runs on this client's own loop)."""
        return self._client

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("the client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def get(self, key: str) -> str | None:
        """The value of ``key`` (``None`` if absent)."""
        return self._run(self._client.get(key))

    def put(self, key: str, value: str) -> None:
        """Set ``key`` to ``value``."""
        self._run(self._client.put(key, value))

    def delete(self, key: str) -> str | None:
        """Remove ``key``; return the value it had."""
        return self._run(self._client.delete(key))

    def cas(self, key: str, expected: str | None, value: str) -> bool:
        """Set ``key`` to ``value`` if it is ``expected``; True if set."""
        return self._run(self._client.cas(key, expected, value))

    def list_page(
        self, prefix: str = "", *, limit: int = DEFAULT_LIST_LIMIT, after: str | None = None
    ) -> ListPage:
        """One page of the keys starting with ``prefix`` (see ``AsyncClient.list_page``)."""
        return self._run(self._client.list_page(prefix, limit=limit, after=after))

    def iter_list(
        self, prefix: str = "", *, page_size: int = DEFAULT_LIST_LIMIT, after: str | None = None
    ) -> Iterator[tuple[str, str]]:
        """Every ``(key, value)`` whose key starts with ``prefix``, in key order, one
        page request at a time (see ``AsyncClient.iter_list``)."""
        while True:
            page = self.list_page(prefix, limit=page_size, after=after)
            yield from page.entries
            if not page.more:
                return
            after = page.next

    def list(self, prefix: str = "") -> builtins.list[tuple[str, str]]:
        """Every ``(key, value)`` whose key starts with ``prefix``, all pages."""
        return self._run(self._client.list(prefix))

    def command(self, command: bytes) -> bytes:
        """Send the application's ``command`` bytes; its result bytes (``AsyncClient.command``)."""
        return self._run(self._client.command(command))

    def query(self, q: bytes) -> bytes:
        """Ask the application the read-only ``q``; its answer bytes (``AsyncClient.query``)."""
        return self._run(self._client.query(q))

    def close(self) -> None:
        """Close the connections and stop the client's thread."""
        if self._closed:
            return
        self._run(self._client.close())
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
