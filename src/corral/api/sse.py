"""A lean server-sent events response: frames in as bytes, one send each.

sse-starlette ran four tasks per connection and, for every event and every
subscriber, built a ``ServerSentEvent``, encoded it and sent it under a lock
and an anyio cancel scope: ~100 µs of server CPU per delivery with 1,000
subscribers of one session (issue #18). Here a frame is encoded once per event
(``frame``; the session stream caches it across subscribers) and a delivery is
one ``send`` of those bytes. A source given a ``Direct`` may make that send
from the call that learnt of the item (a bus publish) while the stream is
idle, instead of waking the stream's task: a task step per subscriber and
event was most of a delivery's CPU (issue #18).

One more task per connection (not per event) waits for the client to go away
and then ends the stream, sends a keep-alive comment every ``ping`` seconds,
and cuts a stream whose send has been blocked for ``send_timeout`` (a client
that stopped reading: its socket and the transport's buffer are full). A
subscriber that merely falls behind is cut earlier, by its bus subscription
overflowing (``settings.sse_buffer``); either way it resumes with
Last-Event-ID. ``Streams`` ends every open stream when the replica stops, so
the clients reconnect (to another replica) instead of holding up the shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Generator, Mapping
from typing import Any, Generic, TypeVar

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from corral.api.requests import BODY_SEND
from corral.services import Streams, Why

log = logging.getLogger(__name__)

# A keep-alive comment, as the one message sent.
PING = {"type": "http.response.body", "body": b": ping\n\n", "more_body": True}
_LINES = re.compile(r"\r\n|\r|\n")
_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}

T = TypeVar("T")


class Direct(Generic[T]):
    """A source's way to hand an item to its stream's client at once, from
    whatever call learnt of it (a bus publish) instead of the stream's task:
    ``write(item)`` is set while the stream can take one (its body is live and
    no send is in progress) and returns False when it cannot after all."""

    __slots__ = ("write",)

    def __init__(self) -> None:
        self.write: Callable[[T], bool] | None = None


def frame(data: str, *, id: str | None = None, event: str | None = None) -> bytes:
    """One SSE message as the bytes sent on the wire."""
    head = ""
    if id is not None:
        head += f"id: {id}\n"
    if event is not None:
        head += f"event: {event}\n"
    if "\n" in data or "\r" in data:
        body = "".join(f"data: {line}\n" for line in _LINES.split(data))
    else:
        body = f"data: {data}\n"
    return f"{head}{body}\n".encode()


def message(m: Mapping[str, str]) -> bytes:
    """A message as a dict (``data``, optional ``id`` and ``event``) as a frame."""
    return frame(m["data"], id=m.get("id"), event=m.get("event"))


class _Resumed:
    """The rest of an awaitable whose steps (its ``__await__``) were started
    by hand and now wait on ``waiting`` (what the first step yielded), as an
    awaitable: ``yield from`` with the first step already taken."""

    def __init__(self, steps: Generator[Any, Any, None], waiting: object) -> None:
        self.steps, self.waiting = steps, waiting

    def __await__(self) -> Generator[Any, Any, None]:
        coro, waiting = self.steps, self.waiting
        while True:
            try:
                sent = yield waiting
            except BaseException as exc:  # cancelled while waiting: into the coroutine
                try:
                    waiting = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    waiting = coro.send(sent)
                except StopIteration:
                    return


class EventStream(Response, Generic[T]):
    """``items`` as a ``text/event-stream`` response, each sent as
    ``encode(item)`` (a frame; ``frame`` makes one).

    A Starlette ``Response`` so FastAPI routes can return it; it only uses
    the headers machinery of one."""

    media_type = "text/event-stream"

    def __init__(
        self,
        items: AsyncIterator[T],
        encode: Callable[[T], bytes],
        *,
        ping: float,
        streams: Streams | None = None,
        send_timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        direct: Direct[T] | None = None,
    ) -> None:
        self.items = items
        self.encode = encode
        self.ping = ping
        self.send_timeout = send_timeout
        self.streams = streams
        self.status_code = 200
        self.background = None
        self.init_headers({**_HEADERS, **(headers or {})})
        self._task: asyncio.Task[object] | None = None
        self._why: Why | None = None
        self._done = False
        # When the send in progress began (loop time), None between sends.
        self._sending: float | None = None
        self.direct = direct
        self._body: Send | None = None  # the body's send, once the stream is live
        # A direct write whose send had to wait (the client's socket was full):
        # the stream's own sends wait for it, keeping the order.
        self._inflight: asyncio.Task[None] | None = None

    def end(self, why: Why) -> None:
        """End the stream from outside its task (the watcher, ``Streams``)."""
        if self._done or self._why is not None or self._task is None:
            return
        self._why = why
        self._task.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
        if scope.get("method") == "HEAD":  # the stream never starts (it would never end)
            await send(start)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            await self._close_items()
            return
        await send(start)
        # The body: straight to the send above the middleware's wrappers,
        # which only look at the start (request id, the exception handlers'
        # "started" flags): ~3 us less per delivery (issue #18).
        send = self._body = scope.get(BODY_SEND, send)
        task = self._task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.create_task(self._watch(receive, send))
        if self.streams is not None:
            self.streams.add(self)
        if self.direct is not None:
            self.direct.write = self._write_now
        try:
            await self._pump(send)
        except asyncio.CancelledError:
            if self._why is None or task.uncancel() > 0:
                raise
            if self._why == "stopping" and self._sending is None:
                with contextlib.suppress(OSError):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            elif self._why == "stalled":
                log.info("cut an event stream whose client read nothing for %gs", self.send_timeout)
        finally:
            self._done = True
            if self.direct is not None:
                self.direct.write = None
            if self._inflight is not None:  # a direct write still waiting for the socket
                self._inflight.cancel()
            if self.streams is not None:
                self.streams.discard(self)
            watcher.cancel()
            await self._close_items()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _close_items(self) -> None:
        """End the source now (its bus subscription with it), not when it is collected."""
        aclose = getattr(self.items, "aclose", None)
        if aclose is not None:
            await aclose()

    async def _pump(self, send: Send) -> None:
        loop, encode = asyncio.get_running_loop(), self.encode
        async for item in self.items:
            if self._inflight is not None:
                await self._inflight
            self._sending = loop.time()
            await send({"type": "http.response.body", "body": encode(item), "more_body": True})
            self._sending = None
        if self._inflight is not None:
            await self._inflight
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _write_now(self, item: T) -> bool:
        """``item`` sent from the caller's stack (``Direct``): the body's send
        is a coroutine that finishes without waiting unless the client's
        socket is full (uvicorn waits for it to drain); one that waits is
        finished by a task the stream's own sends wait for. False: not now
        (the stream ends, or a send is in progress)."""
        send = self._body
        if send is None or self._done or self._why is not None:
            return False
        if self._sending is not None or self._inflight is not None:
            return False
        body = {"type": "http.response.body", "body": self.encode(item), "more_body": True}
        steps = send(body).__await__()
        try:
            waiting = steps.send(None)
        except StopIteration:
            return True
        except Exception:
            log.warning("an event stream's send failed; ending the stream", exc_info=True)
            self.end("gone")
            return True
        # The send waits (for the socket to drain): a task finishes it.
        self._sending = asyncio.get_running_loop().time()
        self._inflight = asyncio.ensure_future(self._finish(steps, waiting))
        return True

    async def _finish(self, steps: Generator[Any, Any, None], waiting: object) -> None:
        try:
            await _Resumed(steps, waiting)
        except Exception:
            log.warning("an event stream's send failed; ending the stream", exc_info=True)
            self.end("gone")
        finally:
            self._sending = self._inflight = None

    async def _watch(self, receive: Receive, send: Send) -> None:
        """Until the client goes: keep-alive comments, and the cut of a stalled send."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with asyncio.timeout(self.ping):
                    message = await receive()
            except TimeoutError:
                began = self._sending
                if began is None:
                    try:
                        async with asyncio.timeout(self.send_timeout):
                            await send(PING)
                    except TimeoutError:
                        self.end("stalled")
                        return
                elif loop.time() - began >= self.send_timeout:
                    self.end("stalled")
                    return
                continue
            if message["type"] == "http.disconnect":
                self.end("gone")
                return
