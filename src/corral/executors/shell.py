"""shell: run the job's ``command`` (or its prompt) with ``/bin/sh -c``.

The process starts in a new session (its own process group), in the runner's
sandbox, with the job's environment (an allowlist of the runner's, a HOME of
the provider's own, the provider's ``env``); stdout and stderr lines become
``output`` events as they are written. Exit 0 is done with the tail of the
output as the result; anything else fails with the exit code. A timeout or a
cancel stops the whole tree: SIGTERM, then SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import deque
from typing import ClassVar

from corral.executors.base import Context
from corral.executors.process import Child, spawn, stop_tree
from corral.executors.settings import LocalSettings, ProviderSettings
from corral.models import Outcome

MAX_LINE = 16_384  # longer lines are split into several events
TAIL_LINES = 50
TAIL_CHARS = 4_000
# After the shell exits, background children may still hold its pipes open.
DRAIN_SECONDS = 0.5


class ShellSettings(LocalSettings):
    """Runs a job's `command` (or its prompt, when the job names this provider)
    with `/bin/sh -c` in its workspace. Built in as the provider `shell`."""


class ShellExecutor:
    kind: ClassVar[str] = "shell"
    settings: ClassVar[type[ProviderSettings]] = ShellSettings
    local: ClassVar[bool] = True

    def __init__(self) -> None:
        self._proc: Child | None = None
        self._grace = 5.0
        self._stopping: str | None = None  # "cancelled" or "timeout"
        self._marker: str | None = None

    async def run(self, ctx: Context[ShellSettings]) -> Outcome:
        script = ctx.job.command or ctx.job.prompt or ""
        if not script.strip():
            return Outcome(
                status="failed",
                reason="no_command",
                failure="input",
                error=f"provider {ctx.provider!r} runs shell commands; this job has none "
                "(a chat job needs a chat provider: preferred_ai)",
            )
        self._grace = ctx.kill_grace
        home = (ctx.state_dir or ctx.workdir / ".corral") / "home"
        home.mkdir(parents=True, exist_ok=True)
        env = ctx.environment(home)
        self._marker = ctx.run_marker
        argv = ctx.confine(["/bin/sh", "-c", script], cwd=ctx.workdir, writable=[home])
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        lines = {name: _Lines(name, ctx, tail) for name in ("stdout", "stderr")}
        # Its output becomes events from the loop's read callbacks, no task per pipe.
        proc = spawn(argv, cwd=ctx.workdir, env=env, output=lambda n, b: lines[n].feed(b))
        self._proc = proc
        ctx.started(proc.pid)
        if self._stopping == "cancelled":  # cancelled while the process was being started
            await stop_tree(proc, self._grace, self._marker)
        try:
            await asyncio.wait_for(proc.wait(), ctx.job.timeout)
        except TimeoutError:
            self._stopping = "timeout"
            await stop_tree(proc, self._grace, self._marker)
        except asyncio.CancelledError:
            await stop_tree(proc, self._grace, self._marker)
            raise
        finally:
            try:
                await asyncio.wait_for(proc.drained(), DRAIN_SECONDS)
            except (TimeoutError, asyncio.CancelledError):
                # Background children kept the pipes open: the job is over, stop them.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.close()
        return self._outcome(proc.returncode, ctx, tail)

    def _outcome(self, rc: int | None, ctx: Context[ShellSettings], tail: deque[str]) -> Outcome:
        text = "\n".join(tail)[-TAIL_CHARS:]
        if rc == 0 and self._stopping is None:
            return Outcome(status="done", result=text, exit_code=0)
        if self._stopping == "timeout":
            reason, error = "timeout", f"timed out after {ctx.job.timeout:g}s"
        elif self._stopping == "cancelled":
            reason, error = "cancelled", "cancelled"
        elif rc is not None and rc < 0:
            reason, error = "signal", f"killed by {signal.Signals(-rc).name}"
        else:
            reason, error = "exit_code", f"exit code {rc}"
        return Outcome(
            status="failed", reason=reason, error=error, exit_code=rc, result=text or None
        )

    async def cancel(self) -> None:
        self._stopping = "cancelled"
        if self._proc is not None and self._proc.returncode is None:
            await stop_tree(self._proc, self._grace, self._marker)


class _Lines:
    """One pipe's output as ``output`` events, line by line (a line longer
    than MAX_LINE in pieces); ``feed(b"")`` at the pipe's end."""

    def __init__(self, name: str, ctx: Context[ShellSettings], tail: deque[str]) -> None:
        self.name, self.ctx, self.tail = name, ctx, tail
        self.pending = b""

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            if self.pending:
                _line(self.pending, self.name, self.ctx, self.tail)
                self.pending = b""
            return
        *lines, pending = (self.pending + chunk).split(b"\n")
        while len(pending) > MAX_LINE:
            lines.append(pending[:MAX_LINE])
            pending = pending[MAX_LINE:]
        self.pending = pending
        for raw in lines:
            _line(raw, self.name, self.ctx, self.tail)


def _line(raw: bytes, name: str, ctx: Context[ShellSettings], tail: deque[str]) -> None:
    for start in range(0, max(len(raw), 1), MAX_LINE):
        text = raw[start : start + MAX_LINE].decode("utf-8", "replace").rstrip("\r")
        tail.append(text)
        ctx.emit("output", {"stream": name, "line": text})
