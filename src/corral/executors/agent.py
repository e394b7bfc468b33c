"""Supervising a headless agent CLI that prints one JSON object per line.

Shared by the claude-code and codex executors. The agent starts from a clean
environment (PATH, locale, a HOME and TMPDIR of its own, the provider's
``env``), with stdin closed, in a session of its own, in the runner's sandbox
(its workspace, provider state dir and TMPDIR writable). Four guards make
sure no run hangs:

- start-up: no first line within ``startup_timeout``;
- stall: no line for ``stall_timeout`` (paused while the job waits for a
  person, ``ctx.waiting``);
- the job's ``timeout``;
- linger: the final result line was printed but the process has not exited
  within ``result_grace`` (a known failure of headless agents).

A guard stops the whole tree: the process group, every descendant, and every
process carrying the run's marker in its environment (tool processes that
started their own process group or session)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from corral.executors.base import Context, Waiting
from corral.executors.process import stop_tree
from corral.executors.sandbox import found
from corral.executors.settings import AgentSettings
from corral.models import FailureClass, Outcome

A = TypeVar("A", bound=AgentSettings)

# One JSON line may carry a whole file (a tool result): allow big lines.
LINE_LIMIT = 32 * 1024 * 1024
STDERR_TAIL = 40
MAX_FIELD = 16_384  # long strings in events are cut to this many characters

QUOTA_WORDS = re.compile(
    r"rate.?limit|usage.?limit|quota|overloaded|too many requests|\b429\b|\b529\b", re.I
)
AUTH_WORDS = re.compile(
    r"\b401\b|\b403\b|authentication|invalid api key|unauthori[sz]ed|not logged in", re.I
)
SERVER_WORDS = re.compile(
    r"\b50[0234]\b|internal server error|bad gateway|service unavailable|high demand|"
    r"server_error|connection (refused|reset)|timed out",
    re.I,
)


def clip(value: Any, limit: int = MAX_FIELD) -> Any:
    """``value`` with long strings cut (events stay small; the agent's own
    transcript keeps the full text)."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + f"... [{len(value)} chars]"
    if isinstance(value, list):
        return [clip(v, limit) for v in value]
    if isinstance(value, dict):
        return {k: clip(v, limit) for k, v in value.items()}
    return value


