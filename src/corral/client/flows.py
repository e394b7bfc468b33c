"""The endpoints that take more than one request, written once as flows
(generators of steps, see base.py): ``run()`` with its webhook receiver and
polling, ``wait()``, paging through stored events, and the SSE streams that
reconnect with ``Last-Event-ID``. Pure: no I/O, no clock but ``monotonic``."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from corral.errors import ClientError
from corral.jobs import TERMINAL, JobState
from corral.models import AgentLine, Event, Job

from . import calls
from .base import (
    ApiError,
    AwaitDelivery,
    Emit,
    Flow,
    Hook,
    Items,
    Next,
    OpenReceiver,
    OpenStream,
    RunTimeout,
    Sleep,
    Unreachable,
    send,
)

# run(): how long a pushed job may stay silent before one safety poll.
SAFETY_POLL = 15.0
# Stored events are read this many at a time (the server's maximum).
PAGE = 5000


class Result(BaseModel):
    """How a job ended, as ``run()`` returns it."""

    job_id: str
    session_id: str
    state: JobState
    result: str | None = None
    error: str | None = None
    reason: str | None = None
    failure: str | None = None
    attempts: int
    provider: str
    usage: dict[str, Any] | None = None
    cost: float | None = None
    artifacts: list[str] = Field(default_factory=list)
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    via: Literal["webhook", "polling"] = Field(description="How run() learnt that it ended.")

    @property
    def ok(self) -> bool:
        return self.state is JobState.DONE

    @classmethod
    def of(cls, job: Job, artifacts: list[str], via: str) -> Result:
        return cls.model_validate(
            {
                **job.model_dump(),
                "job_id": job.id,
                "attempts": job.attempt,
                "artifacts": artifacts,
                "via": via,
            }
        )


# -- run() and wait() ----------------------------------------------------------


def run(
    prompt: str | None = None,
    *,
    command: str | None = None,
    timeout: float | None = None,
    polling: bool = False,
    poll_interval: float = 0.05,
    push_grace: float = 5.0,
    cancel_on_timeout: bool = False,
    receiver_host: str = "127.0.0.1",
    advertise_host: str | None = None,
    **fields: Any,
) -> Flow[Result]:
    """Submit a job (a ``prompt``, or a shell ``command``) and block until
    it ends; returns its ``Result``.

    Push first: a receiver on a free port of ``receiver_host`` (advertised
    as ``advertise_host``, e.g. this host's name as the server sees it) is
    the job's webhook, with a fresh secret. Polling (first after
    ``poll_interval`` seconds, then 1.5 times longer each time up to 5 s:
    a short job is seen soon, a long one costs few requests) when the receiver
    cannot bind, when ``polling=True``, when the server refuses to send
    webhooks to this host's address (``webhook_allow_private``), or when
    nothing is delivered within ``push_grace`` seconds. On ``timeout`` raises
    RunTimeout; the job goes
    on unless ``cancel_on_timeout``, which also cancels it when the caller is
    interrupted (KeyboardInterrupt, or the task is cancelled)."""
    deadline = _deadline(timeout)
    hook: Hook | None = None if polling else (yield OpenReceiver(receiver_host, advertise_host))
    if hook is not None:
        # `queued` proves the server reaches the receiver; then only the end
        # (no deliveries for assigned and running to wait behind).
        states = ["queued", "done", "failed", "cancelled"]
        fields["webhook"] = {"url": hook.url, "secret": hook.secret, "states": states}
    try:
        accepted = yield from send(calls.submit(prompt, command=command, **fields))
    except ApiError as exc:
        if hook is None or exc.code != "webhook_refused":
            raise
        # The server sends no webhooks to this host's (private) address: poll.
        hook = None
        fields.pop("webhook")
        accepted = yield from send(calls.submit(prompt, command=command, **fields))
    job_id = accepted.job_id
    try:
        via: Literal["webhook", "polling"] = "polling"
        if hook is not None and (yield from _pushed(hook, job_id, deadline, push_grace)):
            via = "webhook"
        else:
            yield from _poll(job_id, deadline, poll_interval)
    except (RunTimeout, asyncio.CancelledError, KeyboardInterrupt):
        if cancel_on_timeout:
            yield from send(calls.cancel(job_id))
        raise
    job = yield from send(calls.get(job_id))
    names = [a.name for a in (yield from send(calls.artifacts(job_id)))]
    return Result.of(job, names, via)


def _pushed(hook: Hook, job_id: str, deadline: float | None, grace: float) -> Flow[bool]:
    """Wait for the terminal delivery; False when push does not work here."""
    if (yield AwaitDelivery(hook, job_id, _seen_any, _remaining(deadline, grace))) is None:
        _check(deadline, job_id)
        return False  # nothing reached us: poll
    while True:
        end = _remaining(deadline, SAFETY_POLL)
        if (yield AwaitDelivery(hook, job_id, _terminal, end)) is not None:
            return True
        if (yield from send(calls.get(job_id))).state in TERMINAL:
            return True  # a delivery lost for good: still right
        _check(deadline, job_id)


def _poll(job_id: str, deadline: float | None, interval: float) -> Flow[None]:
    while (yield from send(calls.get(job_id))).state not in TERMINAL:
        _check(deadline, job_id)
        yield Sleep(_remaining(deadline, interval))
        interval = min(interval * 1.5, 5.0)


def wait(job_id: str, timeout: float | None = None, interval: float = 0.2) -> Flow[Job]:
    """Block until the job ends (following its event stream, then reading
    it; every ``interval`` seconds, growing, if it has not ended yet); raises
    RunTimeout after ``timeout`` seconds."""
    deadline = _deadline(timeout)
    yield from _follow(_EventCursor(f"/jobs/{calls._seg(job_id)}/events", 0, job_id), deadline)
    while (job := (yield from send(calls.get(job_id)))).state not in TERMINAL:
        if deadline is not None and time.monotonic() >= deadline:
            raise RunTimeout(f"job {job_id} still {job.state.value} after {timeout:g}s", job_id)
        yield Sleep(_remaining(deadline, interval))
        interval = min(interval * 1.5, 5.0)
    return job


def _seen_any(body: dict[str, object]) -> bool:
    return True


def _terminal(body: dict[str, object]) -> bool:
    return body.get("state") in {s.value for s in TERMINAL}


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _remaining(deadline: float | None, cap: float) -> float:
    if deadline is None:
        return cap
    return max(0.0, min(cap, deadline - time.monotonic()))


def _check(deadline: float | None, job_id: str) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise RunTimeout(f"job {job_id} did not end in time", job_id)


# -- stored events -------------------------------------------------------------


def _stored(path: str, since: int) -> Flow[list[Event]]:
    events: list[Event] = []
    while True:
        page, since = yield from send(calls.event_page(path, since, PAGE))
        events.extend(page)
        if len(page) < PAGE:
            return events


def job_event_list(job_id: str, since: int = 0) -> Flow[list[Event]]:
    """All of a job's stored events after ``since``."""
    return _stored(f"/jobs/{calls._seg(job_id)}/events", since)


