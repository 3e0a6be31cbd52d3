"""In-process clients of one node: the client engine's transport for code that runs
beside the node (the HTTP API; an embedded application).

Theory of operation
-------------------
Such a caller reaches the cluster through its own node's ``submit``: the node proposes
the command if it leads, forwards it to the leader otherwise, and answers "no leader
yet" when it has none to hand it to. Replies come back through the reply sink the
node was given (``on_reply``), matched to the waiting call by ``(client, seq)``. So
the engine (``pyxos.client.engine``) sees a route of one address, the node itself:
a refusal means pause (5 ms doubling to 50 ms, jittered) and submit again; silence for
``attempt_timeout`` (a forward lost over a link that went down, a leader that died)
means submit again; both with the SAME ``(client, seq)``, which the store applies at
most once; and at ``timeout``, ``OutcomeUnknown``. A node's refusal given as a definite
answer (``refusal``: a full disk) is definite only for the first submission: after an
unanswered one it ends a write with ``OutcomeUnknown`` too. A read-only call (``read_only``)
refused for ``read_wait`` seconds ends with ``NoLeader`` instead: a read has no effect.

Sessions: the store allows one outstanding command per client id, so ``LocalClients``
keeps a pool of logical clients (random 63-bit ids), each used by one call at a time
with a growing seq and returned to the pool afterwards. The pool grows with the number
of concurrent calls, never with the number of calls, so it does not churn the store's
bounded session table. A seq is used up whatever happened to its call: the next call
of that client gets a higher one, so a late apply of an abandoned command cannot be
confused with it.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable

from pyxos.client.engine import Call, OutcomeUnknown, Route, drive
from pyxos.core.messages import ClientReply, ClientRequest

__all__ = ["LocalClients"]


def _no_answer(future: asyncio.Future[ClientReply | None]) -> None:
    """An attempt's time is up: it ends with no answer (None)."""
    if not future.done():
        future.set_result(None)


