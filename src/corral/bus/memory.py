"""In-process bus: bounded per-subscriber buffers, fan-out on publish."""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corral.models import Event

    Message = list[Event] | str


class Subscription:
    """One subscriber's bounded buffer. Use as an async context manager."""

    def __init__(self, bus: MemoryBus, topics: tuple[str, ...], maxsize: int) -> None:
        self._bus = bus
        self.topics = topics
        self._maxsize = maxsize
        self._items: deque[Message] = deque()
        self._ready = asyncio.Event()
        self.overflowed = False

    def _push(self, message: Message) -> None:
        if self.overflowed:
            return
        if len(self._items) >= self._maxsize:
            self.overflowed = True
            self._items.clear()
        else:
            self._items.append(message)
        self._ready.set()

    async def get(self, timeout: float | None = None) -> list[Message]:
        """Everything buffered, waiting up to ``timeout`` for something.
        Returns ``[]`` on timeout or overflow (check ``overflowed``)."""
        if not self._items and not self.overflowed:
            try:
                # asyncio.timeout, unlike wait_for, needs no task per wake-up.
                async with asyncio.timeout(timeout):
                    await self._ready.wait()
            except TimeoutError:
                return []
        self._ready.clear()
        items = list(self._items)
        self._items.clear()
        return items

    def close(self) -> None:
        self._bus._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemoryBus:
    def __init__(self) -> None:
        self._subs: defaultdict[str, set[Subscription]] = defaultdict(set)

    def publish(self, topic: str, message: Message) -> None:
        for sub in tuple(self._subs.get(topic, ())):
            sub._push(message)

    def subscribe(self, *topics: str, maxsize: int = 1000) -> Subscription:
        """Subscribe to one or more topics; messages of all arrive in one buffer."""
        sub = Subscription(self, topics, maxsize)
        for topic in topics:
            self._subs[topic].add(sub)
        return sub

    def subscribers(self, topic: str) -> int:
        return len(self._subs.get(topic, ()))

    def _unsubscribe(self, sub: Subscription) -> None:
        for topic in sub.topics:
            subs = self._subs.get(topic)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[topic]