def session_events(session_id: str, since: int = 0) -> Flow[list[Event]]:
    """All of a session's stored events after ``since``."""
    return _stored(f"/sessions/{calls._seg(session_id)}/events", since)


# -- streams -------------------------------------------------------------------


def events(session_id: str, since: int = 0, *, follow: bool = True) -> Items[Event]:
    """A session's events after ``since``: with ``follow`` (the default) live
    and without end (SSE; reconnects with Last-Event-ID, never yields an event
    twice); with ``follow=False`` the stored ones, then it stops."""
    path = f"/sessions/{calls._seg(session_id)}"
    if not follow:
        return Items(_emit_all(_stored(f"{path}/events", since)))
    return Items(_follow(_EventCursor(f"{path}/stream", since, None), None, emit=True))


def job_events(job_id: str, since: int = 0, timeout: float | None = None) -> Items[Event]:
    """A job's events, live, until it ends (or ``timeout`` seconds pass)."""
    cursor = _EventCursor(f"/jobs/{calls._seg(job_id)}/events", since, job_id)
    return Items(_follow(cursor, _deadline(timeout), emit=True))


def follow_agent_logs(name: str, n: int = 0) -> Items[AgentLine]:
    """An agent's lines as they are written (after its last ``n``); resumes
    after a dropped connection."""
    return Items(_follow(_LogCursor(name, n), None, emit=True))


def _emit_all(flow: Flow[list[Event]]) -> Flow[None]:
    for event in (yield from flow):
        yield Emit(event)


class _EventCursor:
    """Where an event stream stands: the last seq yielded (the Last-Event-ID
    of a reconnect, so no event comes twice) and whether its job ended."""

    what = "event"

    def __init__(self, path: str, since: int, job_id: str | None) -> None:
        self.path = path
        self.last = since
        self.job_id = job_id
        self.ended = False

    def open(self, read_timeout: float) -> OpenStream:
        headers = {"Accept": "text/event-stream"}
        if self.last:
            headers["Last-Event-ID"] = str(self.last)
        return OpenStream(self.path, headers, read_timeout)

    def take(self, data: str) -> Event | None:
        """The event in an SSE ``data`` field, or None (one already seen)."""
        event = Event.from_json(data)
        if event.seq is not None:
            if event.seq <= self.last:
                return None
            self.last = event.seq
        if (
            self.job_id is not None
            and event.type == "job.state"
            and event.job_id == self.job_id
            and event.payload.get("to") in TERMINAL
        ):
            self.ended = True
        return event


class _LogCursor:
    """Where an agent's log stream stands: the last line's offset."""

    what = "log"
    ended = False

    def __init__(self, name: str, n: int) -> None:
        self.path = f"/sse/agents/{calls._seg(name)}/logs"
        self.n = n
        self.last: int | None = None

    def open(self, read_timeout: float) -> OpenStream:
        headers = {"Accept": "text/event-stream"}
        if self.last is not None:
            headers["Last-Event-ID"] = str(self.last)
        params = {"n": self.n if self.last is None else 0}
        return OpenStream(self.path, headers, read_timeout, params)

    def take(self, data: str) -> AgentLine:
        line = AgentLine.model_validate(json.loads(data))
        self.last = line.offset
        return line


def _follow(
    cursor: _EventCursor | _LogCursor, deadline: float | None, *, emit: bool = False
) -> Flow[None]:
    """Read a stream to its end (a job's ends with the job), reconnecting
    after a dropped connection where it stopped; stop at ``deadline``."""
    failures = 0
    while True:
        try:
            # The server pings idle streams: 60 s of silence is a lost connection.
            read = 60.0 if deadline is None else max(0.1, deadline - time.monotonic())
            stream = yield cursor.open(read)
            failures = 0
            while (data := (yield Next(stream))) is not None:
                item = cursor.take(data)
                if item is not None and emit:
                    yield Emit(item)
            if cursor.ended:
                return
        except Unreachable as exc:
            failures += 1
            if failures > 20:
                raise ClientError(
                    f"lost the {cursor.what} stream from {exc.url}: {exc.cause}"
                ) from exc
            yield Sleep(min(0.05 * 2**failures, 2.0))
        if deadline is not None and time.monotonic() > deadline:
            return
