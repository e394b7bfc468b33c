"""Each call of runner protocol v1, declared once: its method, path, body,
answer and credential. The runner's link sends them; a test checks that the
server's routes take and answer exactly these (tests/unit/test_protocol.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel

from corral.models import Artifact, Question
from corral.protocol import paths
from corral.protocol.bodies import (
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

A = TypeVar("A", bound=BaseModel, covariant=True)


@dataclass(frozen=True)
class Call(Generic[A]):
    method: Literal["POST", "PUT"]
    path: str  # a template of paths.py
    body: type[BaseModel] | None  # None: no body, or raw bytes (an artifact)
    answer: type[A]
    credential: Literal["runner", "worker JWT"]  # as the HTTP reference names them


REGISTER = Call("POST", paths.REGISTER, RunnerRegister, RunnerRegistered, "runner")
LEASE = Call("POST", paths.LEASE, LeaseRequest, LeaseResponse, "runner")
AGENTS = Call("POST", paths.AGENTS, AgentPoll, DesiredAgents, "runner")
AGENTS_REPORT = Call("POST", paths.AGENTS_REPORT, AgentReport, AgentsReported, "runner")
WORKER_STATE = Call("PUT", paths.WORKER_STATE, WorkerState, StateRecorded, "worker JWT")
WORKER_EVENTS = Call("POST", paths.WORKER_EVENTS, EventBatch, EventsAccepted, "worker JWT")
WORKER_HEARTBEAT = Call("POST", paths.WORKER_HEARTBEAT, None, Heartbeat, "worker JWT")
WORKER_ARTIFACT = Call("PUT", paths.WORKER_ARTIFACT, None, Artifact, "worker JWT")
WORKER_COMPLETE = Call("POST", paths.WORKER_COMPLETE, Completion, Completed, "worker JWT")
WORKER_MESSAGE = Call("POST", paths.WORKER_MESSAGES, ChatSend, ChatSent, "worker JWT")
WORKER_ASK = Call("POST", paths.WORKER_QUESTIONS, QuestionAsk, Question, "worker JWT")
WORKER_ANSWER_WAIT = Call("POST", paths.WORKER_QUESTION_WAIT, AnswerWait, Question, "worker JWT")
CHILD_SUBMIT = Call("POST", paths.WORKER_CHILDREN, ChildSubmit, ChildJob, "worker JWT")
CHILD_WAIT = Call("POST", paths.WORKER_CHILD_WAIT, ChildWait, ChildJob, "worker JWT")
CHILD_CANCEL = Call("POST", paths.WORKER_CHILD_CANCEL, None, ChildJob, "worker JWT")
PROGRESS = Call("POST", paths.WORKER_PROGRESS, Progress, ProgressRecorded, "worker JWT")

ALL: tuple[Call[BaseModel], ...] = (
    REGISTER,
    LEASE,
    AGENTS,
    AGENTS_REPORT,
    WORKER_STATE,
    WORKER_EVENTS,
    WORKER_HEARTBEAT,
    WORKER_ARTIFACT,
    WORKER_COMPLETE,
    WORKER_ASK,
    WORKER_ANSWER_WAIT,
    CHILD_SUBMIT,
    CHILD_WAIT,
    CHILD_CANCEL,
    PROGRESS,
    WORKER_MESSAGE,
)
