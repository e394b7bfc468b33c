"""What the two faces share: where the server is and how it refuses, the
steps a flow asks a face to take, and the descriptors that make one
declaration a method of both faces.

An endpoint is declared once: in ``calls.py`` when it is one request (a
``Call``: the request and how to read its answer), in ``flows.py`` when it
takes several steps (a generator that yields ``Call``, ``Sleep``,
``OpenStream``... and is resumed with each step's result, or has the step's
error thrown into it). Neither does I/O. ``Client`` (sync.py) and
``AsyncClient`` (aio.py) take the steps through ``httpx.Client`` and
``httpx.AsyncClient``; so ``run()`` with its webhook and polling, the SSE
reconnects and the paging are written once, and a method listed in
``methods.py`` exists on both faces with one signature."""

from __future__ import annotations

import functools
import inspect
import os
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, Self, TypeVar, overload

import httpx

from corral import errors
from corral.discovery import recorded
from corral.errors import ClientError, CorralError
from corral.protocol import error_of

if TYPE_CHECKING:
    from corral.config import Settings

T = TypeVar("T")
P = ParamSpec("P")


class ApiError(CorralError):
    """The server refused the request. An instance is also the error tree's
    class for its status (a 404 is a ``NotFound``, a 409 a ``Conflict``...)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    @classmethod
    def of(cls, status: int, code: str, message: str) -> ApiError:
        return _BY_STATUS.get(status, cls)(status, code, message)


def _refusal(base: type[CorralError]) -> type[ApiError]:
    return type(f"Api{base.__name__}", (ApiError, base), {"__doc__": ApiError.__doc__})


_BY_STATUS: dict[int, type[ApiError]] = {
    base.status: _refusal(base)
    for base in (
        errors.BadRequest,
        errors.Unauthorized,
        errors.Forbidden,
        errors.NotFound,
        errors.Conflict,
        errors.PayloadTooLarge,
        errors.InvalidInput,
        errors.TooManyRequests,
        errors.StoreUnavailable,
    )
}


class RunTimeout(ClientError):
    """``run()`` or ``wait()`` gave up waiting; the job goes on unless
    ``cancel_on_timeout`` was set."""

    code = "timeout"

    def __init__(self, message: str, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class Unreachable(ClientError):
    """The connection to the server failed (or a stream from it dropped)."""

    def __init__(self, url: str, cause: Exception) -> None:
        super().__init__(f"cannot reach corral at {url} ({cause}); is `corral serve` running?")
        self.url = url
        self.cause = cause


def resolve(
    url: str | None = None, token: str | None = None, settings: Settings | None = None
) -> tuple[str, str]:
    """The server URL and token: arguments, then CORRAL_URL / CORRAL_TOKEN,
    then what the server using the data dir recorded (else ``host``/``port``)
    and its admin key file."""
    url = url or os.environ.get("CORRAL_URL")
    token = token or os.environ.get("CORRAL_TOKEN")
    if url is None or token is None:
        # The settings tree loads only here: a command given CORRAL_URL and
        # CORRAL_TOKEN (or --url and --token) starts without it.
        from corral.config import load_settings

        settings = settings or load_settings()
        url = url or recorded(settings.data_dir) or settings.local_url()
        if token is None:
            key_file = settings.admin_key_file
            try:
                token = key_file.read_text().strip()
            except FileNotFoundError:
                raise ClientError(
                    f"no API key: pass --token or set CORRAL_TOKEN (no admin key at {key_file}; "
                    "`corral serve` writes one on first start; a server with another "
                    "--data-dir: set CORRAL_DATA_DIR)"
                ) from None
            except OSError as exc:
                raise ClientError(f"cannot read the admin key {key_file}: {exc}") from exc
    return url.rstrip("/"), token


def raise_for(resp: httpx.Response) -> None:
    """ApiError for a refusal, read from its ``{"error": {"code", "message"}}`` body
    (the body must have been read)."""
    if resp.status_code < 400:
        return
    raise ApiError.of(resp.status_code, *error_of(resp.status_code, resp.content))


# -- steps: what a flow asks its face to do -----------------------------------


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request and how to read its answer; resumes the flow with the answer."""

    method: str
    path: str
    read: Callable[[httpx.Response], T]
    params: Mapping[str, Any] | None = None
    json: Any = None
    unbounded: bool = False  # no timeout: the answer waits for a job


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class OpenStream:
    """Open an SSE stream (GET); resumes the flow with a handle for ``Next``.
    ``read_timeout``: the longest silence before the stream counts as lost."""

    path: str
    headers: Mapping[str, str]
    read_timeout: float
    params: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Next:
    """The stream's next non-empty SSE ``data``, or None once it ended (it is closed then)."""

    stream: object


@dataclass(frozen=True, slots=True)
class OpenReceiver:
    """A webhook receiver on a free port of ``host`` for the rest of the flow;
    resumes the flow with it (a ``Hook``), or None when it cannot bind."""

    host: str
    advertise: str | None


class Hook(Protocol):
    """What a flow knows of its receiver: where it is and its secret."""

    @property
    def url(self) -> str: ...

    @property
    def secret(self) -> str: ...


