"""In-process bus: bounded per-subscriber buffers, fan-out on publish."""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corral.models import Event

    Message = list[Event] | str


class Subscription:
    """One subscriber's bounded buffer (one reader at a time). Use as a
    context manager."""

    def __init__(self, bus: MemoryBus, topics: tuple[str, ...], maxsize: int) -> None:
        self._bus = bus
        self.topics = topics
        self._maxsize = maxsize
        self._items: deque[Message] = deque()
        # The reader's wake-up while it waits. A bare future and a timer, not
        # asyncio.Event and asyncio.timeout: a session's events wake every SSE
        # subscriber, and those cost ~2x as much per wake-up (issue #18).
        self._waiter: asyncio.Future[None] | None = None
        self.overflowed = False

    def _push(self, message: Message) -> None:
        if self.overflowed:
            return
        if len(self._items) >= self._maxsize:
            self.overflowed = True
            self._items.clear()
        else:
            self._items.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self, timeout: float | None = None) -> list[Message]:
        """Everything buffered, waiting up to ``timeout`` for something.
        Returns ``[]`` on timeout or overflow (check ``overflowed``)."""
        if not self._items and not self.overflowed:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = None if timeout is None else loop.call_later(timeout, _wake, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        items = list(self._items)
        self._items.clear()
        return items

    def close(self) -> None:
        self._bus._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


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
