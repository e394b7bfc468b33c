"""Settings: one pydantic-settings tree.

Precedence, highest first: explicit arguments (CLI flags), ``CORRAL_*``
environment variables (nested with ``__``, e.g. ``CORRAL_RUNNER__SLOTS``),
``corral.toml`` (the working directory's, or ``--config``), defaults.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
import os
import re
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    SerializeAsAny,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from corral import redact, schedules, tracker
from corral.budgets import Budget
from corral.chat import ChannelSettings
from corral.errors import ConfigError
from corral.executors.settings import (
    TOKEN_COMMAND_TIMEOUT,
    ProviderSettings,
    RemoteSettings,
    read_token,
    split_command,
)
from corral.gateway.settings import McpSettings
from corral.models import JobCreate
from corral.redact import env_secrets
from corral.routing import Provider

_CONFIG_FILE: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "corral_config_file", default=None
)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "corral"


class RunnerSettings(BaseModel):
    model_config = {"extra": "forbid"}

    embedded: bool = Field(True, description="Run a runner inside `corral serve`.")
    slots: int = Field(4, ge=1, le=1024, description="Jobs a runner runs at once.")
    providers: list[str] = Field(
        default_factory=lambda: ["shell"],
        description="Providers this runner serves; the embedded runner also serves every "
        "enabled remote provider not assigned to another runner (`runner` of the provider).",
    )
    lease_wait: float = Field(
        20.0,
        gt=0,
        le=120,
        description="Seconds a lease request long-polls for work (at most the server's "
        "`lease_ttl` / 3, which it says when the runner registers).",
    )
    kill_grace: float = Field(
        5.0, ge=0, description="Seconds between SIGTERM and SIGKILL when a job is stopped."
    )
    sandbox: Literal["auto", "bwrap", "none"] = Field(
        "auto",
        description="Where local jobs and agent daemons run: `bwrap` (bubblewrap: the host "
        "read-only, the runner's data dir, keys, database and configuration hidden), `none`, "
        "or `auto` (bwrap when it works here, else none with a loud warning).",
    )
    sandbox_hide: list[Path] = Field(
        default_factory=list,
        description="More paths sandboxed jobs must not see (e.g. ~/.ssh, ~/.aws).",
    )


EMBEDDED_RUNNER = "embedded"  # `runner` of a provider served by the runner in `corral serve`

# The pydantic error type of a provider table's problems (their messages are ours).
_PROVIDER_ERROR = "provider_setting"


def provider_settings(table: object) -> ProviderSettings:
    """``table`` (a [providers.NAME] table) as its kind's settings model: the
    kind looked up among the installed executors (entry points), every key
    checked against what that kind takes. Raises ``ValidationError`` with
    locations inside the table."""
    from corral.executors.base import kinds, load  # the registry, read when a table is

    given = table if isinstance(table, ProviderSettings) else None
    if given is not None:  # built in code: as good as its table
        table = given.model_dump(exclude_unset=True) | {"kind": given.kind}
    if not isinstance(table, Mapping):
        raise _invalid([((), "a provider is a table ([providers.NAME]) with a `kind`", table)])
    kind = table.get("kind")
    installed = ", ".join(kinds()) or "none"
    if not isinstance(kind, str):
        what = "missing" if kind is None else f"{kind!r} is not a kind"
        raise _invalid([(("kind",), f"{what}: the executor kind, one of {installed}", kind)])
    try:
        model = load(kind).settings
    except ConfigError as exc:
        raise _invalid([(("kind",), exc.message, kind)]) from None
    takes = list(model.model_fields)
    unknown = [key for key in table if key not in model.model_fields]
    if unknown:
        problems = []
        for key in unknown:
            why = model.refused.get(key)
            message = f"{key!r} is not a setting of kind {kind!r}" + (f": {why}" if why else "")
            message += f" (kind {kind!r} takes: {', '.join(takes)})"
            problems.append(((str(key),), message, table[key]))
        raise _invalid(problems)
    if isinstance(given, model):
        return given
    return model.model_validate(dict(table))


def _invalid(problems: Sequence[tuple[tuple[str, ...], str, object]]) -> ValidationError:
    return ValidationError.from_exception_data(
        "provider",
        [
            InitErrorDetails(
                type=PydanticCustomError(_PROVIDER_ERROR, "{message}", {"message": message}),
                loc=loc,
                input=value,
            )
            for loc, message, value in problems
        ],
    )


class WebhookEndpointSettings(BaseModel):
    """A server-wide webhook endpoint: ``[[webhooks]]`` in corral.toml."""

    model_config = {"extra": "forbid"}

    url: str = Field(pattern=r"^https?://\S+$", description="http(s) URL.")
    secret: SecretStr | None = Field(
        None, min_length=16, description="HMAC key (default: the server's webhook_secret)."
    )
    states: list[str] = Field(
        default_factory=list, description="Job states to announce (default: every change)."
    )
    events: list[str] = Field(
        default_factory=list, description="Event types to deliver too (e.g. agent.result)."
    )


AGENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
REPO_NAME = r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$"


class TrackerLabels(BaseModel):
    """The labels corral puts on an issue as its job goes (one at a time)."""

    model_config = {"extra": "forbid"}

    queued: str = Field(
        "corral:queued", min_length=1, max_length=50, description="While the job waits."
    )
    running: str = Field(
        "corral:running", min_length=1, max_length=50, description="While it runs."
    )
    done: str = Field("corral:done", min_length=1, max_length=50, description="When it is done.")
    failed: str = Field(
        "corral:failed", min_length=1, max_length=50, description="When it failed or was cancelled."
    )


class TrackerSettings(BaseModel):
    """``[[trackers]]`` in corral.toml: an issue tracker whose labelled issues
    in allowlisted repositories become jobs, and which hears back."""

    model_config = {"extra": "forbid"}

    name: str = Field(
        pattern=AGENT_NAME.pattern, description="Its name (`corral trackers show NAME`)."
    )
    kind: Literal["github", "forgejo"] = Field(
        description="github (REST v3) or forgejo (Forgejo and Gitea, /api/v1)."
    )
    base_url: str | None = Field(
        None,
        pattern=r"^https?://\S+$",
        description="API base. github: default https://api.github.com (GitHub Enterprise: "
        "https://HOST/api/v3); forgejo: the instance's URL (required).",
    )
    token: SecretStr | None = Field(None, description="API token (prefer token_env).")
    token_env: str | None = Field(None, description="Environment variable holding the token.")
    token_file: Path | None = Field(None, description="File holding the token (re-read each use).")
    token_command: list[str] | None = Field(
        None,
        description="Command printing the token (run for each use, killed after "
        f"{TOKEN_COMMAND_TIMEOUT:g} s; an argv list or a string split like a shell would).",
    )
    repos: list[str] = Field(
        default_factory=list,
        description="The allowlist, owner/name each: only their issues are taken (empty: none).",
    )
    label: str = Field(
        "corral", min_length=1, max_length=50, description="Only issues carrying this label."
    )
    enabled: bool = Field(
        False,
        description="Take issues in (the default: off; `corral trackers enable NAME` "
        "turns it on and is remembered in the database).",
    )
    poll_interval: float = Field(
        60.0, ge=1, le=86400, description="Seconds between polls (webhooks pick up at once)."
    )
    trigger: str = Field(
        "@corral",
        min_length=1,
        max_length=50,
        description="A comment containing it continues the issue's session.",
    )
    webhook_secret: SecretStr | None = Field(
        None,
        min_length=16,
        description="Verifies POST /hooks/trackers/NAME deliveries (without it the endpoint "
        "answers 404).",
    )
    provider: str | None = Field(None, description="Provider the jobs prefer (routing decides).")
    needs_local_agent: bool = Field(False, description="The jobs need a local agent.")
    model: str | None = Field(None, description="Model of the jobs.")
    max_attempts: int | None = Field(None, ge=1, le=100, description="Attempts per job.")
    timeout: float | None = Field(None, gt=0, description="Seconds a job may run.")
    preamble: str = Field(
        tracker.DEFAULT_PREAMBLE,
        max_length=10_000,
        description="Put before the issue text on the first turn; {title}, {body}, {url}, "
        "{repo} and {number} are replaced.",
    )
    priorities: dict[str, int] = Field(
        default_factory=lambda: dict(tracker.DEFAULT_PRIORITIES),
        description="Label -> priority (0 first); unlabelled issues get 2.",
    )
    state_labels: TrackerLabels = Field(
        default_factory=lambda: TrackerLabels(), description="Labels that follow the job."
    )
    pull_requests: bool = Field(
        True, description="Push a job's branch and open a pull request when files changed."
    )
    draft: bool = Field(False, description="Open the pull requests as drafts.")

    @field_validator("token_command", mode="before")
    @classmethod
    def _split_command(cls, value: object) -> object:
        return split_command(value)

    @field_validator("repos")
    @classmethod
    def _repos(cls, value: list[str]) -> list[str]:
        for repo in value:
            if not re.fullmatch(REPO_NAME, repo):
                raise ValueError(f"repo {repo!r}: write owner/name")
        return value

    @field_validator("preamble")
    @classmethod
    def _preamble(cls, value: str) -> str:
        return tracker.check_template(value)

    @model_validator(mode="after")
    def _base(self) -> TrackerSettings:
        if self.kind == "forgejo" and not self.base_url:
            raise ValueError(f"trackers {self.name!r}: a forgejo tracker needs base_url")
        return self

    async def credential(self) -> str | None:
        """The token, read afresh (token files and commands may rotate)."""
        token = await read_token(self.token, self.token_env, self.token_file, self.token_command)
        redact.add(token)
        return token


class DaemonSettings(BaseModel):
    """``[agents.NAME]`` in corral.toml."""

    model_config = {"extra": "forbid"}

    command: list[str] = Field(
        description="An argv list, or a string split into words like a shell would (never "
        'run by a shell: for `;`, `|`, `$VAR` write ["sh", "-c", "..."]).'
    )
    cwd: Path | None = Field(
        None, description="Working directory (default: a directory of its own in the workdir)."
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment.")
    network: bool = Field(True, description="Reaches the network (false: only a loopback).")
    autostart: bool = Field(True, description="Start with `corral serve`.")
    restart: Literal["always", "on-failure", "never"] = Field(
        "on-failure", description="When to start it again after it ends."
    )
    restart_delay: float = Field(1.0, gt=0, description="First restart backoff (seconds).")
    restart_delay_max: float = Field(60.0, gt=0, description="Cap on the restart backoff.")
    stable_after: float = Field(
        10.0, gt=0, description="Seconds up after which the backoff and failure count reset."
    )
    max_quick_failures: int = Field(
        5, ge=1, description="Quick failures in a row before giving up (status fatal)."
    )
    stop_signal: str = Field("SIGTERM", description="Signal that asks it to stop.")
    stop_timeout: float = Field(10.0, ge=0, description="Seconds before SIGKILL.")
    runner: str = Field(
        "embedded",
        min_length=1,
        max_length=200,
        description="Name of the runner that hosts it (`corral runner --name`); "
        "`embedded`: the runner inside `corral serve`.",
    )
    stdin: Literal["none", "messages"] = Field(
        "none",
        description='`messages`: `POST /agents/NAME/message` writes `{"corral": {"message": '
        '{"id", "text"}}}` as a line to its stdin; it answers with `{"corral": {"reply": ...}}` '
        "lines on stdout (`GET /sse/agents/NAME/messages`). `none`: stdin is /dev/null.",
    )
    log_max_bytes: int = Field(10_485_760, ge=1024, description="Rotate the log at this size.")
    log_backups: int = Field(3, ge=0, le=100, description="Rotated log files kept.")

    @field_validator("command", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return split_command(value)

    @field_validator("stop_signal")
    @classmethod
    def _signal(cls, value: str) -> str:
        name = value.upper() if value.upper().startswith("SIG") else f"SIG{value.upper()}"
        if name not in signal.Signals.__members__:
            raise ValueError(f"unknown signal {value!r}")
        return name


# Job fields a schedule sets itself.
_SCHEDULE_OWNS = ("session_id", "idempotency_key", "source", "source_ref", "run_at", "stream")


class ScheduleSettings(JobCreate):
    """``[[schedules]]`` in corral.toml: a cron table whose every slot submits
    one job. Besides the keys below it takes the job fields (``prompt`` or
    ``command``, ``provider``, ``repo``, ``labels``, ``priority``...), as a
    job body does."""

    name: str = Field(
        pattern=f"^{AGENT_NAME.pattern}$", description="Its name (`corral schedules run NAME`)."
    )
    cron: str = Field(
        description="When: croniter syntax, five fields (`0 9 * * 1-5`) or six with "
        "seconds last (`* * * * * */30`)."
    )
    timezone: str = Field("UTC", description="IANA time zone the cron is read in.")
    enabled: bool = Field(
        True,
        description="Fire its slots. `corral schedules enable|disable` records an "
        "operator's word in the database, which wins over this.",
    )
    catch_up: schedules.CatchUp = Field(
        "latest",
        description="Slots missed while corral was down: `latest` runs the latest one once, "
        "`none` runs none; either way the others are skipped with one "
        "`schedule.skipped` event, never replayed.",
    )

    @model_validator(mode="before")
    @classmethod
    def _owned(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            taken = [k for k in _SCHEDULE_OWNS if k in data]
            if taken:
                raise ValueError(f"{', '.join(taken)}: set by the schedule, not in [[schedules]]")
        return data

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        return schedules.check_cron(value)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        schedules.zone(value)
        return value

    def job(self) -> JobCreate:
        """The job each slot submits (without its slot's key and source)."""
        fields = self.model_dump(
            include=set(JobCreate.model_fields) - set(_SCHEDULE_OWNS), exclude_unset=True
        )
        return JobCreate.model_validate(fields)


class BudgetSettings(BaseModel):
    """A ``[[budgets]]`` table: a spending limit over a scope per period."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Its name in events and `corral budgets ls` (default: the scope).",
    )
    scope: str = Field(
        pattern=r"^(global|provider:[^\s]{1,64}|label:[^\s]{1,200})$",
        description='"global" (every job), "provider:NAME" or "label:NAME".',
    )
    limit: float = Field(gt=0, allow_inf_nan=False, description="USD per period.")
    period: Literal["day", "week", "month"] = Field(
        "month", description="The period the limit is for (weeks start on Monday)."
    )
    timezone: str = Field("UTC", description="IANA time zone the period is read in.")
    action: Literal["pause", "warn"] = Field(
        "pause",
        description="pause: nothing it covers starts until the period ends (a provider's "
        "queued jobs go to its fallback, as for a quota); warn: events only. Both announce "
        "crossing 80 % and 100 % (budget.warning, budget.exceeded events).",
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    def budget(self) -> Budget:
        return Budget(
            name=self.name or self.scope,
            scope=self.scope,
            limit=self.limit,
            period=self.period,
            timezone=self.timezone,
            action=self.action,
        )


class OllamaSettings(BaseModel):
    """The Ollama-compatible surface (/api/tags, /api/chat, /api/generate, /api/embed...)."""

    model_config = {"extra": "forbid"}

    embed_provider: str | None = Field(None, description="Provider behind /api/embed.")
    chat_timeout: float = Field(
        600.0, gt=0, description="Seconds /api/chat and /api/generate wait for their job (504)."
    )
    version: str = Field(
        "0.12.6",
        min_length=1,
        description="The Ollama version /api/version reports (clients check it before "
        "they use an endpoint).",
    )
    unserved_wait: float = Field(
        5.0,
        ge=0,
        le=600,
        description="Seconds /api/chat waits for a runner serving the model's provider to "
        "connect before a 503 saying none does.",
    )


class Settings(BaseSettings):
    """Effective configuration of a corral process."""

    model_config = SettingsConfigDict(
        env_prefix="CORRAL_", env_nested_delimiter="__", extra="forbid"
    )

    host: str = Field("127.0.0.1", description="Address `corral serve` binds.")
    port: int = Field(8487, ge=0, le=65535, description="Port `corral serve` binds.")
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Where the SQLite database, admin key, workspaces and runner state live.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL: sqlite:///PATH or postgresql+asyncpg://... "
        "Default: SQLite in the data dir.",
    )
    database_connections: int = Field(
        35,
        ge=2,
        le=1000,
        description="PostgreSQL: the most connections this process's pools keep open "
        "(4 of each 7 for writes, the rest for reads; opened when first needed, then kept). "
        "The bus and each singleton loop this replica leads use one more each: give "
        "PostgreSQL's `max_connections` about this plus 5 per replica. SQLite ignores it.",
    )
    log_level: str = Field("INFO", description="Log level of `corral serve` and runners.")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Log line format: `json` makes stderr JSON lines only (one object "
        "per line, with the job, session, runner, agent and request ids it is about).",
    )
    access_log: bool = Field(
        False,
        description="One log line per HTTP request (method, path, status, ms, request id); "
        "never the query string or headers.",
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest accepted request body in bytes (413 beyond)."
    )
    lease_ttl: float = Field(
        30.0,
        gt=0,
        description="Seconds a job stays owned without a heartbeat before the "
        "watchdog re-queues it. A third of it bounds the runners' long-polls and is how "
        "long a job waits for its runner's first heartbeat (its lease answered into a "
        "network cut is queued again then).",
    )
    heartbeat_interval: float = Field(
        5.0, gt=0, description="Seconds between a runner's heartbeats for each job."
    )
    watchdog_interval: float = Field(
        1.0, gt=0, description="Seconds between watchdog sweeps for expired leases."
    )
    worker_token_ttl: float = Field(
        900.0, gt=0, description="Lifetime in seconds of a worker JWT (renewed by heartbeats)."
    )
    default_max_attempts: int = Field(
        1, ge=1, le=100, description="max_attempts of a job that does not set it."
    )
    retry_backoff_base: float = Field(
        2.0, ge=0, description="Seconds before the first retry of a failed attempt (doubles)."
    )
    retry_backoff_max: float = Field(300.0, ge=0, description="Cap on the retry backoff.")
    sse_buffer: int = Field(
        1000,
        ge=10,
        description="Events an SSE subscriber may lag behind before it is "
        "disconnected (it reconnects with Last-Event-ID and loses nothing).",
    )
    sse_ping: float = Field(15.0, gt=0, description="Seconds between SSE keep-alive comments.")
    ui_session_ttl: float = Field(
        12 * 3600.0,
        ge=60,
        le=30 * 86400,
        description="Seconds a dashboard sign-in lasts (its cookie expires then).",
    )
    jwt_secret: SecretStr | None = Field(
        None,
        min_length=32,
        description="HS256 secret for worker JWTs. Default: generated once and kept "
        "in the database, so every replica shares it.",
    )
    queue_enabled: bool = Field(True, description="Watch the queue folder.")
    queue_dir: Path = Field(
        Path("queue"),
        description="The queue folder; a relative path is taken from the config file's "
        "directory (or the working directory without one).",
    )
    providers: dict[str, SerializeAsAny[ProviderSettings]] = Field(
        default_factory=dict,
        description="[providers.NAME] tables, each checked against its kind's settings "
        "(below); a local `shell` provider always exists.",
    )
    mcp: McpSettings = Field(
        default_factory=McpSettings,
        description="[mcp.servers.NAME]: upstream MCP servers the jobs' gateways may proxy.",
    )
    default_provider: str | None = Field(
        None,
        description="Where a prompt that names no provider goes: an enabled agent provider "
        "(any kind but shell). Without one, such a prompt is refused (422) saying so.",
    )
    default_local: str | None = Field(
        None,
        description="The local agent provider for jobs that must stay local "
        "(needs_local_agent, allow_delegation false). Default: default_provider if it is local.",
    )
    max_running: int | None = Field(
        None, ge=1, description="At most this many jobs active across all runners (others queue)."
    )
    repo_concurrency: int | None = Field(
        None, ge=1, description="At most this many jobs active in one repository (others queue)."
    )
    max_subjob_depth: int = Field(
        5,
        ge=1,
        le=100,
        description="How deep sub-jobs (`submit_job` of the MCP gateway) may nest: a "
        "sub-job of a job at this depth is refused (422 subjob_too_deep).",
    )
    max_infra_retries: int = Field(
        3,
        ge=0,
        le=100,
        description="Times a run lost to infrastructure (runner lost, hang guard) is re-queued "
        "without consuming an attempt.",
    )
    quota_backoff: float = Field(
        60.0,
        gt=0,
        description="Seconds a provider is paused after a quota failure that gives no reset time.",
    )
    webhook_secret: SecretStr | None = Field(
        None,
        min_length=16,
        description="Signs deliveries of webhooks given without a secret. Default: generated "
        "once and kept in the database (`corral webhooks secret` shows it).",
    )
    webhooks: list[WebhookEndpointSettings] = Field(
        default_factory=list,
        description="[[webhooks]] tables: server-wide endpoints told of every job's changes.",
    )
    trackers: list[TrackerSettings] = Field(
        default_factory=list,
        description="[[trackers]] tables: issue trackers (GitHub, Forgejo/Gitea) whose "
        "labelled issues become jobs (see the Issue trackers page).",
    )
    webhook_allow_private: bool | None = Field(
        None,
        description="Send job webhooks to loopback, private and link-local addresses "
        "(refused otherwise: 422 at submit, a failed delivery later). Default: true only "
        "when `host` is a loopback address.",
    )
    webhook_timeout: float = Field(
        10.0, gt=0, le=300, description="Seconds a webhook endpoint has to answer."
    )
    webhook_retry_horizon: float = Field(
        86400.0,
        gt=0,
        description="Seconds after which a delivery that keeps failing is given up.",
    )
    webhook_concurrency: int = Field(
        16, ge=1, le=1024, description="Deliveries in flight at once (at most 4 per URL)."
    )
    max_artifact_bytes: int = Field(
        10_485_760, ge=1024, description="Largest artifact a runner may upload (413 beyond)."
    )
    workspace_gc_age: float = Field(
        7 * 86400.0,
        gt=0,
        description="`corral workspaces gc` removes workspaces of sessions idle this many seconds.",
    )
    paused: bool = Field(
        False, description="Kill switch default when the database holds none: no new leases."
    )
    ollama: OllamaSettings = Field(
        default_factory=lambda: OllamaSettings(),
        description="[ollama] table: the Ollama-compatible endpoints.",
    )
    agents: dict[str, DaemonSettings] = Field(
        default_factory=dict,
        description="[agents.NAME] tables: long-running agent daemons, supervised by the "
        "runner each names (default: the one embedded in `corral serve`).",
    )
    runner: RunnerSettings = Field(
        default_factory=lambda: RunnerSettings(),
        description="The runner embedded in `corral serve`.",
    )
    channels: list[ChannelSettings] = Field(
        default_factory=list,
        description="[[channels]] tables: chats whose messages become turns and get the "
        'replies: `kind = "bridge"` (a signed IM bridge) or `kind = "telegram"` (a bot).',
    )
    schedules: list[ScheduleSettings] = Field(
        default_factory=list,
        description="[[schedules]] tables: cron schedules, each slot one job.",
    )
    budgets: list[BudgetSettings] = Field(
        default_factory=list,
        description="[[budgets]] tables: spending limits with hard stops (see docs/cost.md).",
    )
    schedule_grace: float = Field(
        60.0,
        gt=0,
        le=86400,
        description="A slot found due at most this many seconds late is fired; an older "
        "one was missed (corral was down): see the schedule's `catch_up`.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _CONFIG_FILE.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @field_validator("providers", mode="wrap")
    @classmethod
    def _provider_tables(
        cls, value: object, handler: ValidatorFunctionWrapHandler
    ) -> dict[str, ProviderSettings]:
        """Each table as its kind's model: an unknown kind or a key the kind
        does not take is an error naming them."""
        if not isinstance(value, Mapping):
            return handler(value)  # type: ignore[no-any-return]
        tables: dict[str, ProviderSettings] = {}
        problems: list[InitErrorDetails] = []
        for name, table in value.items():
            try:
                tables[name] = provider_settings(table)
            except ValidationError as exc:
                problems += [
                    InitErrorDetails(
                        type=PydanticCustomError(
                            _PROVIDER_ERROR, "{message}", {"message": e["msg"]}
                        ),
                        loc=(name, *e["loc"]),
                        input=e["input"],
                    )
                    for e in exc.errors()
                ]
        if problems:
            raise ValidationError.from_exception_data("providers", problems)
        return handler(tables)  # type: ignore[no-any-return]

    def provider_table(self) -> dict[str, Provider]:
        """Configured providers for routing, with the built-in `shell`."""
        table = {"shell": Provider("shell", "shell", local=True)}
        for name, p in self.providers.items():
            tiers = {str(k): v for k, v in p.tiers.items()}
            table[name] = Provider(name, p.kind, p.is_local, p.enabled, tiers)
        return table

    def embedded_providers(self) -> list[str]:
        """What the runner in `corral serve` serves: ``runner.providers`` plus
        every enabled remote provider that names no other runner (their work
        happens on the remote server; the runner only drives it)."""
        return self.runner_serves(self.runner.providers, EMBEDDED_RUNNER)

    def runner_serves(self, listed: list[str], name: str | None) -> list[str]:
        """What a runner called ``name`` that lists ``listed`` serves: those,
        plus the enabled remote providers assigned to it (``runner = NAME``;
        the embedded runner: those assigned to no runner)."""
        assigned = sorted(
            n
            for n, p in self.providers.items()
            if p.enabled and not p.is_local and _assigned(p) == name
        )
        return [*listed, *(n for n in assigned if n not in listed)]

    def runner_providers(self, names: list[str]) -> dict[str, ProviderSettings]:
        """provider name -> its settings, for a runner serving ``names``."""
        table = {"shell": provider_settings({"kind": "shell"}), **self.providers}
        unknown = [n for n in names if n not in table]
        if unknown:
            raise ConfigError(
                f"runner providers {unknown} are not configured: add [providers.NAME] "
                "tables to corral.toml"
            )
        return {n: table[n] for n in names}

    @model_validator(mode="after")
    def _check_budgets(self) -> Settings:
        names = [b.budget().name for b in self.budgets]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"budgets: names used twice: {', '.join(twice)} (give each a name)")
        for b in self.budgets:
            kind, _, target = b.scope.partition(":")
            if kind == "provider" and target not in self.provider_table():
                raise ValueError(f"budgets: scope {b.scope!r} names no configured provider")
        return self

    @model_validator(mode="after")
    def _check_fallbacks(self) -> Settings:
        for name, p in self.providers.items():
            if p.fallback is not None and p.fallback not in self.provider_table():
                raise ValueError(f"providers.{name}.fallback {p.fallback!r} is not a provider")
            if p.fallback == name:
                raise ValueError(f"providers.{name}.fallback cannot be the provider itself")
        return self

    @model_validator(mode="after")
    def _check_mcp_servers(self) -> Settings:
        for name, p in self.providers.items():
            for server in getattr(p, "mcp_servers", ()):
                if server not in self.mcp.servers:
                    known = ", ".join(sorted(self.mcp.servers)) or "none"
                    raise ValueError(
                        f"providers.{name}.mcp_servers: {server!r} is not an [mcp.servers] "
                        f"table (configured: {known})"
                    )
        return self

    @field_validator("trackers")
    @classmethod
    def _tracker_names(cls, value: list[TrackerSettings]) -> list[TrackerSettings]:
        names = [t.name for t in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"tracker name(s) used twice: {', '.join(twice)}")
        return value

    def tracker(self, name: str) -> TrackerSettings | None:
        return next((t for t in self.trackers if t.name == name), None)

    @field_validator("channels")
    @classmethod
    def _channel_names(cls, value: list[ChannelSettings]) -> list[ChannelSettings]:
        seen: set[str] = set()
        for channel in value:
            if channel.name in seen:
                raise ValueError(f"two [[channels]] are named {channel.name!r}")
            seen.add(channel.name)
        return value

    def channel(self, name: str) -> ChannelSettings | None:
        """The ``[[channels]]`` table named ``name``."""
        return next((c for c in self.channels if c.name == name), None)

    @field_validator("agents")
    @classmethod
    def _agent_names(cls, value: dict[str, DaemonSettings]) -> dict[str, DaemonSettings]:
        for name in value:
            if not AGENT_NAME.fullmatch(name):
                raise ValueError(
                    f"agent name {name!r}: use letters, digits, '.', '_' and '-' (up to 64)"
                )
        return value

    @field_validator("schedules")
    @classmethod
    def _schedule_names(cls, value: list[ScheduleSettings]) -> list[ScheduleSettings]:
        seen: set[str] = set()
        for schedule in value:
            if schedule.name in seen:
                raise ValueError(f"two [[schedules]] are named {schedule.name!r}")
            seen.add(schedule.name)
        return value

    def schedule(self, name: str) -> ScheduleSettings | None:
        return next((s for s in self.schedules if s.name == name), None)

    @model_validator(mode="after")
    def _check_defaults(self) -> Settings:
        table = self.provider_table()
        for setting in ("default_provider", "default_local"):
            name = getattr(self, setting)
            if name is None:
                continue
            provider = table.get(name)
            where = "local agent provider" if setting == "default_local" else "agent provider"
            if provider is None:
                problem = "is not a configured provider"
            elif not provider.enabled:
                problem = "is disabled"
            elif provider.kind == "shell":
                problem = "is a shell, which runs only explicit commands, never prompts"
            elif setting == "default_local" and not provider.local:
                problem = "is remote"
            else:
                continue
            agents = sorted(
                n for n, p in table.items() if p.agent and (p.local or setting != "default_local")
            )
            raise ValueError(
                f"{setting} {name!r} {problem}: name an enabled {where} "
                f"({', '.join(agents) or 'none configured'})"
            )
        return self

    @model_validator(mode="after")
    def _check_channels(self) -> Settings:
        table = self.provider_table()
        for channel in self.channels:
            name = channel.provider
            if name is None:
                continue
            provider = table.get(name)
            if provider is None:
                problem = "is not a configured provider"
            elif provider.kind == "shell":
                problem = "is a shell: chat messages are prose, and prose never runs in a shell"
            else:
                continue
            agents = sorted(n for n, p in table.items() if p.agent)
            raise ValueError(
                f"channel {channel.name!r}: provider {name!r} {problem}: name an agent or "
                f"chat provider ({', '.join(agents) or 'none configured'})"
            )
        return self

    _source: Path | None = PrivateAttr(None)  # the corral.toml read, for reloads

    def reload_agents(self) -> dict[str, DaemonSettings]:
        """``[agents.*]`` as the configuration file says now."""
        return load_settings(self._source).agents if self._source else dict(self.agents)

    def secrets(self) -> list[str]:
        """The secret values this configuration holds, for ``corral.redact``:
        provider keys (token files read; no token command is run: its output
        is remembered when a job runs it), secret-named ``env`` entries of
        providers and agents, webhook secrets, the JWT secret, the database
        password."""
        found: list[str | None] = []
        for secret in (self.jwt_secret, self.webhook_secret):
            found.append(secret.get_secret_value() if secret is not None else None)
        found += [h.secret.get_secret_value() for h in self.webhooks if h.secret is not None]
        for t in self.trackers:
            for secret in (t.token, t.webhook_secret):
                found.append(secret.get_secret_value() if secret is not None else None)
            if t.token_env:
                found.append(os.environ.get(t.token_env))
            if t.token_file is not None:
                with contextlib.suppress(OSError):
                    found.append(t.token_file.expanduser().read_text().strip())
        with contextlib.suppress(ValueError):
            found.append(urlsplit(self.effective_database_url).password)
        for p in self.providers.values():  # each kind has the fields it needs
            api_key = getattr(p, "api_key", None)
            found.append(api_key.get_secret_value() if api_key is not None else None)
            api_key_env = getattr(p, "api_key_env", None)
            if api_key_env:
                found.append(os.environ.get(api_key_env))
            token_file = getattr(p, "token_file", None)
            if token_file is not None:
                with contextlib.suppress(OSError):  # said when a job needs it
                    found.append(token_file.expanduser().read_text().strip())
            found += env_secrets(getattr(p, "env", None) or {})
        for agent in self.agents.values():
            found += env_secrets(agent.env)
        for server in self.mcp.servers.values():
            found += server.secrets()
        for channel in self.channels:
            if channel.kind == "bridge":
                found.append(channel.secret.get_secret_value())
            else:
                found.append(os.environ.get(channel.token_env))
        return [f for f in found if f]

    @property
    def webhooks_may_reach_private(self) -> bool:
        """``webhook_allow_private``, or its default: a server on loopback serves
        this host only, whose clients receive their webhooks on loopback."""
        if self.webhook_allow_private is not None:
            return self.webhook_allow_private
        return is_loopback(self.host)

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'corral.db'}"

    @property
    def admin_key_file(self) -> Path:
        return self.data_dir / "admin.key"

    @property
    def config_file(self) -> Path | None:
        """The corral.toml these settings were read from, if any."""
        return self._source

    def sandbox_hidden(self) -> list[Path]:
        """What sandboxed jobs of a runner with these settings must not see:
        the data dir (keys, database, runner state, workspaces), the
        configuration file, the SQLite database wherever it is, the queue
        folder, providers' ``token_file``s, and ``runner.sandbox_hide``."""
        paths = [self.data_dir, self.admin_key_file, self.data_dir / "runner.key", self.queue_dir]
        if self._source is not None:
            paths.append(self._source)
        url = self.effective_database_url
        if url.startswith("sqlite") and ":///" in url:
            db = Path(url.split(":///", 1)[1].split("?", 1)[0])
            paths += [db, *(db.with_name(db.name + end) for end in ("-wal", "-shm", "-journal"))]
        tokens = [
            p.token_file.expanduser()
            for p in self.providers.values()
            if isinstance(p, RemoteSettings) and p.token_file
        ]
        return [*paths, *tokens, *self.runner.sandbox_hide]

    def local_url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


def _assigned(provider: ProviderSettings) -> str:
    """The runner that serves a remote provider (its ``runner``, else the embedded one)."""
    runner = provider.runner if isinstance(provider, RemoteSettings) else None
    return runner or EMBEDDED_RUNNER


def config_file_path(config_file: Path | None = None) -> Path:
    """The configuration file to read: ``config_file`` (``--config``), else
    ``$CORRAL_CONFIG``, else ./corral.toml, else the user's
    ``$XDG_CONFIG_HOME/corral/corral.toml`` (~/.config/corral/corral.toml).
    One named explicitly (either way) must exist; the others are optional:
    when none exists, the path returned is ./corral.toml (absent)."""
    named = config_file or (
        Path(os.environ["CORRAL_CONFIG"]) if os.environ.get("CORRAL_CONFIG") else None
    )
    if named is not None:
        if not named.is_file():
            how = "--config" if config_file is not None else "CORRAL_CONFIG"
            raise ConfigError(f"config file {named} ({how}) does not exist")
        return named
    here = Path("corral.toml")
    if here.is_file():
        return here
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    user = Path(xdg) / "corral" / "corral.toml"
    return user if user.is_file() else here


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Load settings from the configuration file (``config_file_path``), env
    and overrides."""
    path = config_file_path(config_file)
    token = _CONFIG_FILE.set(path if path.is_file() else None)
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid configuration ({path}): {problems}") from exc
    except ValueError as exc:  # a TOML syntax error
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    finally:
        _CONFIG_FILE.reset(token)
    settings._source = path if path.is_file() else None
    if not settings.queue_dir.is_absolute():
        base = path.parent if path.is_file() else Path.cwd()
        settings.queue_dir = (base / settings.queue_dir).resolve()
    return settings


def masked(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, secrets masked."""
    data = settings.model_dump(mode="json")
    data["database_url"] = _mask_url(settings.effective_database_url)
    if settings.jwt_secret is not None:
        data["jwt_secret"] = "********"
    if settings.webhook_secret is not None:
        data["webhook_secret"] = "********"
    for hook in data["webhooks"]:
        if hook.get("secret"):
            hook["secret"] = "********"
    for channel in data["channels"]:
        if channel.get("secret"):
            channel["secret"] = "********"
    for table in (*data["providers"].values(), *data["agents"].values()):
        if "env" in table:
            table["env"] = dict.fromkeys(table["env"], "********")
    return data


def _mask_url(url: str) -> str:
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    if ":" in creds:
        creds = creds.split(":", 1)[0] + ":********"
    return f"{scheme}://{creds}@{host}"