def reset_time(text: str, now: datetime | None = None) -> datetime | None:
    """A quota reset time mentioned in an error message, if any: "retry after
    30s", "try again in 5 minutes", "resets at 2026-11-21T15:00:00Z", or an
    HTTP date."""
    now = now or datetime.now(UTC)
    m = re.search(
        r"(?:after|in)\s+(\d+(?:\.\d+)?)\s*(s|sec|seconds?|m|min|minutes?|h|hours?)\b", text, re.I
    )
    if m:
        unit = m.group(2)[0].lower()
        seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[unit]
        return now + timedelta(seconds=seconds)
    m = re.search(
        r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?", text
    )
    if m:
        with contextlib.suppress(ValueError):
            at = datetime.fromisoformat(m.group(0).replace("Z", "+00:00"))
            return at if at.tzinfo else at.replace(tzinfo=UTC)
    m = re.search(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT", text)
    if m:
        with contextlib.suppress(ValueError, TypeError):
            return parsedate_to_datetime(m.group(0))
    return None


def classify(text: str) -> FailureClass:
    """An agent-reported error: quota, bad credentials (input), the API's own
    trouble (infra: another run may well succeed) or the agent's."""
    if QUOTA_WORDS.search(text):
        return "quota"
    if AUTH_WORDS.search(text):
        return "input"
    if SERVER_WORDS.search(text):
        return "infra"
    return "agent"


class AgentExecutor(Generic[A]):
    """Base of the JSON-lines agent executors; subclasses say how to start the
    agent and what its lines mean (and their settings model, an ``AgentSettings``)."""

    kind: ClassVar[str] = ""
    local: ClassVar[bool] = True
    default_command: ClassVar[str] = ""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._grace = 5.0
        self._marker: str | None = None
        self._cancelled = False
        self.guard: str | None = None  # which guard stopped the run
        self.finished = False  # the final result line was seen
        # Set by on_line for a line that shows no progress (e.g. "Reconnecting..."):
        # it does not reset the stall guard.
        self.idle_line = False
        self.stderr: deque[str] = deque(maxlen=STDERR_TAIL)

    # -- to implement ----------------------------------------------------------

    def argv(self, ctx: Context[A]) -> list[str]:
        raise NotImplementedError

    def environment(self, ctx: Context[A], home: Path, tmp: Path) -> dict[str, str]:
        """Executor-specific variables (on top of the clean base)."""
        return {}

    def on_line(self, data: dict[str, Any], ctx: Context[A]) -> None:
        raise NotImplementedError

    def read_only(self, ctx: Context[A]) -> list[Path]:
        """Paths the runner's sandbox keeps read-only for this run."""
        return []

    def outcome(self, returncode: int | None, ctx: Context[A]) -> Outcome:
        raise NotImplementedError

    # -- the run -----------------------------------------------------------------

    def command(self, ctx: Context[A]) -> list[str]:
        return list(ctx.settings.command or [self.default_command])

    async def run(self, ctx: Context[A]) -> Outcome:
        self._grace = ctx.kill_grace
        self._marker = ctx.run_marker
        state = ctx.state_dir or ctx.workdir / ".corral"
        home = state / "home"
        home.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"corral-{ctx.job.id[:8]}-"))
        try:
            return await self._run(ctx, state, home, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    async def _run(self, ctx: Context[A], state: Path, home: Path, tmp: Path) -> Outcome:
        env = ctx.environment(home, {"TMPDIR": str(tmp), **self.environment(ctx, home, tmp)})
        argv = self.argv(ctx)
        # Found here, not by the sandbox: a missing CLI is the operator's to fix.
        if not found(argv[0], env, ctx.workdir):
            return Outcome(
                status="failed",
                reason="agent_not_found",
                failure="input",
                error=f"cannot start {argv[0]!r}: not found (set `command` of "
                f"provider {ctx.provider!r})",
            )
        try:
            proc = await asyncio.create_subprocess_exec(
                *ctx.confine(
                    argv,
                    cwd=ctx.workdir,
                    writable=[state, tmp],
                    read_only=self.read_only(ctx),
                    programs=self.command(ctx),
                ),
                cwd=ctx.workdir,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                limit=LINE_LIMIT,
            )
        except OSError as exc:
            return Outcome(
                status="failed",
                reason="agent_not_found",
                failure="input",
                error=f"cannot start {argv[0]!r}: {exc.strerror or exc} (set `command` of "
                f"provider {ctx.provider!r})",
            )
        self._proc = proc
        ctx.started(proc.pid)
        if self._cancelled:  # cancelled while the process was being started
            await stop_tree(proc, self._grace, self._marker)
        ctx.emit(
            "agent.started",
            {"pid": proc.pid, "argv": [clip(a, 200) for a in argv], "sandbox": ctx.confine.kind},
        )
        assert proc.stdout is not None and proc.stderr is not None
        errors = asyncio.create_task(self._drain_stderr(proc.stderr))
        try:
            await self._supervise(proc, proc.stdout, ctx)
        except asyncio.CancelledError:
            await stop_tree(proc, self._grace, self._marker)
            raise
        finally:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(errors), 1.0)
            errors.cancel()
        if self._cancelled:
            return Outcome(
                status="failed", reason="cancelled", error="cancelled", exit_code=proc.returncode
            )
        return self.outcome(proc.returncode, ctx)

    async def _supervise(
        self, proc: asyncio.subprocess.Process, stdout: asyncio.StreamReader, ctx: Context[A]
    ) -> None:
        loop = asyncio.get_running_loop()
        settings = ctx.settings
        started = loop.time()
        job_deadline = started + ctx.job.timeout if ctx.job.timeout else None
        seen_line = False
        last = started
        finished_at: float | None = None
        waiting = ctx.waiting
        while True:
            # Silence while the job waits for a person is no stall: the quiet
            # time counts from the end of the last wait.
            quiet_from = max(last, waiting.ended_at or started)
            if finished_at is not None:
                deadline, guard = finished_at + settings.result_grace, "linger"
            elif waiting.active:
                deadline, guard = math.inf, "stall"
            elif not seen_line:
                deadline, guard = quiet_from + settings.startup_timeout, "startup"
            else:
                deadline, guard = quiet_from + settings.stall_timeout, "stall"
            if job_deadline is not None and job_deadline < deadline:
                deadline, guard = job_deadline, "timeout"
            changes = waiting.changes
            try:
                raw = await _readline(stdout, deadline - loop.time(), waiting)
            except TimeoutError:
                if guard != "timeout" and finished_at is None and waiting.changes != changes:
                    continue  # a wait began or ended meanwhile: the deadline moved
                self.guard = guard
                ctx.emit("agent.guard", {"guard": guard, "after": round(loop.time() - started, 3)})
                await stop_tree(proc, self._grace, self._marker)
                return
            except ValueError:  # a line longer than LINE_LIMIT
                ctx.emit("agent.error", {"error": f"output line over {LINE_LIMIT} bytes skipped"})
                with contextlib.suppress(asyncio.LimitOverrunError, ValueError):
                    await stdout.readuntil(b"\n")
                continue
            if raw is None:
                continue  # a wait ended: the stall guard counts again
            if not raw:
                break  # stdout closed
            seen_line = True
            self.idle_line = False
            self._line(raw, ctx)
            if not self.idle_line:
                last = loop.time()
            if self.finished and finished_at is None:
                finished_at = loop.time()
        # Output is over; the process should exit now.
        try:
            await asyncio.wait_for(proc.wait(), settings.result_grace + self._grace)
        except TimeoutError:
            self.guard = self.guard or "linger"
            ctx.emit("agent.guard", {"guard": "linger", "after": round(loop.time() - started, 3)})
        else:
            ctx.emit("agent.exited", {"exit_code": proc.returncode, "at": time.time()})
        # Whatever is left of the tree (also after a clean exit) is stopped.
        await stop_tree(proc, self._grace, self._marker)

    def _line(self, raw: bytes, ctx: Context[A]) -> None:
        text = raw.decode("utf-8", "replace").strip()
        if not text:
            return
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            ctx.emit("output", {"stream": "stdout", "line": clip(text)})
            return
        try:
            self.on_line(data, ctx)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # A shape we did not expect: keep it, opaque, and go on.
            ctx.emit("agent.event", {"raw": clip(data), "parse_error": str(exc)})

    async def _drain_stderr(self, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                raw = await stream.readline()
            except ValueError:
                continue
            if not raw:
                return
            self.stderr.append(raw.decode("utf-8", "replace").rstrip()[:2000])

    async def cancel(self) -> None:
        self._cancelled = True
        if self._proc is not None and self._proc.returncode is None:
            await stop_tree(self._proc, self._grace, self._marker)

    # -- helpers for subclasses ---------------------------------------------------

    def guard_outcome(self, ctx: Context[A], returncode: int | None) -> Outcome:
        """The run was stopped by a guard before a result: infrastructure."""
        s = ctx.settings
        what = {
            "startup": f"no output within startup_timeout ({s.startup_timeout:g}s)",
            "stall": f"no output for stall_timeout ({s.stall_timeout:g}s)",
            "linger": "the agent did not exit after its output ended",
        }
        if self.guard == "timeout":
            return Outcome(
                status="failed",
                reason="timeout",
                failure="agent",
                error=f"timed out after {ctx.job.timeout or 0:g}s",
                exit_code=returncode,
            )
        return Outcome(
            status="failed",
            reason=f"hang_{self.guard}",
            failure="infra",
            error=f"killed: {what.get(self.guard or '', self.guard)}",
            exit_code=returncode,
        )

    def stderr_text(self) -> str:
        return "\n".join(self.stderr).strip()


async def _readline(stdout: asyncio.StreamReader, timeout: float, waiting: Waiting) -> bytes | None:
    """The next line within ``timeout`` (TimeoutError after). While the job
    waits for a person: None as soon as the wait ends, so the caller sets
    its stall deadline again. (Cancelling ``readline`` loses nothing: the
    reader keeps what it buffered until a whole line is there.)"""
    if not waiting.active:
        return await asyncio.wait_for(stdout.readline(), max(0.0, timeout))
    read = asyncio.ensure_future(stdout.readline())
    change = asyncio.ensure_future(waiting.changed())
    try:
        done, _ = await asyncio.wait(
            {read, change},
            timeout=None if math.isinf(timeout) else max(0.0, timeout),
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        change.cancel()
        if not read.done():
            read.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await read
    if read in done:
        return read.result()
    if change in done:
        return None
    raise TimeoutError


def usage_of(raw: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Token counts as flat integers (what the API and the CLI show)."""
    if not raw:
        return None
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            flat[key] = value
        elif isinstance(value, dict):
            for sub, v in value.items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    flat[f"{key}.{sub}"] = v
    return flat or None
