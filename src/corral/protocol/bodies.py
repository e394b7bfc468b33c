"""The bodies of runner protocol v1: what each call sends and answers.

Requests ignore fields they do not know (see the package's docstring on
compatibility); the bounds are the server's, checked when it reads them."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from corral.models import INT32_MAX, Int32, Job, JobCreate, NewEvent, Outcome, Seq, Session, new_id
from corral.protocol import paths

VERSION: Final = "v1"

# What a runner adds to a long-poll's wait before it takes a silent connection
# for dead: the server's answer at the end of the wait (one store query) is late
# by less on a loaded machine.
POLL_SLACK: Final = 5.0


def poll_timeout(wait: float) -> float:
    """How long a runner waits for the answer to a long-poll of ``wait``
    seconds before it takes the connection for dead: the wait plus a slack
    (``POLL_SLACK``, less for short waits, so that it stays under the lease)."""
    return wait + max(1.0, min(POLL_SLACK, wait))


# Bounds of a registration's journal (a runner sends what fits, oldest first).
JOURNAL_ENTRIES: Final = 1000
JOURNAL_EVENTS: Final = 10_000

# Agent daemon names (`[agents.NAME]`).
AGENT_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class Request(BaseModel):
    """A body the runner sends: unknown fields are ignored, not refused, so a
    runner newer than its server still speaks v1 to it."""

    model_config = ConfigDict(extra="ignore")


# -- the runner key's calls ------------------------------------------------------------


class JournalEntry(BaseModel):
    """An outcome the runner recorded in its journal (runner/journal.py) before
    reporting it, presented again when it registers: the server completes the
    job with it unless the job has started again elsewhere."""

    id: str = Field(
        min_length=1,
        max_length=64,
        description="Minted by the runner; the event id of what the server records about it.",
    )
    token: str = Field(
        max_length=4096,
        description="The job's worker JWT (expired or not): the server's own proof that it "
        "leased this job at this epoch to this runner.",
    )
    started_at: datetime | None = Field(None, description="When the job's process started.")
    finished_at: datetime = Field(description="When the job's process ended (runner clock).")
    outcome: Outcome
    events: list[NewEvent] = Field(
        default_factory=list,
        max_length=JOURNAL_EVENTS,
        description="Events the server had not acknowledged; delivered with their ids, so "
        "the ones it did store are skipped.",
    )
    events_omitted: int = Field(0, ge=0, description="Unsent events beyond the ones carried.")
    artifacts: list[Annotated[str, Field(max_length=255)]] = Field(
        default_factory=list, max_length=64, description="Artifacts stored before the outcome."
    )


class JournalAnswer(BaseModel):
    """What the server did with a journal entry; the runner forgets it either way."""

    id: str
    job_id: str | None = None
    result: Literal["recovered", "recorded", "dropped"] = Field(
        description="recovered: the job ended with this outcome now; recorded: the outcome "
        "was recorded already; dropped: the job moved on (started again elsewhere, "
        "cancelled, unknown) and keeps its state."
    )
    state: str | None = Field(None, description="The job's state now.")
    detail: str | None = None


class RunnerRegister(Request):
    name: str = Field(min_length=1, max_length=200)
    hostname: str | None = Field(None, max_length=255)
    providers: list[str] = Field(min_length=1, max_length=64)
    labels: list[str] = Field(default_factory=list, max_length=64)
    slots: int = Field(ge=1, le=1024)
    sandbox: Literal["bwrap", "none"] | None = Field(
        None, description="Where the runner's local jobs run (executors/sandbox.py)."
    )
    protocol: Literal["v1"] = VERSION
    journal: list[JournalEntry] = Field(
        default_factory=list,
        max_length=JOURNAL_ENTRIES,
        description="Outcomes of jobs this runner finished but saw no acknowledgement for.",
    )


class RunnerRegistered(BaseModel):
    runner_id: str
    protocol: str
    lease_ttl: float
    heartbeat_interval: float
    # Servers before them honoured any wait up to 120 s and knew no confirmation.
    poll_wait: float | None = Field(
        None,
        description="The longest wait (seconds) the server honours in a lease or agents "
        "long-poll; it answers by then, so a runner may take an answer that does not come "
        "within this plus ``POLL_SLACK`` for a dead connection.",
    )
    lease_confirm: float | None = Field(
        None,
        description="Seconds within which a runner that leases with ``confirm`` must confirm "
        "each job it receives with a heartbeat; a job not confirmed was lost on the way "
        "(a silent network cut) and is queued again then, not after ``lease_ttl``.",
    )
    # Servers before it had the same limit without saying so.
    max_artifact_bytes: int = 10_485_760
    # Servers before it ignored a journal: the runner forgets what it sent.
    journal: list[JournalAnswer] = Field(default_factory=list)


class LeaseRequest(Request):
    max_jobs: int = Field(ge=0, le=1024)
    wait: float = Field(
        20.0, ge=0, le=120, description="Seconds to wait for work (at most ``poll_wait``)."
    )
    confirm: bool = Field(
        False,
        description="This runner confirms each job with a heartbeat before it starts it: "
        "the server leases for ``lease_confirm`` seconds only until then.",
    )


class LeasedJob(BaseModel):
    job: Job
    session: Session
    epoch: int
    token: str = Field(description="Worker JWT for /worker/* calls about this job.")
    resume_handle: str | None = Field(
        None, description="The session's handle (handles.py): PROVIDER:VALUE."
    )
    traceparent: str | None = Field(
        None,
        description="W3C trace context of the lease (corral.tracing): the parent of the "
        "runner's run span; the runner sends its own in a traceparent header of the job's "
        "worker calls. Older servers send none.",
    )


class LeaseResponse(BaseModel):
    jobs: list[LeasedJob]
    cancel: list[str] = Field(default_factory=list, description="Jobs to stop at once.")


class AgentPoll(Request):
    version: str | None = Field(None, max_length=128)
    wait: float = Field(20.0, ge=0, le=120)
    aliases: list[Annotated[str, Field(max_length=200)]] = Field(default_factory=list, max_length=8)
    hosting: list[Annotated[str, Field(max_length=64)]] | None = Field(
        None, max_length=10_000, description="The agents the runner supervises now."
    )


class AgentMessage(BaseModel):
    """A message for an agent daemon (``POST /agents/{name}/message``): its host
    writes ``{"corral": {"message": {"id", "text"}}}`` as a line to its stdin."""

    seq: Seq = Field(description="Increasing: the host reports the last one written.")
    id: str = Field(max_length=64)
    text: str = Field(max_length=65_536)


class DesiredAgent(BaseModel):
    """An agent daemon the polling runner hosts, as the control plane wants it."""

    name: str
    config: dict[str, Any] = Field(description="Its [agents.NAME] table (DaemonSettings).")
    wanted: bool = Field(description="It should be running.")
    seq: int = Field(description="The number of the last operator action.")
    action: str | None = Field(None, description="That action: start, stop or restart.")
    log_offset: int = Field(description="Its last line stored: the host numbers on from it.")
    messages: list[AgentMessage] = Field(
        default_factory=list, description="Messages not yet written to its stdin, oldest first."
    )


class DesiredAgents(BaseModel):
    version: str = Field(description="Send it back: the poll answers once it differs.")
    agents: list[DesiredAgent]


class AgentState(BaseModel):
    status: str = Field(pattern=r"^(stopped|starting|running|backoff|exited|fatal)$")
    pid: Seq | None = None
    started_at: float | None = Field(None, allow_inf_nan=False)
    restarts: Seq = 0
    last_exit_code: Int32 | None = None
    message: str | None = Field(None, max_length=4000)
    applied_seq: Seq = 0
    message_seq: Seq = Field(0, description="The last message written to its stdin.")


class StatusChange(BaseModel):
    """An agent daemon's status changed (also what ``GET /sse/status`` sends)."""

    agent_id: str = Field(pattern=AGENT_NAME)
    old_status: str = Field(max_length=16)
    new_status: str = Field(max_length=16)
    pid: Seq | None = None
    exit_code: Int32 | None = None
    at: float = Field(allow_inf_nan=False)


