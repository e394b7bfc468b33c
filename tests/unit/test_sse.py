"""The lean SSE response (``corral.api.sse``) driven over plain ASGI: frames,
keep-alive comments, the client going away, a client that stopped reading,
the replica stopping, HEAD."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from corral.api.app import create_app
from corral.api.requests import BODY_SEND
from corral.api.sse import Direct, EventStream, frame
from corral.config import Settings
from corral.services import Streams

SCOPE = {"type": "http", "method": "GET", "path": "/s", "headers": []}


class Client:
    """The ASGI server's side: what the app sent, and when the client leaves."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.gone = asyncio.Event()
        self.stuck = False  # sends block (a client that stopped reading)
        self.full: asyncio.Event | None = None  # body sends wait until it is set
        self.tried: list[bytes] = []  # every body send, as it began
        self.first = True

    async def receive(self) -> dict[str, Any]:
        if self.first:
            self.first = False
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            self.tried.append(message.get("body", b""))
        if self.stuck and message["type"] == "http.response.body":
            await asyncio.Event().wait()
        if self.full is not None and message["type"] == "http.response.body":
            await self.full.wait()
        self.sent.append(message)

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])

    @property
    def ended(self) -> bool:
        last = self.sent[-1]
        return last["type"] == "http.response.body" and not last.get("more_body", False)


class Source:
    """Frames to stream; ``closed`` once the stream let go of it."""

    def __init__(self, frames: list[bytes], then_wait: bool = True) -> None:
        self.frames = frames
        self.then_wait = then_wait
        self.closed = asyncio.Event()
        self.started = asyncio.Event()

    async def items(self) -> AsyncIterator[bytes]:
        self.started.set()
        try:
            for f in self.frames:
                yield f
            if self.then_wait:
                await asyncio.Event().wait()
        finally:
            self.closed.set()


def stream(source: Source, **kw: Any) -> EventStream[bytes]:
    kw.setdefault("ping", 30.0)
    return EventStream(source.items(), lambda b: b, **kw)


def test_frames() -> None:
    assert frame('{"a":1}', id="7") == b'id: 7\ndata: {"a":1}\n\n'
    assert frame("x", event="job") == b"event: job\ndata: x\n\n"
    assert frame("one\ntwo\r\nthree") == b"data: one\ndata: two\ndata: three\n\n"


async def test_frames_are_sent_as_they_come_and_the_end_ends_the_body() -> None:
    client = Client()
    source = Source([frame("1", id="1"), frame("2", id="2")], then_wait=False)
    resp = stream(source)
    async with asyncio.timeout(5):
        await resp(SCOPE, client.receive, client.send)
    start = client.sent[0]
    assert start["type"] == "http.response.start" and start["status"] == 200
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert headers[b"cache-control"] == b"no-store"
    assert client.body == b"id: 1\ndata: 1\n\nid: 2\ndata: 2\n\n" and client.ended
    assert source.closed.is_set()


async def test_the_body_skips_the_wrappers_below_the_request_id_middleware() -> None:
    """The start goes down the middleware chain (the request id header, the
    exception handlers' flags); the frames go to the send the request id
    middleware got (``BODY_SEND``), above the wrappers that only watch the start."""
    above, below = Client(), Client()
    source = Source([frame("1", id="1")], then_wait=False)
    async with asyncio.timeout(5):
        await stream(source)({**SCOPE, BODY_SEND: above.send}, below.receive, below.send)
    assert [m["type"] for m in below.sent] == ["http.response.start"]
    assert [m.get("body") for m in above.sent] == [b"id: 1\ndata: 1\n\n", b""]


async def test_an_idle_stream_sends_keep_alive_comments() -> None:
    client = Client()
    source = Source([frame("1")])
    task = asyncio.create_task(stream(source, ping=0.05)(SCOPE, client.receive, client.send))
    await asyncio.sleep(0.3)
    assert client.body.startswith(b"data: 1\n\n")
    assert client.body.count(b": ping\n\n") >= 3
    client.gone.set()
    async with asyncio.timeout(5):
        await task


async def test_the_client_going_away_ends_the_stream_and_its_source() -> None:
    client = Client()
    source = Source([frame("1")])
    task = asyncio.create_task(stream(source)(SCOPE, client.receive, client.send))
    await source.started.wait()
    await asyncio.sleep(0.05)
    client.gone.set()
    async with asyncio.timeout(5):
        await task  # returns, does not raise
    assert source.closed.is_set()
    assert not client.ended  # nothing is sent to a client that left


async def test_a_client_that_stopped_reading_is_cut_after_the_send_timeout() -> None:
    client = Client()
    source = Source([frame("1")])
    client.stuck = True
    resp = stream(source, ping=0.05, send_timeout=0.2)
    async with asyncio.timeout(5):
        await resp(SCOPE, client.receive, client.send)
    assert source.closed.is_set()


