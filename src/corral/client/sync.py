"""``Client``: the methods of methods.py, taken synchronously through
``httpx.Client``; ``run()``'s receiver is a ``Receiver`` thread."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from httpx_sse import EventSource, connect_sse

from .base import (
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
    SyncFace,
    Unreachable,
    raise_for,
    resolve,
)
from .methods import Methods
from .receivers import Receiver

if TYPE_CHECKING:
    from corral.config import Settings

T = TypeVar("T")


class Client(SyncFace, Methods):
    """Synchronous client: each method sends its request(s) and returns the
    answer as a typed model. URL and key: arguments, ``CORRAL_URL`` /
    ``CORRAL_TOKEN``, or the local server and its admin key file."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        settings: Settings | None = None,
    ) -> None:
        self.url, token = resolve(url, token, settings)
        self._http = httpx.Client(
            base_url=self.url, timeout=timeout, headers={"Authorization": f"Bearer {token}"}
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, call: Call[T]) -> T:
        try:
            resp = self._http.request(
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

    def _drive(self, plan: Call[T] | Flow[T]) -> T:
        if isinstance(plan, Call):
            return self._send(plan)
        driver = Driver(plan)
        held = _Held()
        try:
            while (step := driver.step()) is not None:
                try:
                    driver.resume(self._take(step, held))
                except BaseException as exc:  # the flow decides (KeyboardInterrupt too)
                    driver.fail(exc)
            return driver.result
        finally:
            held.close()
            driver.close()

    def _iterate(self, items: Items[T]) -> Iterator[T]:
        driver = Driver(items.flow)
        held = _Held()
        try:
            while (step := driver.step()) is not None:
                if isinstance(step, Emit):
                    yield step.item
                    continue
                try:
                    driver.resume(self._take(step, held))
                except BaseException as exc:
                    driver.fail(exc)
        finally:
            held.close()
            driver.close()

    def _take(self, step: Step, held: _Held) -> Any:
        if isinstance(step, Call):
            return self._send(step)
        if isinstance(step, Next):
            assert isinstance(step.stream, _Stream)
            return step.stream.next()
        if isinstance(step, OpenStream):
            return _Stream(self, step, held)
        if isinstance(step, AwaitDelivery):
            assert isinstance(step.hook, Receiver)
            return step.hook.wait(step.job_id, step.until, step.timeout)
        if isinstance(step, Sleep):
            time.sleep(step.seconds)
            return None
        if isinstance(step, OpenReceiver):
            try:
                receiver = Receiver(
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
        self._open: dict[int, _Stream | Receiver] = {}

    def add(self, thing: _Stream | Receiver) -> None:
        self._open[id(thing)] = thing

    def drop(self, thing: _Stream | Receiver) -> None:
        self._open.pop(id(thing), None)

    def close(self) -> None:
        while self._open:
            _, thing = self._open.popitem()
            thing.close()


class _Stream:
    """An open SSE stream (``OpenStream``), read one ``Next`` at a time."""

    def __init__(self, client: Client, step: OpenStream, held: _Held) -> None:
        self._url = client.url
        self._held = held
        self._context: AbstractContextManager[EventSource] | None = connect_sse(
            client._http,
            "GET",
            step.path,
            params=step.params,
            headers=dict(step.headers),
            timeout=httpx.Timeout(30.0, read=step.read_timeout),
        )
        held.add(self)
        try:
            source = self._context.__enter__()
            if source.response.status_code >= 400:
                source.response.read()
                raise_for(source.response)
        except httpx.TransportError as exc:
            self.close()
            raise Unreachable(self._url, exc) from exc
        except BaseException:
            self.close()
            raise
        self._events = source.iter_sse()

    def next(self) -> str | None:
        try:
            for sse in self._events:
                if sse.data:
                    return sse.data
        except httpx.TransportError as exc:
            self.close()
            raise Unreachable(self._url, exc) from exc
        except BaseException:
            self.close()
            raise
        self.close()
        return None

    def close(self) -> None:
        self._held.drop(self)
        context, self._context = self._context, None
        if context is not None:
            context.__exit__(None, None, None)
