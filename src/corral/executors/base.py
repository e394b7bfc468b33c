"""The executor seam: ``run(ctx) -> Outcome`` and ``cancel()``.

Executors register under the entry point group ``corral.executors`` by their
``kind``; built-ins register the same way a third-party package would. An
executor class declares its ``kind``, its settings model (``settings``: what a
``[providers.NAME]`` table of that kind takes, see ``executors/settings.py``)
and whether it is ``local`` (its jobs are processes on the runner's host).
Reading a provider table imports its kind's module, so an executor module
imports at its top only what its settings need; SDKs and clients are
imported by the run."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from corral import retrying
from corral.errors import ConfigError
from corral.executors.process import MARKER_VAR
from corral.executors.sandbox import Confine, job_environment
from corral.executors.settings import LocalSettings, ProviderSettings
from corral.models import FailureClass, Job, Outcome, Session


class Emit(Protocol):
    """Record an event for the running job (sent to the server in batches)."""

    def __call__(
        self,
        type: str,
        payload: Mapping[str, object],
        *,
        ephemeral: bool = False,
        internal: bool = False,
    ) -> None: ...


class Waiting:
    """Whether the job waits for a person (``ask_human``). Meanwhile the
    executor's output-stall guards pause; they count again from the moment
    the wait ends (the job's own ``timeout`` keeps counting)."""

    def __init__(self) -> None:
        self._holds = 0
        self.ended_at: float | None = None  # loop time the last wait ended
        self.changes = 0  # bumped whenever a wait starts or ends
        self._changed = asyncio.Event()

    @property
    def active(self) -> bool:
        return self._holds > 0

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Wait for a person for as long as the block runs (nests)."""
        self._holds += 1
        self._change()
        try:
            yield
        finally:
            self._holds -= 1
            if not self._holds:
                self.ended_at = asyncio.get_running_loop().time()
            self._change()

    async def changed(self) -> None:
        """Return at the next start or end of a wait."""
        await self._changed.wait()

    def _change(self) -> None:
        self.changes += 1
        self._changed.set()
        self._changed = asyncio.Event()


@dataclass(frozen=True)
class McpEndpoint:
    """Where the job's agent reaches its MCP gateway (corral/gateway/): a
    streamable HTTP ``url`` on 127.0.0.1, its bearer ``token`` and the names
    of the ``tools`` it offers (to grant them to the agent)."""

    url: str
    token: str
    tools: tuple[str, ...]
    name: str = "corral"  # the agent's name for the server


S = TypeVar("S", bound=ProviderSettings)
L = TypeVar("L", bound=LocalSettings)


@dataclass
class Context(Generic[S]):
    """One run of a job: what the executor needs, ``settings`` of its own model."""

    job: Job
    session: Session
    workdir: Path
    emit: Emit
    # Called once the work runs: with the pid of a local process (recorded so
    # a restarted runner can reap it), or None for remote work.
    started: Callable[[int | None], None]
    # The provider's settings, an instance of the executor's ``settings`` model.
    settings: S
    kill_grace: float = 5.0
    provider: str = "shell"
    # The executor's conversation handle from the session's previous turn
    # (e.g. Claude Code's session id for --resume), and how to record a new one.
    handle: str | None = None
    save_handle: Callable[[str], None] = lambda handle: None
    # A directory of the runner's own for this provider (config, caches).
    state_dir: Path | None = None
    # A marker in the agent's environment that every descendant inherits:
    # lets the runner find and stop processes that left the process tree.
    run_marker: str | None = None
    # Wraps the argv of the job's process in the runner's sandbox (its
    # workspace and provider state dir writable, the runner's secrets hidden).
    confine: Confine = field(default_factory=Confine)
    # Set while the job waits for a person: stall guards pause.
    waiting: Waiting = field(default_factory=Waiting)
    # The job's MCP gateway (None: the job has none).
    mcp: McpEndpoint | None = None
    # W3C trace context of the job's run (corral.tracing): TRACEPARENT in its environment.
    traceparent: str | None = None

    def environment(
        self: Context[L], home: Path, extra: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """The environment of the job's process: the runner's allowlisted
        variables (PATH, locale, ``OTEL_*``, ...), ``HOME``, ``extra`` (the
        executor's own), this provider's ``env`` and credential (its
        ``api_key_env`` variable), the job's ids, its ``TRACEPARENT`` and the
        run marker. Nothing else of the runner's: no ``CORRAL_*`` setting, no
        other provider's key."""
        ours = {**(extra or {}), **self.settings.env}
        key_env = self.settings.api_key_env
        if key_env and key_env in os.environ:
            ours[key_env] = os.environ[key_env]
        ours.update(
            CORRAL_JOB_ID=self.job.id,
            CORRAL_SESSION_ID=self.session.id,
            CORRAL_ATTEMPT=str(self.job.attempt),
        )
        if self.run_marker:
            ours[MARKER_VAR] = self.run_marker
        if self.traceparent:
            ours["TRACEPARENT"] = self.traceparent  # read by CLIs that trace (W3C)
        return job_environment(os.environ, home=home, extra=ours)


class Executor(Protocol):
    kind: ClassVar[str]
    # What a [providers.NAME] table of this kind takes (extra keys forbidden).
    settings: ClassVar[type[ProviderSettings]]
    # Its jobs are processes on the runner's host (else: work on a remote server).
    local: ClassVar[bool]

    # Context[Any]: an executor takes the context of its own settings model;
    # the configuration builds every provider's settings from its kind's model.
    async def run(self, ctx: Context[Any]) -> Outcome: ...

    async def cancel(self) -> None: ...


GROUP = "corral.executors"


@functools.cache
def load(kind: str) -> type[Executor]:
    """The executor class registered for ``kind`` (looked up once: scanning the
    installed distributions' entry points costs ~2 ms)."""
    found = entry_points(group=GROUP, name=kind)
    for ep in found:
        cls: type[Executor] = ep.load()
        model = getattr(cls, "settings", None)
        if not (isinstance(model, type) and issubclass(model, ProviderSettings)):
            raise ConfigError(
                f"executor {kind!r} ({ep.value}) declares no settings model: its class needs "
                "`settings`, a subclass of corral.executors.settings.ProviderSettings"
            )
        if not isinstance(getattr(cls, "local", None), bool):
            raise ConfigError(f"executor {kind!r} ({ep.value}) does not say whether it is local")
        return cls
    known = ", ".join(sorted(ep.name for ep in entry_points(group=GROUP))) or "none"
    raise ConfigError(f"no executor of kind {kind!r} is installed (installed: {known})")


def kinds() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=GROUP))


