"""The bus: "session S has new events", "there is work", "cancel job J".

Topics are strings (``session:<id>``, ``dispatch``, ``runner:<id>``). Publishing
never blocks; a subscriber that falls more than ``maxsize`` messages behind is
marked overflowed and must re-read from the database (SSE clients reconnect
with Last-Event-ID), so slow consumers never stall writers.
"""

from __future__ import annotations

from typing import Protocol

from corral.bus.memory import MemoryBus, Subscription
from corral.models import Event

BusMessage = list[Event] | str


class Bus(Protocol):
    def publish(self, topic: str, message: BusMessage) -> None: ...

    def subscribe(self, *topics: str, maxsize: int = 1000) -> Subscription: ...


__all__ = ["Bus", "BusMessage", "MemoryBus", "Subscription"]