class LogLine(BaseModel):
    agent: str = Field(pattern=AGENT_NAME)
    offset: Annotated[int, Field(ge=1, le=INT32_MAX)]
    at: float = Field(allow_inf_nan=False)
    stream: str = Field(pattern=r"^(stdout|stderr)$")
    line: str = Field(max_length=65_536)


class AgentReport(Request):
    states: dict[str, AgentState] = Field(default_factory=dict, max_length=10_000)
    changes: list[StatusChange] = Field(default_factory=list, max_length=10_000)
    lines: list[LogLine] = Field(default_factory=list, max_length=5_000)
    messages: dict[str, Annotated[dict[Seq, Seq], Field(max_length=24 * 60)]] = Field(
        default_factory=dict, max_length=10_000, description="Per agent: minute -> count."
    )
    release: bool = Field(False, description="The runner is stopping: free its agents.")


class AgentsReported(BaseModel):
    not_hosted: list[str] = Field(description="Agents named that this runner does not host.")


# -- the worker JWT's calls (one job) -------------------------------------------------


class WorkerState(Request):
    state: Literal["running", "requires_action", "idle"]
    started_at: datetime | None = None
    handle: str | None = Field(None, max_length=4096)
    details: dict[str, Any] = Field(default_factory=dict)


class StateRecorded(BaseModel):
    state: str = Field(description="The job's state now.")
    question_id: str | None = Field(
        None, description="The question recorded (``requires_action`` with a ``question``)."
    )


