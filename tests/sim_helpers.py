"""Helpers shared by the scripted simulator scenarios."""

from __future__ import annotations

from pyxos.core.messages import ClientReply, Message
from pyxos.core.ready import Ready


class RecordingClient:
    """A passive simulated client (process 100) that records every reply it gets."""

    node_id = 100

    def __init__(self) -> None:
        self.replies: list[ClientReply] = []

    def step(self, msg: Message) -> None:
        if isinstance(msg, ClientReply):
            self.replies.append(msg)

    def tick(self, now: float) -> None:
        pass

    def ready(self) -> Ready:
        return Ready()

    def advance(self) -> None:
        pass

    def next_deadline(self) -> float | None:
        return None
