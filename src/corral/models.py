"""The nouns every layer shares: what the store returns, the API sends and
the client and runner read."""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, Field, field_validator, model_validator

from corral import jsontext
from corral.jobs import JobState
from corral.routing import Route

JSONDict = dict[str, Any]

# Integer columns (seq, offsets, exit codes, pids...) are 32-bit on PostgreSQL
# and 64-bit on SQLite: a larger value fails in the driver, a 500. Every
# integer the API takes in is bounded to what the column holds.
INT32_MAX = 2**31 - 1
Seq = Annotated[int, Field(ge=0, le=INT32_MAX)]
Int32 = Annotated[int, Field(ge=-INT32_MAX - 1, le=INT32_MAX)]


def utc(value: datetime, name: str) -> datetime:
    """``value`` in UTC. A time without a time zone is refused: it means
    different instants to the client, the server and a runner."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{name} needs a time zone: add Z (UTC) or an offset, e.g. "
            f"{value.replace(microsecond=0).isoformat()}Z"
        )
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError(f"{name} is out of range") from exc


def new_id() -> str:
    return uuid.uuid4().hex


def event_id() -> str:
    """A new event's id: 32 hex digits like ``new_id``, the time in ms, then
    80 random bits. Ids minted later sort later, so the log's unique index on
    ``event_id`` grows at its end instead of at random pages: on SQLite 2.7x
    the insert rate at 300,000 events (issue #18). Not for what people type a
    prefix of (jobs, sessions, questions): those stay random."""
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


# A rule of a gateway allowlist: SERVER.TOOL, SERVER.* or * (corral/gateway/).
TOOL_RULE = r"^(\*|[A-Za-z0-9_-]{1,64}\.(\*|[A-Za-z0-9_.-]{1,128}))$"

_URL = re.compile(r"^(https?|ssh|git|file)://[^\s]+$|^[\w.-]+@[\w.-]+:[^\s]+$")


def is_repo_ref(repo: str) -> bool:
    """An absolute local path or a git URL (relative paths are resolved by the
    client that knows the working directory)."""
    return repo.startswith("/") or bool(_URL.match(repo))


# Why a run failed, which decides what happens next: an agent error consumes an
# attempt; infrastructure (process lost, hang guard, runner lost) and quota
# (429/529, usage limit) re-queue the same attempt; bad input fails at once.
# budget: the run passed its max_cost and was stopped (failed at once).
FailureClass = Literal["agent", "infra", "quota", "input", "budget"]


QuestionState = Literal["open", "answered", "expired"]


class WaitingFor(BaseModel):
    """A running job's open question (``ask_human``): answer it with
    ``POST /jobs/{id}/answer``."""

    question_id: str
    question: str
    options: list[str] = Field(default_factory=list)
    asked_at: datetime
    expires_at: datetime | None = Field(None, description="When it times out with no answer.")


class Question(WaitingFor):
    """A question a worker asked a person, and how it ended."""

    job_id: str
    state: QuestionState = Field(
        description="open; answered; expired (its timeout passed with no answer)."
    )
    answer: str | None = None
    answered_by: str | None = Field(None, description="The name of the key that answered.")
    answered_at: datetime | None = None

    def reply(self) -> str:
        """What the asker is told: the answer, or that none came."""
        if self.state == "answered" and self.answer is not None:
            return self.answer
        if self.state == "expired":
            return "no answer: nobody answered within the timeout"
        return "no answer yet"


class AnswerCreate(BaseModel):
    """A person's answer to a job's open question."""

    model_config = {"extra": "forbid"}

    text: str = Field(min_length=1, max_length=65_536)
    question_id: str | None = Field(
        None,
        max_length=64,
        description="The question to answer (default: the one `waiting_for` shows).",
    )


class Job(BaseModel):
    id: str
    session_id: str
    turn: int
    state: JobState
    provider: str
    model: str | None = None
    preferred_ai: str | None = None
    needs_local_agent: bool = False
    allow_delegation: bool = True
    complexity_hint: str | None = None
    route_rule: int | None = None
    route_reason: str | None = None
    waiting: str | None = Field(None, description="Why a queued job is not running yet.")
    waiting_for: WaitingFor | None = Field(
        None, description="The question the running job waits on a person to answer."
    )
    title: str | None = None
    prompt: str | None = None
    command: str | None = None
    repo: str | None = None
    base: str | None = None
    webhook_url: str | None = Field(None, description="Where state changes are POSTed.")
    webhook_states: list[JobState] | None = None
    webhook_events: list[str] | None = None
    messages: list[JSONDict] | None = None
    tools: list[JSONDict] | None = None
    options: JSONDict | None = None
    think: bool | None = None
    message: JSONDict | None = Field(None, description="A chat job's assistant message.")
    priority: int
    attempt: int
    max_attempts: int
    timeout: float | None = None
    labels: list[str] = Field(default_factory=list)
    idempotency_key: str | None = None
    source: str
    source_ref: str | None = None
    epoch: int
    runner_id: str | None = None
    result: str | None = None
    error: str | None = None
    reason: str | None = None
    failure: FailureClass | None = None
    infra_retries: int = 0
    exit_code: int | None = None
    usage: JSONDict | None = None
    cost: float | None = None
    cost_source: Literal["reported", "configured", "estimated", "unknown"] | None = Field(
        None,
        description="Where `cost` came from: reported by the provider, configured prices "
        "([providers.X.prices]), estimated from the usage with genai-prices, or unknown "
        "(cost null). Null until the job ends.",
    )
    input_tokens: int | None = Field(None, description="Input tokens, cached ones included.")
    output_tokens: int | None = None
    max_cost: float | None = Field(None, description="USD the job may spend (failure `budget`).")
    recovered: JSONDict | None = Field(
        None,
        description="Set when the outcome came from the journal of the runner that ran the "
        "job (its completion report was lost): from_runner, finished_at, reason.",
    )
    created_at: datetime
    assigned_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    run_at: datetime | None = Field(None, description="Not run before this time (UTC).")
    available_at: datetime
    updated_at: datetime
    parent_job_id: str | None = Field(
        None, description="The job whose MCP gateway submitted it (submit_job)."
    )
    mcp_tools: list[str] | None = Field(
        None, description="The gateway tools it narrows its provider's allowlist to."
    )
    traceparent: str | None = Field(
        None,
        description="W3C trace context of its submit span (corral[otel] traces): the trace "
        "its lease, run, completion and webhook deliveries belong to.",
    )


class Session(BaseModel):
    id: str
    title: str | None = None
    created_at: datetime
    updated_at: datetime
    epoch: int
    last_seq: int
    turns: int
    active_job_id: str | None = None
    handle: str | None = None
    host: str | None = Field(
        None, description="The runner holding its workspace and agent conversation."
    )


class NewEvent(BaseModel):
    """An event as a writer sends it; ``event_id`` is minted by the writer so a
    re-sent event is recognised and skipped."""

    event_id: str = Field(default_factory=event_id, min_length=1, max_length=64)
    type: str = Field(min_length=1, max_length=64)
    payload: JSONDict = Field(default_factory=dict)
    ephemeral: bool = False
    internal: bool = False


@dataclass(slots=True)
class Event:
    """A recorded event. A plain slotted dataclass, not a pydantic model: it is
    the hottest object in corral (built for every line a job prints) and a
    pydantic model costs ~10 µs to construct even without validation."""

    session_id: str
    seq: int | None  # None for ephemeral events, which are never stored
    event_id: str
    job_id: str | None
    type: str
    epoch: int
    payload: JSONDict
    ephemeral: bool
    internal: bool
    created_at: datetime

    def to_dict(self) -> JSONDict:
        """JSON-ready, in the same shape the HTTP API sends."""
        at = self.created_at.isoformat()
        return {
            "session_id": self.session_id,
            "seq": self.seq,
            "event_id": self.event_id,
            "job_id": self.job_id,
            "type": self.type,
            "epoch": self.epoch,
            "payload": self.payload,
            "ephemeral": self.ephemeral,
            "internal": self.internal,
            "created_at": at[:-6] + "Z" if at.endswith("+00:00") else at,
        }

    def to_json(self) -> str:
        return jsontext.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        """Parse the API's JSON shape; raises ValueError on a malformed event."""
        try:
            created = data["created_at"]
            if isinstance(created, str):
                created = datetime.fromisoformat(created)
            seq = data.get("seq")
            return cls(
                session_id=str(data["session_id"]),
                seq=None if seq is None else int(seq),
                event_id=str(data["event_id"]),
                job_id=data.get("job_id"),
                type=str(data["type"]),
                epoch=int(data["epoch"]),
                payload=dict(data.get("payload") or {}),
                ephemeral=bool(data.get("ephemeral", False)),
                internal=bool(data.get("internal", False)),
                created_at=created,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed event: {exc}") from exc

    @classmethod
    def from_json(cls, text: str | bytes) -> Event:
        return cls.from_dict(jsontext.loads(text))


class Outcome(BaseModel):
    """How an attempt ended, as the executor reports it."""

    status: Literal["done", "failed"]
    result: str | None = None
    error: str | None = None
    reason: str | None = Field(None, max_length=64)
    failure: FailureClass | None = Field(
        None, description="For a failed run: agent (default), infra, quota or input."
    )
    retry_at: datetime | None = Field(
        None, description="Quota failures: when the provider's limit resets."
    )
    exit_code: Int32 | None = None
    usage: JSONDict | None = None
    cost: float | None = Field(None, ge=0, allow_inf_nan=False)
    message: JSONDict | None = Field(None, description="Chat jobs: the assistant message.")


class Artifact(BaseModel):
    job_id: str
    name: str
    media_type: str
    size: int
    created_at: datetime


class ProviderPause(BaseModel):
    provider: str
    until: datetime
    reason: str
    fallback: str | None = None


class Runner(BaseModel):
    id: str
    name: str
    key_id: str
    hostname: str | None = None
    providers: list[str]
    labels: list[str] = Field(default_factory=list)
    slots: int
    sandbox: str | None = None  # bwrap | none: where its local jobs run
    status: str
    version: str
    registered_at: datetime
    last_seen_at: datetime


class ApiKey(BaseModel):
    id: str
    name: str
    role: str
    created_at: datetime
    revoked_at: datetime | None = None


# -- answers of the HTTP API: the server sends them, the client reads them ------


class Schedule(BaseModel):
    """A cron schedule (``GET /schedules``): what the configuration says and
    where the schedule loop is."""

    name: str
    cron: str
    timezone: str
    enabled: bool = Field(description="Whether its slots fire.")
    enabled_by: Literal["config", "operator"] = Field(
        description="Who said so: the [[schedules]] table or `corral schedules enable|disable`."
    )
    catch_up: Literal["latest", "none"]
    next_slot: datetime | None = Field(None, description="When it fires next (if enabled).")
    last_slot: datetime | None = Field(None, description="The last slot handled.")
    last_job_id: str | None = None
    last_fired_at: datetime | None = None
    fired: int = 0
    skipped: int = Field(0, description="Slots missed while corral was down, in all.")
    session_id: str | None = Field(None, description="Its event log (schedule.* events).")
    job: JSONDict = Field(description="The job fields each slot submits.")


class JobAccepted(BaseModel):
    """A submission's answer (``POST /jobs``, ``POST /sessions/{id}/turns``)."""

    job_id: str
    session_id: str
    state: JobState
    created: bool = Field(description="False: the idempotency key named an existing job.")


class JobPage(BaseModel):
    jobs: list[Job]
    next: str | None = Field(None, description="Pass as `before` for the next page.")


class StatsPoint(BaseModel):
    t: int = Field(description="Start of the bucket, seconds since 1970 (UTC).")
    count: int
    cost: float = Field(description="USD; jobs without a price count 0.")
    input_tokens: int
    output_tokens: int


class StatsSeries(BaseModel):
    key: str = Field(description="The state or provider (see `group_by`).")
    points: list[StatsPoint] = Field(description="Only buckets with jobs, in time order.")


class Percentiles(BaseModel):
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None


class Stats(BaseModel):
    """Jobs that finished in ``[from, to)``."""

    from_: datetime = Field(alias="from")
    to: datetime
    bucket: int = Field(description="Seconds per bucket.")
    group_by: Literal["state", "provider"]
    jobs: int
    series: list[StatsSeries]
    queue_wait: Percentiles = Field(description="Seconds from created to started.")
    run_time: Percentiles = Field(description="Seconds from started to finished.")

    model_config = {"populate_by_name": True}


UsageGroup = Literal["provider", "model", "label", "source", "day"]


class UsageRow(BaseModel):
    key: dict[str, str | None] = Field(
        description="The group's value of each `group_by` name (day: a UTC date)."
    )
    jobs: int
    cost: float = Field(description="USD summed over the jobs with a price.")
    unpriced: int = Field(description="Jobs without a price (cost_source unknown) among them.")
    input_tokens: int
    output_tokens: int
    run_time: float = Field(description="Seconds from start to end, summed.")


class UsageReport(BaseModel):
    """Jobs that ended in ``[from, to)``, summed per group."""

    from_: datetime = Field(alias="from")
    to: datetime
    group_by: list[UsageGroup]
    rows: list[UsageRow]
    total: UsageRow = Field(description="Every job of the range (key: {}).")

    model_config = {"populate_by_name": True}


class BudgetStatus(BaseModel):
    """A ``[[budgets]]`` entry's spend against its limit in its current period."""

    name: str
    scope: str
    limit: float
    spent: float
    percent: float | None = None
    period: Literal["day", "week", "month"]
    timezone: str
    period_start: datetime
    period_end: datetime
    action: Literal["pause", "warn"]
    paused_until: datetime | None = Field(
        None, description="Set while it holds its scope: nothing it covers starts."
    )


class RouteDecision(BaseModel):
    provider: str
    model: str | None
    rule: int = Field(description="0..5: which rule of the routing precedence fired.")
    reason: str
    skipped: list[str] = Field(description="Why each earlier rule did not fire.")


class SessionDetail(Session):
    jobs: list[Job] = Field(default_factory=list)


class Agent(BaseModel):
    """An agent daemon as ``GET /agents`` shows it."""

    id: str
    name: str
    status: str = Field(description="starting, running, backoff, exited, fatal or stopped.")
    pid: int | None = None
    uptime: float | None = Field(None, description="Seconds since it started, while running.")
    restarts: int
    last_exit_code: int | None = None
    runner: str = Field(description="The runner that hosts it (`embedded`: any embedded one).")
    host: str | None = Field(None, description="The runner hosting it now.")
    connected: bool = Field(description="Whether its runner is connected.")
    wanted: bool
    pending: bool = Field(description="An action its runner has not applied yet.")
    message: str | None = None
    messages_24h: int | None = Field(None, description="Messages handled in the last 24 h.")


class AgentLine(BaseModel):
    offset: int
    at: float = Field(description="Unix time.")
    stream: str = Field(description="stdout or stderr.")
    line: str


class AgentDetail(Agent):
    config: JSONDict = Field(description="Its configuration (env values masked).")
    logs: list[AgentLine]


class AgentsReloaded(BaseModel):
    added: list[str]
    removed: list[str]
    changed: list[str]


class DeliveryAttempt(BaseModel):
    n: int
    at: datetime
    status: int | None = None
    latency_ms: float
    error: str | None = None


class Delivery(BaseModel):
    """A webhook delivery: where, what, its state and (for one job's) its attempts."""

    id: str
    job_id: str
    url: str
    event: str
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: datetime | None = None
    last_status: int | None = None
    last_error: str | None = None
    created_at: datetime
    delivered_at: datetime | None = None
    body: JSONDict
    attempt_log: list[DeliveryAttempt] | None = None


class Identity(BaseModel):
    """``GET /whoami``: the key that made the request."""

    key_id: str
    name: str
    role: str = Field(description="admin, operator, viewer or runner.")


class Status(BaseModel):
    """``GET /status``."""

    version: str
    database: str
    paused: bool = Field(description="The kill switch.")
    providers_paused: list[ProviderPause]
    jobs: dict[str, int] = Field(description="Jobs by state.")
    runners: list[Runner]
    embedded_providers: list[str] | None = Field(
        None, description="What this replica's embedded runner serves ([] without one)."
    )


class ModelTag(BaseModel):
    """A model of a chat provider, in Ollama's ``/api/tags`` shape."""

    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: JSONDict


_WEBHOOK_URL = re.compile(r"^https?://[^\s/?#]+[^\s]*$")


class WebhookSpec(BaseModel):
    """Where to POST the job's state changes, signed with ``secret`` (default:
    the server's webhook secret)."""

    model_config = {"extra": "forbid"}

    url: str = Field(max_length=2000, description="http(s) URL.")
    secret: str | None = Field(
        None, min_length=16, max_length=200, description="HMAC key of the signatures."
    )
    states: list[JobState] = Field(
        default_factory=list,
        max_length=8,
        description="States to announce (default: every change), e.g. [done, failed, cancelled].",
    )
    events: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="Event types to deliver too (e.g. agent.result), besides state changes.",
    )

    @model_validator(mode="after")
    def _check_url(self) -> WebhookSpec:
        if not _WEBHOOK_URL.match(self.url):
            raise ValueError(f"webhook url {self.url!r} must be an http:// or https:// URL")
        return self


class JobCreate(BaseModel):
    """A job as submitted (HTTP, CLI, later the queue folder, MCP, trackers)."""

    model_config = {"extra": "forbid"}

    prompt: str | None = Field(None, max_length=262_144, description="What to do.")
    command: str | None = Field(
        None,
        max_length=65_536,
        description="A shell command: routed to the shell provider (or the shell-kind "
        "provider named). A prompt never runs in a shell unless a shell provider is named.",
    )
    session_id: str | None = Field(
        None, max_length=64, description="Add the job as a turn of this session."
    )
    repo: str | None = Field(
        None,
        min_length=1,
        max_length=2000,
        description="Git repository (absolute local path or URL): the job runs in a "
        "worktree of it on branch corral/<job-id>.",
    )
    messages: list[JSONDict] | None = Field(
        None,
        max_length=2000,
        description="Chat jobs: OpenAI/Ollama-shaped messages ({role, content, ...}) "
        "instead of a prompt.",
    )
    tools: list[JSONDict] | None = Field(
        None, max_length=128, description="Chat jobs: tool definitions (OpenAI shape)."
    )
    options: JSONDict | None = Field(
        None,
        description="Chat jobs: sampling options (temperature, top_p, seed, stop, "
        "num_predict / max_tokens).",
    )
    think: bool | None = Field(None, description="Chat jobs: ask the model to think first.")
    stream: bool | None = Field(None, description="Accepted for Ollama compatibility; ignored.")
    webhook: str | WebhookSpec | None = Field(
        None,
        description="A URL, or {url, secret, states, events}: state changes (those in "
        "`states`, default all) are POSTed there, signed.",
    )
    base: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        pattern=r"^[^\s~^:?*\[\\]+$",
        description="Branch, tag or commit the worktree starts from (default: the repo's HEAD).",
    )
    title: str | None = Field(None, max_length=500)
    preferred_ai: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.-]+$",
        validation_alias=AliasChoices("preferred_ai", "provider", "executor"),
        description="Provider to prefer (aliases: provider, executor); routing decides.",
    )
    needs_local_agent: bool = Field(
        False,
        validation_alias=AliasChoices("needs_local_agent", "needs_claude_code"),
        description="A local agent must do it (alias: needs_claude_code).",
    )
    allow_delegation: bool = Field(True, description="false keeps the job on a local provider.")
    complexity_hint: Literal["low", "medium", "high"] | None = Field(
        None, description="Picks a model tier when the provider defines tiers."
    )
    model: str | None = Field(None, min_length=1, max_length=200)
    priority: int = Field(2, ge=0, le=9, description="0 is the most urgent.")
    max_attempts: int | None = Field(None, ge=1, le=100)
    timeout: float | None = Field(None, gt=0, le=7 * 86400, description="Seconds.")
    max_cost: float | None = Field(
        None,
        gt=0,
        le=1_000_000,
        allow_inf_nan=False,
        description="USD a run may spend: Claude Code gets --max-budget-usd; other runs are "
        "stopped when their streamed usage passes it (failure class `budget`).",
    )
    run_at: datetime | None = Field(
        None,
        description="Not run before this time: ISO-8601 with a time zone (Z or an offset; "
        "a time without one is refused). The job is queued at once and leased from then.",
    )
    labels: list[str] = Field(default_factory=list, max_length=32)
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)
    source: Literal["api", "cli", "folder", "mcp", "tracker", "chat", "schedule"] = "api"
    source_ref: str | None = Field(None, max_length=2000)
    mcp_tools: list[Annotated[str, Field(pattern=TOOL_RULE)]] | None = Field(
        None,
        max_length=64,
        description="Agent jobs: narrow the provider's mcp_tools allowlist to these rules "
        "(SERVER.TOOL, SERVER.*); never widens it.",
    )

    @field_validator("run_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else utc(value, "run_at")

    def route(self) -> Route:
        return Route(
            preferred_ai=self.preferred_ai,
            needs_local_agent=self.needs_local_agent,
            allow_delegation=self.allow_delegation,
            complexity_hint=self.complexity_hint,
            model=self.model,
            command=bool(self.command and self.command.strip()),
        )

    @model_validator(mode="after")
    def _has_work(self) -> JobCreate:
        if self.repo is not None and not is_repo_ref(self.repo):
            raise ValueError(
                f"repo {self.repo!r} must be an absolute path or a URL "
                "(https://, ssh://, file://, git@host:path)"
            )
        if self.base is not None and self.repo is None:
            raise ValueError("base needs a repo")
        if isinstance(self.webhook, str):
            self.webhook = WebhookSpec(url=self.webhook)
        if self.messages is not None:
            for i, m in enumerate(self.messages):
                if m.get("role") not in ("system", "user", "assistant", "tool", "developer"):
                    raise ValueError(
                        f"messages[{i}].role must be system, user, assistant, tool or developer"
                    )
            if not self.messages:
                raise ValueError("messages must not be empty")
            return self
        if not (self.prompt and self.prompt.strip()) and not (
            self.command and self.command.strip()
        ):
            raise ValueError("a job needs a non-empty prompt, command or messages")
        return self


class TrackerItemInfo(BaseModel):
    """An issue a tracker took in: its session, latest turn, what went back."""

    repo: str
    number: int
    url: str
    title: str
    session_id: str
    job_id: str
    job_state: str | None = None
    state: str
    label: str | None = None
    pull_url: str | None = None
    reported_job_id: str | None = None
    updated_at: datetime


class Tracker(BaseModel):
    """A ``[[trackers]]`` table and how its intake is doing."""

    name: str
    kind: str
    base_url: str | None = None
    repos: list[str]
    label: str
    trigger: str
    enabled: bool
    webhook: bool = Field(description="Whether POST /hooks/trackers/NAME is accepted.")
    poll_interval: float
    state: str = Field(description="idle, ok, error, rate_limited or disabled.")
    error: str | None = None
    last_poll_at: float | None = None
    wait_until: float | None = None
    polls: int = 0
    taken: int = 0
    turns: int = 0
    cancelled: int = 0
    ignored: int = 0
    requests: int = 0
    not_modified: int = 0
    jobs: dict[str, int] = Field(default_factory=dict, description="Items by job state.")
    items: list[TrackerItemInfo] | None = None
