"""How a runner reaches the control plane: the calls of protocol v1
(corral/protocol/) as typed methods.

The runner, its worker channels and its agent host talk to a ``Link`` (the
runner key's calls) and, per job, to a ``WorkerLink`` (the calls made with
that job's worker token). ``HttpLink`` carries them over HTTP; it is the only
place of the runner that knows URLs, headers and status codes. A link raises
``Unreachable`` when the call may not have reached the server (retry it),
``Refused`` with the server's status and error code, and ``BadAnswer`` when
the answer is not what v1 says."""

from __future__ import annotations

import socket
from types import TracebackType
from typing import Protocol, Self, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

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
    calls,
    error_of,
    paths,
)
from corral.protocol.bodies import poll_timeout
from corral.protocol.calls import Call

A = TypeVar("A", bound=BaseModel)

# A link cut silently (no FIN, no RST: a cable, a NAT or a VPN dropping its
# state) leaves a connection that waits for ever: TCP keepalive probes an idle
# connection after KEEPALIVE_IDLE seconds of silence, every KEEPALIVE_INTERVAL,
# and gives up after KEEPALIVE_PROBES unanswered ones; TCP_USER_TIMEOUT does
# the same for a request sent into the cut (data unacknowledged). The kernels
# answer the probes, not the server's process: a busy server is not dead.
KEEPALIVE_IDLE = 2
KEEPALIVE_INTERVAL = 1
KEEPALIVE_PROBES = 3
DEAD_AFTER = KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_PROBES  # seconds


def keepalive_options() -> list[tuple[int, int, int]]:
    """Socket options that make a dead peer seen within ``DEAD_AFTER``
    seconds (the ones this platform has)."""
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    wanted = [
        # TCP_KEEPALIVE is macOS's name of TCP_KEEPIDLE.
        (getattr(socket, "TCP_KEEPIDLE", getattr(socket, "TCP_KEEPALIVE", None)), KEEPALIVE_IDLE),
        (getattr(socket, "TCP_KEEPINTVL", None), KEEPALIVE_INTERVAL),
        (getattr(socket, "TCP_KEEPCNT", None), KEEPALIVE_PROBES),
        (getattr(socket, "TCP_USER_TIMEOUT", None), DEAD_AFTER * 1000),  # Linux, milliseconds
    ]
    options += [(socket.IPPROTO_TCP, opt, value) for opt, value in wanted if opt is not None]
    return options


class LinkError(CorralError):
    """A call of the runner protocol failed."""


class Unreachable(LinkError):
    """The call may not have reached the server (connection refused or
    dropped, timeout): it may be tried again."""


class Refused(LinkError):
    """The server answered the call with an error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class BadAnswer(LinkError):
    """The server's answer is not what protocol v1 says (another version?)."""


class WorkerLink(Protocol):
    """One job's calls, with its worker token (renewed by ``heartbeat``)."""

    token: str

    @property
    def traceparent(self) -> str | None:
        """Sent with each call: the job's run span (corral.tracing)."""

    async def state(self, body: WorkerState) -> StateRecorded: ...

    async def events(self, body: EventBatch) -> EventsAccepted: ...

    async def heartbeat(self) -> Heartbeat: ...

    async def artifact(self, name: str, media_type: str, data: bytes) -> Artifact: ...

    async def complete(self, body: Completion) -> Completed: ...

    async def ask(self, body: QuestionAsk) -> Question: ...

    async def send_message(self, body: ChatSend) -> ChatSent: ...

    async def wait_answer(self, question_id: str, body: AnswerWait) -> Question: ...
    # The job's MCP gateway's corral tools.
    async def submit_child(self, body: ChildSubmit) -> ChildJob: ...

    async def wait_child(self, job_id: str, body: ChildWait) -> ChildJob: ...

    async def cancel_child(self, job_id: str) -> ChildJob: ...

    async def progress(self, body: Progress) -> ProgressRecorded: ...


class Link(Protocol):
    """The runner key's calls, and the way to a job's."""

    async def register(self, body: RunnerRegister) -> RunnerRegistered: ...

    async def lease(self, runner_id: str, body: LeaseRequest) -> LeaseResponse: ...

    async def poll_agents(self, runner_id: str, body: AgentPoll) -> DesiredAgents: ...

    async def report_agents(self, runner_id: str, body: AgentReport) -> AgentsReported: ...

    def worker(self, token: str, traceparent: str | None = None) -> WorkerLink: ...


