"""``AsyncClient``: the methods of methods.py as coroutines, taken through
``httpx.AsyncClient``; ``run()``'s receiver is an ``AsyncReceiver`` on the
running event loop."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from httpx_sse import EventSource, ServerSentEvent, aconnect_sse

from .base import (
    AsyncFace,
    AwaitDelivery,
    Call,
    Driver,
    Emit,
    Flow,
    Items,
    Next,
    OpenReceiver,
    OpenStream,
    Sleep,
    Step,
    Unreachable,
    raise_for,
    resolve,
)
from .methods import Methods
from .receivers import AsyncReceiver

if TYPE_CHECKING:
    from corral.config import Settings

T = TypeVar("T")


class AsyncClient(AsyncFace, Methods):
    """The asynchronous face of ``Client``: the same methods, as coroutines
    (``events``, ``job_events`` and ``follow_agent_logs`` are async iterators)."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        settings: Settings | None = None,
    ) -> None:
        self.url, token = resolve(url, token, settings)
        self._http = httpx.AsyncClient(
            base_url=self.url, timeout=timeout, headers={"Authorization": f"Bearer {token}"}
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, call: Call[T]) -> T:
        try:
            resp = await self._http.request(
                call.method,
                call.path,
                params=call.params,
                json=call.json,
                timeout=None if call.unbounded else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TransportError as exc:
            raise Unreachable(self.url, exc) from exc
        raise_for(resp)
        return call.read(resp)

    async def _drive(self, plan: Call[T] | Flow[T]) -> T:
        if isinstance(plan, Call):
            return await self._send(plan)
        driver = Driver(plan)
        held = _Held()
        cancelled = False
        try:
            while (step := driver.step()) is not None:
                try:
                    if cancelled:  # what the flow does about it must not be cut short
                        driver.resume(await asyncio.shield(self._take(step, held)))
                    else:
                        driver.resume(await self._take(step, held))
                except BaseException as exc:  # the flow decides (cancellation too)
                    cancelled = cancelled or isinstance(exc, asyncio.CancelledError)
                    driver.fail(exc)
            return driver.result
        finally:
            await held.aclose()
            driver.close()

    async def _iterate(self, items: Items[T]) -> AsyncIterator[T]:
        driver = Driver(items.flow)
        held = _Held()
        try:
            while (step := driver.step()) is not None:
                if isinstance(step, Emit):
                    yield step.item
                    continue
                try:
                    driver.resume(await self._take(step, held))
                except BaseException as exc:
                    driver.fail(exc)
        finally:
            await held.aclose()
            driver.close()

    async def _take(self, step: Step, held: _Held) -> Any:
        if isinstance(step, Call):
            return await self._send(step)
        if isinstance(step, Next):
            assert isinstance(step.stream, _Stream)
            return await step.stream.next()
        if isinstance(step, OpenStream):
            return await _Stream.open(self, step, held)
        if isinstance(step, AwaitDelivery):
            assert isinstance(step.hook, AsyncReceiver)
            return await step.hook.wait(step.job_id, step.until, step.timeout)
        if isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
            return None
        if isinstance(step, OpenReceiver):
            try:
                receiver = await AsyncReceiver.start(
                    secrets.token_urlsafe(32), host=step.host, advertise=step.advertise
                )
            except OSError:
                return None  # cannot bind here: run() polls
            held.add(receiver)
            return receiver
        raise TypeError(f"{step!r} is not a step a method may take")


class _Held:
    """What a flow opened (its streams, its receiver): closed when it ends."""

    def __init__(self) -> None:
        self._open: dict[int, _Stream | AsyncReceiver] = {}

    def add(self, thing: _Stream | AsyncReceiver) -> None:
        self._open[id(thing)] = thing

    def drop(self, thing: _Stream | AsyncReceiver) -> None:
        self._open.pop(id(thing), None)

    async def aclose(self) -> None:
        while self._open:
            _, thing = self._open.popitem()
            await thing.aclose()


class _Stream:
    """An open SSE stream (``OpenStream``), read one ``Next`` at a time."""

    def __init__(
        self, url: str, context: AbstractAsyncContextManager[EventSource], held: _Held
    ) -> None:
        self._url = url
        self._context: AbstractAsyncContextManager[EventSource] | None = context
        self._held = held
        self._events: AsyncGenerator[ServerSentEvent, None] | None = None

    @classmethod
    async def open(cls, client: AsyncClient, step: OpenStream, held: _Held) -> _Stream:
        context = aconnect_sse(
            client._http,
            "GET",
            step.path,
            params=step.params,
            headers=dict(step.headers),
            timeout=httpx.Timeout(30.0, read=step.read_timeout),
        )
        self = cls(client.url, context, held)
        held.add(self)
        try:
            source = await context.__aenter__()
            if source.response.status_code >= 400:
                await source.response.aread()
                raise_for(source.response)
        except httpx.TransportError as exc:
            await self.aclose()
            raise Unreachable(self._url, exc) from exc
        except BaseException:
            await self.aclose()
            raise
        self._events = source.aiter_sse()
        return self

    async def next(self) -> str | None:
        assert self._events is not None
        try:
            async for sse in self._events:
                if sse.data:
                    return sse.data
        except httpx.TransportError as exc:
            await self.aclose()
            raise Unreachable(self._url, exc) from exc
        except BaseException:
            await self.aclose()
            raise
        await self.aclose()
        return None

    async def aclose(self) -> None:
        self._held.drop(self)
        events, self._events = self._events, None
        context, self._context = self._context, None
        if events is not None:
            await events.aclose()
        if context is not None:
            await context.__aexit__(None, None, None)