# How long a question may wait for its answer: a week.
MAX_QUESTION_TIMEOUT = 7 * 24 * 3600.0


class ChatSend(Request):
    """A message from an agent to the chat its turn came from (``send_message``)."""

    message_id: str = Field(
        default_factory=new_id,
        pattern=paths.QUESTION_ID,
        description="Minted by the worker: a retried send is one message.",
    )
    text: str = Field(min_length=1, max_length=65_536)
    to: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="The conversation's chat id (the default) or its user's id (a direct "
        "message); nobody else.",
    )


class ChatSent(BaseModel):
    id: str = Field(description="The outbox id (the bridge's X-Corral-Delivery).")
    channel: str
    created: bool = Field(description="False: this message_id was sent before.")


class QuestionAsk(Request):
    """A question for a person (``ask_human``): the job waits for the answer
    (``POST /worker/questions/{id}/wait``) and its output-stall guards pause."""

    question_id: str = Field(default_factory=new_id, pattern=paths.QUESTION_ID)
    question: str = Field(min_length=1, max_length=16_384)
    options: list[Annotated[str, Field(min_length=1, max_length=500)]] = Field(
        default_factory=list, max_length=20, description="Suggested answers (any text is accepted)."
    )
    timeout: float | None = Field(
        None,
        gt=0,
        le=MAX_QUESTION_TIMEOUT,
        allow_inf_nan=False,
        description="Seconds to wait for an answer (default: while the job runs).",
    )


class AnswerWait(Request):
    wait: float = Field(
        30.0, ge=0, le=60, description="Seconds to wait for an answer before answering `open`."
    )


class EventBatch(Request):
    events: list[NewEvent] = Field(max_length=1000)


class EventsAccepted(BaseModel):
    accepted: list[int]
    duplicates: list[str]


class Heartbeat(BaseModel):
    token: str = Field(description="A fresh worker JWT: use it from now on.")
    state: str
    lease_expires_in: float


class Completion(Request):
    outcome: Outcome
    events: list[NewEvent] = Field(default_factory=list, max_length=1000)
    started_at: datetime | None = Field(
        None,
        description="When the job's process started, for a job whose `running` state was "
        "not reported (it ended first): the start and the end are recorded together.",
    )


class Completed(BaseModel):
    state: str
    attempt: int
    duplicates: list[str] = Field(description="Events of the completion already recorded.")


# -- the worker JWT's tool calls (the job's MCP gateway, corral/gateway/) --------------


class ChildSubmit(Request):
    """``submit_job`` of the job's gateway: a sub-job, recorded as the child of
    the calling job and routed like any job (``spec``: ``JobCreate``'s fields)."""

    spec: JobCreate = Field(description="The sub-job, as POST /jobs takes it.")


class ChildWait(Request):
    """``get_job`` (``timeout`` 0) and ``wait_job`` of one of the job's children."""

    timeout: float = Field(0.0, ge=0, le=60, description="Seconds to wait for it to end.")


class ChildJob(BaseModel):
    """A sub-job as the gateway's tools answer it."""

    job_id: str
    session_id: str
    state: str
    provider: str
    ended: bool = Field(description="Done, failed or cancelled.")
    result: str | None = None
    error: str | None = None
    artifacts: list[str] = Field(default_factory=list, description="Its artifacts' names.")
    created: bool = Field(True, description="False: the idempotency key named an older job.")


class Progress(Request):
    """``report_progress``: a ``job.progress`` event of the calling job."""

    percent: float | None = Field(None, ge=0, le=100, allow_inf_nan=False)
    message: str = Field(max_length=4000)


class ProgressRecorded(BaseModel):
    seq: int = Field(description="The job.progress event's seq in the session.")


# -- refusals ------------------------------------------------------------------------


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The body of every refusal: ``{"error": {"code", "message", ...}}``."""
    return {"error": {"code": code, "message": message, **extra}}


def error_of(status: int, content: bytes | str) -> tuple[str, str]:
    """``(code, message)`` of a refusal's body; for a body of another shape
    (a proxy's error page, a truncated answer): ``http_error`` and the start of
    the body."""
    try:
        err = json.loads(content)["error"]
        return str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        text = content.decode(errors="replace") if isinstance(content, bytes) else content
        return "http_error", f"HTTP {status}: {text[:200]}"
