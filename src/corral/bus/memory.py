"""In-process bus: bounded per-subscriber buffers, fan-out on publish."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING

log = logging.getLogger(__name__)

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
        # When the wait in progress times out (loop time; None: never), and
        # the one timer that enforces it. The timer outlives a wait that ends
        # early and serves the next ones: a reader woken by every event would
        # otherwise make (and cancel) a timer per event, ~15 % of an SSE
        # delivery's CPU with 1,000 subscribers (issue #18). Firing before the
        # deadline of the wait then in progress, it re-arms for it.
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.overflowed = False
        # Takes a message at once, from the publisher's call, while the
        # reader waits in ``get`` with nothing buffered; returns False to
        # have it buffered (and the reader woken) instead. A message taken
        # restarts the wait's timeout, as one read would. An SSE stream's
        # fast path: a delivery without waking its task (issue #18).
        self.deliver: Callable[[Message], bool] | None = None
        self._timeout: float | None = None  # of the wait in progress

    def _push(self, message: Message) -> None:
        if self.overflowed:
            return
        deliver, waiter = self.deliver, self._waiter
        if deliver is not None and waiter is not None and not waiter.done() and not self._items:
            try:
                taken = deliver(message)
            except Exception:  # one subscriber's failure is not the publisher's
                log.exception("a bus subscriber's deliver failed; the message is buffered")
                taken = False
            if taken:
                if self._timeout is not None:
                    self._deadline = waiter.get_loop().time() + self._timeout
                return
        if len(self._items) >= self._maxsize:
            self.overflowed = True
            self._items.clear()
        else:
            self._items.append(message)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self, timeout: float | None = None) -> list[Message]:
        """Everything buffered, waiting up to ``timeout`` for something.
        Returns ``[]`` on timeout or overflow (check ``overflowed``)."""
        if not self._items and not self.overflowed:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            self._timeout = timeout
            if timeout is None:
                self._deadline = None
            else:
                deadline = self._deadline = loop.time() + timeout
                timer = self._timer
                if timer is None or timer.when() > deadline:  # none, or too late
                    if timer is not None:
                        timer.cancel()
                    self._timer = loop.call_at(deadline, self._expire)
            try:
                await waiter
            finally:
                self._waiter = None
        items = list(self._items)
        self._items.clear()
        return items

    def _expire(self) -> None:
        """The timer: end the wait in progress if its deadline has come, else
        wait on for it (it began after the timer was set)."""
        self._timer = None
        waiter, deadline = self._waiter, self._deadline
        if waiter is None or waiter.done() or deadline is None:
            return  # no wait, or one without a timeout: the next get sets one
        loop = waiter.get_loop()
        if deadline - loop.time() <= _EARLY:
            waiter.set_result(None)
        else:
            self._timer = loop.call_at(deadline, self._expire)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._bus._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# The loop runs a timer up to its clock resolution early (BaseEventLoop._run_once).
_EARLY = 0.001


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
