"""What a node does while its disk is full: refuse, keep what it holds, retry, resume.

Theory of operation
-------------------
A full disk (``ENOSPC``, or ``EDQUOT`` over a quota) is not a fatal error. The WAL
cuts off whatever a sync that ran out of space left behind and keeps the records
buffered (``WALDiskFull``, see ``storage/wal.py``); a snapshot that does not fit
removes its temporary file (``FileSystem.write_atomic``). The driver's effects
(``server.effects``) then tell the Ready driver the fsync is postponed (nothing more is
durable, nothing waiting leaves) and mark the disk full here (``DiskFull.enter``, per
source: ``"wal"`` or ``"snapshot"``). Until every source is clear again:

- **nothing is acknowledged that is not durable**: sends waiting for an fsync keep
  waiting; nothing written since the last good fsync counts as durable;
- **client requests are refused** at once (``server.clients.ClientPort.submit``): on
  the binary port with ``ClientReply(ok=False, leader=0)`` carrying the reason in
  ``error`` (turned away before any log), so a client tries another node, and one
  that may use no other ends at once with ``NodeUnavailable`` naming the full disk
  (``client.engine``); the HTTP API (the KV and the application endpoints) answers
  ``507`` to a write and ``503`` to a read. ``/v1/status``, ``/metrics``,
  ``/healthz`` and stale reads go on;
- **the protocol pauses**: nothing is fed to the core (``NodeServer._input``), not
  peer messages (dropped, as if the network lost them, and counted) and not even the
  clock's ticks, so it sends no heartbeats and starts no elections. The node could
  not make any promise or acceptance durable anyway; to the others it looks like a
  paused process (SIGSTOP), so a leader whose disk fills is replaced by an election
  and the cluster goes on without it. Its memory does not grow with the cluster's load;
- **every** ``RETRY_SECONDS`` it tries the failed fsync (``ReadyDriver.retry_fsync``)
  and the failed snapshot again; the first that succeeds clears its source, and once
  all are clear the node ticks again and catches up like a paused node that was
  resumed (a leader that was replaced learns the higher ballot and steps down). No
  restart is needed.

Status (``disk_full``, ``disk_full_reason``), the metric ``pyxos_disk_full`` and one
log line on entering and one on leaving say what is going on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable

from aiohttp import web

from pyxos.core.messages import ClientReply

__all__ = ["DISK_FULL", "RETRY_SECONDS", "DiskFull", "http_refusal", "is_disk_full_refusal"]

logger = logging.getLogger("pyxos.server")

RETRY_SECONDS = 1.0
"""How often a node whose disk is full tries the failed write again."""

DISK_FULL = "disk full on node"
"""How every disk-full refusal starts (the HTTP API maps it to 507/503)."""


def is_disk_full_refusal(reply: ClientReply) -> bool:
    """True if ``reply`` is a full node's refusal answered to an in-process client (the
    HTTP API): definite for a first submission only (``client.local.LocalClients``)."""
    return reply.error is not None and reply.error.startswith(DISK_FULL)


def http_refusal(error: str, *, read: bool) -> web.HTTPException:
    """The HTTP answer to a command refused with ``error``: ``400``, or while the disk
    is full ``507`` for a write and ``503`` for a read, with ``Retry-After``."""
    body = json.dumps({"error": error})
    if not error.startswith(DISK_FULL):
        return web.HTTPBadRequest(text=body, content_type="application/json")
    kind = web.HTTPServiceUnavailable if read else web.HTTPInsufficientStorage
    return kind(text=body, content_type="application/json", headers={"Retry-After": "1"})


class DiskFull:
    """One node's disk-full state and its retries (see the module notes).

    ``resume`` feeds the node again once the disk is clear; ``retry_fsync`` and
    ``rewrite_snapshot`` try the failed writes again.
    """

    def __init__(
        self,
        node_id: int,
        *,
        resume: Callable[[], None],
        retry_fsync: Callable[[], None],
        rewrite_snapshot: Callable[[int, bytes], None],
    ) -> None:
        self.node_id = node_id
        self._resume = resume
        self._retry_fsync = retry_fsync
        self._rewrite_snapshot = rewrite_snapshot
        self._sources: dict[str, str] = {}  # source -> the error that filled it
        self._since: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._snapshot: tuple[int, bytes] | None = None
        self.episodes = 0
        """How many times the disk became full (monotonic)."""
        self.dropped_inputs = 0
        """Messages (peer messages, self-deliveries) dropped while paused."""

    @property
    def active(self) -> bool:
        """True while any source (the WAL, a snapshot) could not write for want of space."""
        return bool(self._sources)

    def has(self, source: str) -> bool:
        """True while ``source`` is full."""
        return source in self._sources

    @property
    def reason(self) -> str | None:
        """The message clients and operators see, or None when the disk is fine."""
        if not self._sources:
            return None
        detail = "; ".join(f"{src}: {err}" for src, err in sorted(self._sources.items()))
        return f"{DISK_FULL} {self.node_id}: writes are refused until space returns ({detail})"

    def paused(self, msgs: Iterable[object]) -> bool:
        """True (and ``msgs`` counted as dropped) while the node must not be fed."""
        if not self._sources:
            return False
        self.dropped_inputs += sum(1 for _ in msgs)
        return True

    def enter(
        self, source: str, error: BaseException, snapshot: tuple[int, bytes] | None = None
    ) -> None:
        """``source`` ran out of space (``snapshot``: the one to write again); log the
        first time the disk fills and start retrying."""
        first = not self._sources
        self._sources[source] = str(error)
        if snapshot is not None:
            self._snapshot = snapshot
        if first:
            self.episodes += 1
            self._since = time.monotonic()
            logger.error(
                "node %d: %s; nothing acknowledged is lost, retrying every %.1f s",
                self.node_id,
                self.reason,
                RETRY_SECONDS,
            )
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(RETRY_SECONDS, self._retry)

    def clear(self, source: str) -> None:
        """``source`` wrote successfully again; resume the node once all are clear."""
        if self._sources.pop(source, None) is None or self._sources:
            return
        held = 0.0 if self._since is None else time.monotonic() - self._since
        self._since = None
        logger.warning(
            "node %d: disk space is back after %.1f s: taking part again", self.node_id, held
        )
        self._resume()

    def cancel(self) -> None:
        """Stop retrying (shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _retry(self) -> None:
        self._timer = None
        if not self._sources:
            return
        if "wal" in self._sources:
            self._retry_fsync()
        snapshot, self._snapshot = self._snapshot, None
        if "snapshot" in self._sources:
            if snapshot is not None:
                self._rewrite_snapshot(*snapshot)
            else:
                self.clear("snapshot")  # nothing left to write
        if self._sources and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(RETRY_SECONDS, self._retry)

    def status(self) -> dict[str, object]:
        """The status fields (``disk_full`` first)."""
        since = self._since
        return {
            "disk_full": self.active,
            "disk_full_reason": self.reason,
            "disk_full_seconds": 0.0 if since is None else round(time.monotonic() - since, 3),
            "disk_full_episodes": self.episodes,
            "disk_full_dropped_inputs": self.dropped_inputs,
        }