class LocalClients:
    """Logical clients of one node, reaching it through ``submit``.

    ``submit`` hands requests to the node; the node's replies must be passed to
    ``on_reply`` (register it as the node's reply sink, and set ``sink`` to the id the
    node gave it: the ``src`` of every request). ``timeout`` bounds a whole call,
    ``attempt_timeout`` one submission, ``read_wait`` the refusals of a read-only call.
    """

    def __init__(
        self,
        submit: Callable[[list[ClientRequest]], None],
        *,
        timeout: float = 5.0,
        attempt_timeout: float = 0.5,
        read_wait: float = 1.0,
        refusal: Callable[[ClientReply], bool] | None = None,
    ) -> None:
        self.submit = submit
        self.sink = 0
        """The ``src`` this node knows our requests by (its reply sink's id)."""
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self.read_wait = read_wait
        self.refusal = refusal
        """Recognises a node's refusal answered as a definite reply (a full disk): it
        ends a write with ``OutcomeUnknown`` unless it answered the first submission."""
        self.route = Route(1)
        """The engine's address book: one address, the node (it forwards)."""
        # Idle logical clients: (client id, last seq used).
        self._idle: list[tuple[int, int]] = []
        self._waiting: dict[tuple[int, int], asyncio.Future[ClientReply | None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the first call

    def on_reply(self, reply: ClientReply) -> None:
        """A reply of the node to one of our requests (the node's reply sink)."""
        future = self._waiting.get((reply.client, reply.seq))
        if future is not None and not future.done():
            future.set_result(reply)

    async def call(
        self, encode: Callable[[int, int], bytes], what: str, *, read_only: bool = False
    ) -> ClientReply:
        """Run one command: ``encode(client, seq)`` gives its bytes for the logical
        client and seq it gets (an exception from it uses up nothing and propagates).
        Returns the node's successful reply; raises ``OutcomeUnknown`` at the timeout,
        and ``NoLeader`` for a ``read_only`` call refused for ``read_wait`` seconds. A
        ``read_only`` call is sent as a query (``ClientRequest.query``): it takes the
        read-index/lease path and never enters the log."""
        return await self.start(encode, what, read_only=read_only)

    def start(
        self, encode: Callable[[int, int], bytes], what: str, *, read_only: bool = False
    ) -> asyncio.Future[ClientReply]:
        """``call`` without a coroutine: submits at once and returns a future of what
        ``call`` returns or raises. The first attempt is callbacks only (no task); a
        task runs the engine only after it failed."""
        client, seq = self._idle.pop() if self._idle else (secrets.randbits(63) or 1, 0)
        try:
            payload = encode(client, seq + 1)
        except BaseException:
            self._idle.append((client, seq))
            raise
        seq += 1
        request = ClientRequest(self.sink, client, seq, payload, read_only)
        loop = self._loop
        if loop is None:  # once: asyncio.get_running_loop() is a getpid() system call on 3.11
            loop = self._loop = asyncio.get_running_loop()
        return _Call(self, loop, request, what).result

    def cancel(self) -> None:
        """Fail every waiting call's current attempt (the node is going away)."""
        for future in self._waiting.values():
            if not future.done():
                future.cancel()


class _Call:
    """One ``LocalClients.start``: its first attempt by callbacks, the engine after."""

    __slots__ = (
        "clients",
        "deadline",
        "key",
        "loop",
        "now",
        "request",
        "result",
        "submitted",
        "timer",
        "what",
    )

    def __init__(
        self,
        clients: LocalClients,
        loop: asyncio.AbstractEventLoop,
        request: ClientRequest,
        what: str,
    ) -> None:
        self.clients = clients
        self.loop = loop
        self.request = request
        self.what = what
        self.key = (request.client, request.seq)
        self.now = loop.time()
        self.deadline = self.now + clients.timeout
        self.submitted = 0
        self.result: asyncio.Future[ClientReply] = loop.create_future()
        self._submit(self.deadline).add_done_callback(self._first_done)

    def _submit(self, deadline: float) -> asyncio.Future[ClientReply | None]:
        """Submit once; the future answers the reply, or None when the attempt's time
        is up (a timer, not asyncio.wait_for: cheaper than the rest of the attempt)."""
        clients, loop = self.clients, self.loop
        future: asyncio.Future[ClientReply | None] = loop.create_future()
        clients._waiting[self.key] = future
        self.submitted += 1
        clients.submit([self.request])
        wait = max(0.0, min(deadline - loop.time(), clients.attempt_timeout))
        self.timer = loop.call_later(wait, _no_answer, future)
        return future

    def _end(self) -> None:
        clients = self.clients
        clients._waiting.pop(self.key, None)
        clients._idle.append(self.key)

    def _first_done(self, future: asyncio.Future[ClientReply | None]) -> None:
        self.timer.cancel()
        result = self.result
        if future.cancelled():  # LocalClients.cancel: the node is going away
            self._end()
            result.cancel()
            return
        reply = future.result()
        if reply is not None and reply.ok:
            self._end()
            self.clients.route.answered(reply)
            if not result.done():
                result.set_result(reply)
            return
        # The first attempt failed: the engine's retries, in a task.
        task = self.loop.create_task(self._rest(reply))
        task.add_done_callback(self._rest_done)

    async def _attempt(self, _: int, deadline: float) -> ClientReply | None:
        future = self._submit(deadline)
        try:
            return await future
        finally:
            self.timer.cancel()

    async def _rest(self, reply: ClientReply | None) -> ClientReply:
        clients, (client, seq) = self.clients, self.key
        try:
            call = Call(
                clients.route,
                self.deadline,
                clients.timeout,
                f"{self.what} (client {client}, seq {seq})",
                refused_until=(
                    self.now + min(clients.timeout, clients.read_wait)
                    if self.request.query
                    else None
                ),
            )
            reply = await drive(call, self._attempt, 0, reply, True)
            refusal = clients.refusal
            if (
                self.submitted > 1
                and not self.request.query
                and refusal is not None
                and refusal(reply)
            ):
                # An earlier submission may have entered the log before the node
                # stopped taking requests (and dropped the reply): not "no effect".
                raise OutcomeUnknown(
                    f"{self.what} (client {client}, seq {seq}): refused ({reply.error}) "
                    "after an unanswered attempt that may have taken effect",
                    reply.leader,
                )
            return reply
        finally:
            self._end()

    def _rest_done(self, task: asyncio.Task[ClientReply]) -> None:
        result = self.result
        if result.done():
            return
        if task.cancelled():
            result.cancel()
        elif (error := task.exception()) is not None:
            result.set_exception(error)
        else:
            result.set_result(task.result())
