"""Runner protocol v1 in-process: the embedded runner's transport.

``LocalLink`` is a ``Link`` (runner/link.py) whose hot calls (register,
lease, and a job's state, events, heartbeat and completion) run the same
handlers as the HTTP routes (api/runners.py) in the server's own event loop:
the same authentication (the runner key, the job's worker JWT checked on
every call), epochs and fencing in the same store code, the same errors as
``Refused`` with the status and code HTTP would have answered. No request is
encoded, sent, parsed or validated twice. The rare calls (agent daemons,
questions, chat messages, child jobs, progress, artifacts) go over HTTP to
the same server. Remote runners use ``HttpLink`` only."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self, TypeVar

from corral import auth
from corral.api import runners
from corral.auth import Principal, WorkerClaims
from corral.errors import CorralError
from corral.models import Artifact, Question
from corral.protocol import (
    AgentPoll,
    AgentReport,
    AgentsReported,
    AnswerWait,
    ChatSend,
    ChatSent,
    ChildJob,
    ChildSubmit,
    ChildWait,
    Completed,
    Completion,
    DesiredAgents,
    EventBatch,
    EventsAccepted,
    Heartbeat,
    LeaseRequest,
    LeaseResponse,
    Progress,
    ProgressRecorded,
    QuestionAsk,
    RunnerRegister,
    RunnerRegistered,
    StateRecorded,
    WorkerState,
)
from corral.runner.link import HttpLink, HttpWorker, Refused
from corral.services import Services

log = logging.getLogger(__name__)
T = TypeVar("T")


async def _never() -> bool:
    return False  # the runner is this process: it cannot go away while it waits


async def answer(call: Callable[[], Awaitable[T]]) -> T:
    """``call``'s answer, or the refusal HTTP would have sent (api/errors.py)."""
    try:
        return await call()
    except CorralError as exc:
        if exc.status >= 500:
            log.error("runner call failed: %s", exc.message)
        raise Refused(exc.status, exc.code, exc.message) from exc
    except Exception as exc:
        log.exception("unexpected error in a runner call")
        raise Refused(500, "internal_error", "internal server error") from exc


class LocalLink:
    """Protocol v1 for a runner in the server's process (close it: ``async with``)."""

    def __init__(self, svc: Services, token: str, http: HttpLink) -> None:
        self.svc = svc
        self.token = token  # the runner key, authenticated on each call like a request's
        self.http = http

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.http.aclose()

    async def _runner_key(self) -> Principal:
        who = await self.svc.authenticate(self.token)
        who.require("run")
        return who

    async def register(self, body: RunnerRegister) -> RunnerRegistered:
        async def call() -> RunnerRegistered:
            return await runners.register(body, self.svc, await self._runner_key())

        return await answer(call)

    async def lease(self, runner_id: str, body: LeaseRequest) -> LeaseResponse:
        async def call() -> LeaseResponse:
            who = await self._runner_key()
            return await runners.lease_jobs(runner_id, body, self.svc, who, _never)

        return await answer(call)

    async def poll_agents(self, runner_id: str, body: AgentPoll) -> DesiredAgents:
        return await self.http.poll_agents(runner_id, body)

    async def report_agents(self, runner_id: str, body: AgentReport) -> AgentsReported:
        return await self.http.report_agents(runner_id, body)

    def worker(self, token: str, traceparent: str | None = None) -> LocalWorker:
        return LocalWorker(self.svc, HttpWorker(self.http, token, traceparent))


class LocalWorker:
    """One job's calls, in-process; the worker JWT is verified on each."""

    def __init__(self, svc: Services, http: HttpWorker) -> None:
        self.svc = svc
        self.http = http  # holds the token (renewed by heartbeats)

    @property
    def token(self) -> str:
        return self.http.token

    @token.setter
    def token(self, value: str) -> None:
        self.http.token = value

    @property
    def traceparent(self) -> str | None:
        return self.http.traceparent

    def _claims(self) -> WorkerClaims:
        return auth.verify_worker_token(self.token, self.svc.jwt_secret)

    async def state(self, body: WorkerState) -> StateRecorded:
        return await answer(lambda: runners.worker_state(body, self.svc, self._claims()))

    async def events(self, body: EventBatch) -> EventsAccepted:
        return await answer(lambda: runners.worker_events(body, self.svc, self._claims()))

    async def heartbeat(self) -> Heartbeat:
        beat = await answer(lambda: runners.worker_heartbeat(self.svc, self._claims()))
        self.token = beat.token
        return beat

    async def complete(self, body: Completion) -> Completed:
        return await answer(
            lambda: runners.worker_complete(
                body, self.svc, self._claims(), traceparent=self.http.traceparent
            )
        )

    async def artifact(self, name: str, media_type: str, data: bytes) -> Artifact:
        return await self.http.artifact(name, media_type, data)

    async def ask(self, body: QuestionAsk) -> Question:
        return await self.http.ask(body)

    async def send_message(self, body: ChatSend) -> ChatSent:
        return await self.http.send_message(body)

    async def wait_answer(self, question_id: str, body: AnswerWait) -> Question:
        return await self.http.wait_answer(question_id, body)

    async def submit_child(self, body: ChildSubmit) -> ChildJob:
        return await self.http.submit_child(body)

    async def wait_child(self, job_id: str, body: ChildWait) -> ChildJob:
        return await self.http.wait_child(job_id, body)

    async def cancel_child(self, job_id: str) -> ChildJob:
        return await self.http.cancel_child(job_id)

    async def progress(self, body: Progress) -> ProgressRecorded:
        return await self.http.progress(body)