async def test_stopping_the_replica_ends_every_open_stream_cleanly() -> None:
    streams = Streams()
    clients = [Client() for _ in range(3)]
    sources = [Source([frame("1")]) for _ in clients]
    tasks = [
        asyncio.create_task(stream(s, streams=streams)(SCOPE, c.receive, c.send))
        for s, c in zip(sources, clients, strict=True)
    ]
    await asyncio.gather(*(s.started.wait() for s in sources))
    await asyncio.sleep(0.05)
    assert len(streams) == 3
    streams.close()
    async with asyncio.timeout(5):
        await asyncio.gather(*tasks)
    assert all(c.ended and c.body == b"data: 1\n\n" for c in clients)
    assert all(s.closed.is_set() for s in sources) and len(streams) == 0
    # One opened while stopping ends at once.
    late, source = Client(), Source([])
    async with asyncio.timeout(5):
        await stream(source, streams=streams)(SCOPE, late.receive, late.send)
    assert late.ended and late.body == b""


async def test_head_answers_the_headers_and_never_starts_the_stream() -> None:
    client = Client()
    source = Source([frame("1")])
    async with asyncio.timeout(5):
        await stream(source)({**SCOPE, "method": "HEAD"}, client.receive, client.send)
    assert client.sent[0]["status"] == 200 and client.ended and client.body == b""
    assert not source.started.is_set()


async def test_a_cancelled_request_stays_cancelled() -> None:
    """The server cancelling the app (its shutdown timeout) is not taken for
    one of the stream's own ends."""
    client = Client()
    source = Source([frame("1")])
    task = asyncio.create_task(stream(source)(SCOPE, client.receive, client.send))
    await source.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert source.closed.is_set()


async def test_direct_writes_go_out_from_the_callers_stack_between_the_streams_own() -> None:
    """``Direct``: while the stream is live and not sending, an item written
    through it is sent at once (no task step), through the body's send; once
    the stream has ended there is no way to write."""
    client, direct = Client(), Direct[bytes]()
    source = Source([frame("1")])
    task = asyncio.create_task(stream(source, direct=direct)(SCOPE, client.receive, client.send))
    await source.started.wait()
    await asyncio.sleep(0.05)
    assert direct.write is not None
    assert direct.write(frame("2")) and direct.write(frame("3"))
    assert client.body == b"data: 1\n\ndata: 2\n\ndata: 3\n\n"  # already, no await between
    client.gone.set()
    async with asyncio.timeout(5):
        await task
    assert direct.write is None


async def test_a_direct_write_that_must_wait_keeps_its_place() -> None:
    """A direct write whose send waits (the client's socket is full) is
    finished by a task: further direct writes are refused meanwhile, and the
    stream's own next send waits for it, so the order holds."""
    client, direct = Client(), Direct[bytes]()
    release = asyncio.Event()

    async def items() -> AsyncIterator[bytes]:
        yield frame("1")
        await release.wait()
        yield frame("3")

    resp = EventStream(items(), lambda b: b, ping=30.0, direct=direct)
    task = asyncio.create_task(resp(SCOPE, client.receive, client.send))
    await asyncio.sleep(0.05)
    assert direct.write is not None
    client.full = asyncio.Event()
    assert direct.write(frame("2"))  # taken; its send waits
    assert not direct.write(frame("x"))  # one in flight: refused (the caller buffers it)
    release.set()
    await asyncio.sleep(0.05)
    assert client.body == b"data: 1\n\n"
    assert client.tried == [b"data: 1\n\n", b"data: 2\n\n"]  # 3 waits for 2's send
    client.full.set()
    async with asyncio.timeout(5):
        await task
    assert client.body == b"data: 1\n\ndata: 2\n\ndata: 3\n\n" and client.ended


async def test_a_client_that_stopped_reading_during_a_direct_write_is_cut() -> None:
    """The stall watch covers a direct write that waits, and the cut ends it."""
    client, direct = Client(), Direct[bytes]()
    source = Source([])
    resp = stream(source, ping=0.05, send_timeout=0.2, direct=direct)
    task = asyncio.create_task(resp(SCOPE, client.receive, client.send))
    await source.started.wait()
    await asyncio.sleep(0.05)
    client.stuck = True
    assert direct.write is not None and direct.write(frame("1"))
    async with asyncio.timeout(5):
        await task  # cut as stalled: returns
    assert source.closed.is_set() and resp._inflight is None


async def test_the_apps_body_send_is_the_servers_own() -> None:
    """The app puts the server's send (outside every middleware, Starlette's
    error handler too) in the scope, for a stream's body messages, and takes
    it out once the request is over: the server's send is a method of its
    request cycle, which holds the scope (a reference cycle per request)."""
    app = create_app(Settings())
    client = Client()
    scope = {**SCOPE, "path": "/no-such-route", "query_string": b"", "scheme": "http"}
    scope["app"] = app
    during: list[Any] = []

    async def send(message: Any) -> None:
        during.append(scope.get(BODY_SEND))
        await client.send(message)

    await app(scope, client.receive, send)
    assert during and all(s == send for s in during)
    assert BODY_SEND not in scope
    assert client.sent[0]["status"] == 404  # an answer went through the whole stack