class HttpLink:
    """Protocol v1 over HTTP, on one connection pool (close it: ``async with``).

    No call waits for ever on a connection cut silently: the sockets have TCP
    keepalive (``keepalive_options``), a long-poll's answer (lease, agents, a
    question's answer, a child job) is awaited for its wait plus a slack
    (``poll_timeout``) and a heartbeat's for one interval plus a slack
    (``heartbeat_interval``, from the registration)."""

    def __init__(
        self, server: str, token: str, *, timeout: httpx.Timeout, max_connections: int
    ) -> None:
        self.timeout = timeout
        # The server's, once registered: how long a heartbeat's answer is awaited.
        self.heartbeat_interval: float | None = None
        self.http = httpx.AsyncClient(
            base_url=server.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=httpx.AsyncHTTPTransport(
                limits=httpx.Limits(max_connections=max_connections),
                socket_options=keepalive_options(),
            ),
        )

    def reading(self, seconds: float) -> httpx.Timeout:
        """The link's timeouts, with an answer awaited ``seconds`` at most."""
        return httpx.Timeout(
            connect=self.timeout.connect,
            read=seconds,
            write=self.timeout.write,
            pool=self.timeout.pool,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def register(self, body: RunnerRegister) -> RunnerRegistered:
        return await self.send(calls.REGISTER, paths.REGISTER, body)

    async def lease(self, runner_id: str, body: LeaseRequest) -> LeaseResponse:
        timeout = self.reading(poll_timeout(body.wait))
        return await self.send(calls.LEASE, paths.lease(runner_id), body, timeout=timeout)

    async def poll_agents(self, runner_id: str, body: AgentPoll) -> DesiredAgents:
        timeout = self.reading(poll_timeout(body.wait))
        return await self.send(calls.AGENTS, paths.agents(runner_id), body, timeout=timeout)

    async def report_agents(self, runner_id: str, body: AgentReport) -> AgentsReported:
        return await self.send(calls.AGENTS_REPORT, paths.agents_report(runner_id), body)

    def worker(self, token: str, traceparent: str | None = None) -> HttpWorker:
        return HttpWorker(self, token, traceparent)

    async def send(
        self,
        call: Call[A],
        path: str,
        body: BaseModel | None = None,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> A:
        """Make ``call`` (at ``path``, its template filled in) and read the answer."""
        headers = dict(headers or {})
        if body is not None:
            assert isinstance(body, call.body or type(None)), (call, body)
            content = body.model_dump_json().encode()
            headers["Content-Type"] = "application/json"
        try:
            resp = await self.http.request(
                call.method, path, content=content, headers=headers, timeout=timeout or self.timeout
            )
        except httpx.TransportError as exc:
            raise Unreachable(f"{call.method} {path}: {type(exc).__name__}: {exc}") from exc
        except httpx.HTTPError as exc:
            raise BadAnswer(f"{call.method} {path}: {type(exc).__name__}: {exc}") from exc
        if not resp.is_success:
            raise Refused(resp.status_code, *error_of(resp.status_code, resp.content))
        try:
            return call.answer.model_validate_json(resp.content)
        except ValidationError as exc:
            raise BadAnswer(f"{call.method} {path}: unexpected answer: {exc}") from exc


class HttpWorker:
    """One job's calls over its runner's connection pool; with a
    ``traceparent`` (the job's run span, corral.tracing) each carries it."""

    def __init__(self, link: HttpLink, token: str, traceparent: str | None = None) -> None:
        self.link = link
        self.token = token
        self.traceparent = traceparent

    def _auth(self) -> dict[str, str]:
        if self.traceparent is not None:
            return {"Authorization": f"Bearer {self.token}", "traceparent": self.traceparent}
        return {"Authorization": f"Bearer {self.token}"}

    async def state(self, body: WorkerState) -> StateRecorded:
        return await self.link.send(
            calls.WORKER_STATE, paths.WORKER_STATE, body, headers=self._auth()
        )

    async def events(self, body: EventBatch) -> EventsAccepted:
        return await self.link.send(
            calls.WORKER_EVENTS, paths.WORKER_EVENTS, body, headers=self._auth()
        )

    async def heartbeat(self) -> Heartbeat:
        every = self.link.heartbeat_interval
        beat = await self.link.send(
            calls.WORKER_HEARTBEAT,
            paths.WORKER_HEARTBEAT,
            headers=self._auth(),
            timeout=self.link.reading(poll_timeout(every)) if every is not None else None,
        )
        self.token = beat.token
        return beat

    async def artifact(self, name: str, media_type: str, data: bytes) -> Artifact:
        return await self.link.send(
            calls.WORKER_ARTIFACT,
            paths.artifact(name),
            content=data,
            headers={**self._auth(), "Content-Type": media_type},
        )

    async def complete(self, body: Completion) -> Completed:
        return await self.link.send(
            calls.WORKER_COMPLETE, paths.WORKER_COMPLETE, body, headers=self._auth()
        )

    async def ask(self, body: QuestionAsk) -> Question:
        """Ask a person (idempotent by ``body.question_id``: retry freely)."""
        return await self.link.send(
            calls.WORKER_ASK, paths.WORKER_QUESTIONS, body, headers=self._auth()
        )

    async def send_message(self, body: ChatSend) -> ChatSent:
        """Message the chat the job's turn came from (idempotent by
        ``body.message_id``: retry freely); 409 if it came from none."""
        return await self.link.send(
            calls.WORKER_MESSAGE, paths.WORKER_MESSAGES, body, headers=self._auth()
        )

    async def wait_answer(self, question_id: str, body: AnswerWait) -> Question:
        """The question once answered or expired, or still ``open`` after
        ``body.wait`` seconds."""
        return await self.link.send(
            calls.WORKER_ANSWER_WAIT,
            paths.question_wait(question_id),
            body,
            headers=self._auth(),
            timeout=self.link.reading(poll_timeout(body.wait)),
        )

    async def submit_child(self, body: ChildSubmit) -> ChildJob:
        return await self.link.send(
            calls.CHILD_SUBMIT, paths.WORKER_CHILDREN, body, headers=self._auth()
        )

    async def wait_child(self, job_id: str, body: ChildWait) -> ChildJob:
        return await self.link.send(
            calls.CHILD_WAIT,
            paths.child_wait(job_id),
            body,
            headers=self._auth(),
            timeout=self.link.reading(poll_timeout(body.timeout)),
        )

    async def cancel_child(self, job_id: str) -> ChildJob:
        return await self.link.send(
            calls.CHILD_CANCEL, paths.child_cancel(job_id), headers=self._auth()
        )

    async def progress(self, body: Progress) -> ProgressRecorded:
        return await self.link.send(
            calls.PROGRESS, paths.WORKER_PROGRESS, body, headers=self._auth()
        )