Until = Callable[[dict[str, object]], bool]


@dataclass(frozen=True, slots=True)
class AwaitDelivery:
    """The first delivery about ``job_id`` for which ``until`` holds, within
    ``timeout`` seconds; resumes the flow with its body, or None."""

    hook: Hook
    job_id: str
    until: Until
    timeout: float


@dataclass(frozen=True, slots=True)
class Emit(Generic[T]):
    """An item for the caller of a stream method."""

    item: T


Step = Call[Any] | Sleep | OpenStream | Next | OpenReceiver | AwaitDelivery | Emit[Any]
Flow = Generator[Step, Any, T]


def send(call: Call[T]) -> Flow[T]:
    """``answer = yield from send(call)``: a flow's typed request."""
    answer: T = yield call
    return answer


@dataclass(frozen=True, slots=True)
class Items(Generic[T]):
    """A stream method's flow, which emits items of type T."""

    flow: Flow[None]


class Driver(Generic[T]):
    """Walks a flow for a face: hands out its steps, resumes it with each
    step's result or throws the step's error into it, so the flow's own
    ``try``/``except`` sees I/O errors and cancellation where they happen."""

    def __init__(self, flow: Flow[T]) -> None:
        self._flow = flow
        self._value: Any = None
        self._error: BaseException | None = None
        self.result: T

    def step(self) -> Step | None:
        """The next step; None once the flow returned (``result``)."""
        try:
            if self._error is not None:
                error, self._error = self._error, None
                return self._flow.throw(error)
            value, self._value = self._value, None
            return self._flow.send(value)
        except StopIteration as stop:
            self.result = stop.value
            return None

    def resume(self, value: Any) -> None:
        self._value = value

    def fail(self, error: BaseException) -> None:
        self._error = error

    def close(self) -> None:
        self._flow.close()


# -- the faces and the descriptors that give them the methods ------------------


class SyncFace(ABC):
    @abstractmethod
    def _drive(self, plan: Call[T] | Flow[T]) -> T: ...

    @abstractmethod
    def _iterate(self, items: Items[T]) -> Iterator[T]: ...


class AsyncFace(ABC):
    @abstractmethod
    async def _drive(self, plan: Call[T] | Flow[T]) -> T: ...

    @abstractmethod
    def _iterate(self, items: Items[T]) -> AsyncIterator[T]: ...


class endpoint(Generic[P, T]):  # lower case: used like a decorator
    """A method of both faces from one declaration: ``build`` turns the
    arguments into a ``Call`` or a flow; ``Client`` takes it and returns the
    answer, ``AsyncClient`` returns a coroutine of it."""

    def __init__(self, build: Callable[P, Call[T] | Flow[T]]) -> None:
        self.build = build
        self.__doc__ = build.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> Self: ...
    @overload
    def __get__(self, obj: SyncFace, owner: type) -> Callable[P, T]: ...
    @overload
    def __get__(self, obj: AsyncFace, owner: type) -> Callable[P, Coroutine[Any, Any, T]]: ...
    def __get__(self, obj: object, owner: type) -> Any:
        if obj is None:
            return self
        build = self.build
        if isinstance(obj, SyncFace):
            drive = obj._drive

            def method(*args: P.args, **kwargs: P.kwargs) -> T:
                return drive(build(*args, **kwargs))

            return _named(method, build, self.name)
        if isinstance(obj, AsyncFace):
            adrive = obj._drive

            async def amethod(*args: P.args, **kwargs: P.kwargs) -> T:
                return await adrive(build(*args, **kwargs))

            return _named(amethod, build, self.name)
        raise TypeError(f"{self.name} belongs to Client and AsyncClient, not {owner.__name__}")


class stream(Generic[P, T]):  # lower case: used like a decorator
    """A stream method of both faces from one declaration: an iterator on
    ``Client``, an async iterator on ``AsyncClient``."""

    def __init__(self, build: Callable[P, Items[T]]) -> None:
        self.build = build
        self.__doc__ = build.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> Self: ...
    @overload
    def __get__(self, obj: SyncFace, owner: type) -> Callable[P, Iterator[T]]: ...
    @overload
    def __get__(self, obj: AsyncFace, owner: type) -> Callable[P, AsyncIterator[T]]: ...
    def __get__(self, obj: object, owner: type) -> Any:
        if obj is None:
            return self
        build = self.build
        if isinstance(obj, SyncFace | AsyncFace):
            iterate = obj._iterate

            def method(*args: P.args, **kwargs: P.kwargs) -> Any:
                return iterate(build(*args, **kwargs))

            return _named(method, build, self.name)
        raise TypeError(f"{self.name} belongs to Client and AsyncClient, not {owner.__name__}")


def _named(method: Callable[..., Any], build: Callable[..., Any], name: str) -> Any:
    """``method`` as help() and inspect should show it: the declaration's
    name, docstring and parameters (its return type is the face's)."""
    functools.update_wrapper(method, build)
    method.__name__ = method.__qualname__ = name
    method.__signature__ = _signature(build)  # type: ignore[attr-defined]
    return method


@functools.cache
def _signature(build: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(build).replace(return_annotation=inspect.Signature.empty)