def failed(failure: FailureClass, reason: str, error: str, **fields: Any) -> Outcome:
    """A failed run's outcome, with its class."""
    return Outcome(status="failed", failure=failure, reason=reason, error=error, **fields)


def classify_http(status: int | None) -> FailureClass:
    """The failure class of an HTTP status from a remote service: 429/529 a
    quota, other 4xx (but 408/409) bad input, the rest infrastructure."""
    if status in (429, 529):
        return "quota"
    if status is not None and 400 <= status < 500 and status not in (408, 409):
        return "input"
    return "infra"


def http_failed(
    who: str, status: int, message: str, headers: Mapping[str, str] | None = None
) -> Outcome:
    """A request a remote service refused, classified by its status (a quota
    carries the reset time its Retry-After names)."""
    failure = classify_http(status)
    return failed(
        failure,
        f"api_error_{status}",
        f"{who}: HTTP {status}: {message}",
        retry_at=retry_at(headers) if failure == "quota" else None,
    )


def retry_at(headers: Mapping[str, str] | None) -> datetime | None:
    """When a refused request may be tried again, from its Retry-After header
    (seconds or an HTTP date)."""
    now = datetime.now(UTC)
    wait = retrying.retry_after(headers.get("retry-after") if headers is not None else None, now)
    return None if wait is None else now + timedelta(seconds=wait)
