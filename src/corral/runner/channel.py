"""The worker side of protocol v1 for one job: ordered, batched writes.

Events queue in memory and go out in batches while at most one request is in
flight, so a chatty process costs few requests and order is kept. A 409 (stale
epoch, job no longer active) or 401 marks the channel stale: the runner stops
the job at once and sends nothing more about it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from corral import redact
from corral.executors.base import Waiting
from corral.models import NewEvent, Outcome, Question, event_id
from corral.protocol import (
    AnswerWait,
    Completed,
    Completion,
    EventBatch,
    QuestionAsk,
    WorkerState,
)
from corral.runner.link import Refused, Unreachable, WorkerLink

log = logging.getLogger(__name__)

BATCH = 1000
# A batch also stops at this many bytes of payload: the server refuses a body
# over its max_body_bytes (1 MiB by default) with 413, and a refused batch is
# lost. One event larger than this still goes alone.
BATCH_BYTES = 256 * 1024
_ENVELOPE_BYTES = 128  # an event's id, type and flags around its payload
# How long a write is retried while the server is unreachable (restarts, deploys).
GIVE_UP_SECONDS = 300.0
# One long-poll for an answer (the server holds it up to 60 s).
ANSWER_POLL_SECONDS = 30.0
# How long a job's "running" report waits for company: a job that ends within
# it reports its start with its completion (one transaction on the server,
# not two: issue #18); one that emits an event, asks, or outlives it reports
# it then. A person watching sees "running" at most this much later.
START_WINDOW = 0.1

T = TypeVar("T")


class WorkerChannel:
    def __init__(
        self,
        link: WorkerLink,
        *,
        job_id: str,
        on_stale: Callable[[str], None],
    ) -> None:
        self.link = link
        self.job_id = job_id
        self.stale: str | None = None
        self._on_stale = on_stale
        # Set while a person is asked (the executor's context shares it).
        self.waiting = Waiting()
        self._events: list[NewEvent] = []
        self._sending: list[NewEvent] = []  # the batch in flight
        self._state: WorkerState | None = None
        self.started_at: datetime | None = None
        # The server answered the completion (with its result or a refusal that
        # stands: the job moved on); False while it may not have heard of it.
        self.answered = False
        self._refused = False  # the last call was refused for good
        self._wake = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._flush_loop(), name=f"corral-flush-{job_id}")

    def emit(
        self,
        type: str,
        payload: Mapping[str, object],
        *,
        ephemeral: bool = False,
        internal: bool = False,
    ) -> None:
        if self.stale is not None:
            return
        self._events.append(
            NewEvent.model_construct(
                event_id=event_id(),
                type=type,
                # This runner's own credentials never leave it (the server
                # redacts what it knows; a runner elsewhere knows more).
                payload=redact.data(dict(payload)),
                ephemeral=ephemeral,
                internal=internal,
            )
        )
        self._wake.set()

    def started(self, started_at: datetime | None = None) -> None:
        at = started_at or datetime.now(UTC)
        self.started_at = at
        state = self._state or WorkerState(state="running")
        self._state = state.model_copy(update={"state": "running", "started_at": at})
        self._wake.set()

    def save_handle(self, handle: str) -> None:
        """Record the executor's conversation handle on the session (sent
        before the outcome, so the next turn can resume it)."""
        state = self._state or WorkerState(state="running")
        self._state = state.model_copy(update={"handle": handle})
        self._wake.set()

    async def ask(
        self, question: str, options: Sequence[str] = (), timeout: float | None = None
    ) -> Question | None:
        """Ask a person about this job and wait for the answer (``ask_human``;
        the executor's stall guards pause meanwhile). Returns the question as
        it ended: ``answered`` (the text in ``answer``) or ``expired`` (no
        answer within ``timeout`` seconds; ``Question.reply()`` says so);
        None if the job was lost meanwhile (the channel is stale). Raises
        ``ValueError`` for a question protocol v1 refuses (empty, too long)."""
        body = QuestionAsk(question=question, options=list(options), timeout=timeout)
        await self._report_start()  # a person sees the job running, then its question
        with self.waiting.hold():
            asked = await self._call("ask", lambda: self.link.ask(body))
            poll = AnswerWait(wait=ANSWER_POLL_SECONDS)
            wait = functools.partial(self.link.wait_answer, body.question_id, poll)
            while asked is not None and asked.state == "open":
                asked = await self._call("wait", wait)
        return asked if self.stale is None else None

    async def put_artifact(self, name: str, media_type: str, data: bytes) -> bool:
        """Store an artifact of the job; False if it could not be."""
        stored = await self._call(
            f"artifact {name}", lambda: self.link.artifact(name, media_type, data)
        )
        return stored is not None

    async def heartbeat(self, every: float = 5.0) -> None:
        """Extend the lease; while the server is away, retried at least every
        ``every`` seconds (the heartbeat interval), so that a restarted server
        hears from this runner within its grace (``lease_ttl``)."""
        await self._call("heartbeat", self.link.heartbeat, max_delay=every)

    def unacknowledged(self) -> list[NewEvent]:
        """The events the server has not acknowledged yet (in flight or queued):
        what a journal entry carries."""
        return [*self._sending, *self._events]

    @property
    def token(self) -> str:
        """The job's worker JWT as last renewed."""
        return self.link.token

    async def complete(self, outcome: Outcome) -> Completed | None:
        """Flush, then report the outcome (carrying the last batch of events).
        ``answered`` says whether the server answered the report."""
        self._closing = True
        self._wake.set()
        await self._task
        if self.stale is not None:
            self.answered = self._refused
            return None
        last = self._take()
        while self._events:  # more than one batch left: the report carries the last
            await self._send_events(last)
            last = self._take()
        outcome = redact.outcome(outcome)
        start, self._state = self._state, None  # a bare start left by the flush loop
        if start is not None and _more_than_a_start(start):
            # Saved while the loop's last state call was on its way (a
            # handle, details): the outcome carries only a start's time.
            await self._call("state", functools.partial(self.link.state, start))
            start = None
        started_at = start.started_at if start is not None else None
        body = Completion(outcome=outcome, events=last, started_at=started_at)
        self._sending = body.events
        try:
            completed = await self._call("complete", lambda: self.link.complete(body))
        finally:
            self._sending = []
        self.answered = completed is not None or self._refused
        return completed

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        # Nothing is reported once closed; the callback (the runner's, which
        # holds the executor, which holds this channel's ``emit``) let go, so
        # a finished job's objects are freed at once, not left to the cycle
        # collector (issue #18).
        self._on_stale = _ignore

    def _take(self) -> list[NewEvent]:
        """The next batch: at most BATCH events and about BATCH_BYTES (one at least)."""
        n = size = 0
        for event in self._events[:BATCH]:
            size += len(json.dumps(event.payload, default=str)) + _ENVELOPE_BYTES
            if n and size > BATCH_BYTES:
                break
            n += 1
        batch, self._events = self._events[:n], self._events[n:]
        return batch

    def _bare_start(self) -> bool:
        """Whether the state to report is only the job's start (no handle, no details)."""
        state = self._state
        return state is not None and not _more_than_a_start(state) and not self._events

    async def _report_start(self) -> None:
        """Report a start the flush loop holds back (START_WINDOW) now."""
        state = self._state
        if state is not None and self._bare_start():
            self._state = None
            await self._call("state", functools.partial(self.link.state, state))

    async def _flush_loop(self) -> None:
        while self.stale is None:
            await self._wake.wait()
            self._wake.clear()
            if self._bare_start() and not self._closing:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(START_WINDOW):  # no task, unlike wait_for
                        await self._wake.wait()
                self._wake.clear()
            if self._closing and self._bare_start():
                return  # complete() reports the start with the outcome
            if self._state is not None:
                state, self._state = self._state, None
                await self._call("state", functools.partial(self.link.state, state))
            if self._closing:
                return  # complete() carries what is left
            while self._events and self.stale is None:
                await self._send_events(self._take())

    async def _send_events(self, batch: list[NewEvent]) -> None:
        body = EventBatch(events=batch)
        self._sending = batch
        try:
            await self._call("events", lambda: self.link.events(body))
        finally:
            self._sending = []

    async def _call(
        self, what: str, call: Callable[[], Awaitable[T]], *, max_delay: float = 5.0
    ) -> T | None:
        """Make a call, retried while the server is away (up to
        ``GIVE_UP_SECONDS``); None if it was refused or the channel is stale."""
        if self.stale is not None:
            return None
        delay = 0.05
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GIVE_UP_SECONDS
        while True:
            try:
                return await call()
            except Unreachable as exc:
                reason = str(exc)
                self._refused = False
            except Refused as exc:
                reason = f"{exc.status} {exc.code}: {exc}"
                # 401: the token expired (a long partition); the journal's
                # entry may still end the job when the runner registers again.
                self._refused = exc.status != 401
                if exc.status in (401, 404, 409):
                    self._mark_stale(reason)
                    return None
                if 400 <= exc.status < 500 and exc.status != 429:
                    log.error("worker %s refused (%s)", what, reason, extra={"job_id": self.job_id})
                    return None
                self._refused = False
            if loop.time() > deadline:
                self._mark_stale(f"gave up after {GIVE_UP_SECONDS:g}s: {reason}")
                return None
            log.warning(
                "worker %s failed (%s); retrying", what, reason, extra={"job_id": self.job_id}
            )
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, max_delay)

    def _mark_stale(self, reason: str) -> None:
        if self.stale is None:
            self.stale = reason
            self._wake.set()
            self._on_stale(reason)


def _ignore(reason: str) -> None:
    pass


def _more_than_a_start(state: WorkerState) -> bool:
    """Whether ``state`` says more than that the job started."""
    return state.state != "running" or state.handle is not None or bool(state.details)
