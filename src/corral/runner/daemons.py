"""Agent daemons: long-running processes (chat bots, watchers) that corral
keeps running, declared as ``[agents.NAME]`` in corral.toml.

Each daemon is a process in a session of its own, in the runner's sandbox
(its ``cwd`` and a home of its own writable), with the allowlisted
environment of a job plus its ``env``, a marker in its environment so stop
and restart reach the whole tree (grandchildren that left it too), and a pid
record so a restarted corral reaps what a crash left behind before starting
anew. Its stdout and stderr lines go to a
rotated log file and, straight from the pipe, to the ``Listener`` (the
runner's agent host, which reports them to the control plane:
runner/agents.py).

States: ``stopped`` -> ``starting`` -> ``running``; when the process ends:
``exited`` (and ``backoff`` before a restart, per the restart policy), or
``fatal`` after ``max_quick_failures`` failures in a row that each lived
less than ``stable_after`` seconds. The listener hears every change (a
``StatusChange``) and every line (a ``LogLine``); a stdout line
``{"corral": {"messages": N}}`` also counts N messages (the agent counts what
it handled: GET /agents shows the sum over 24 h).

With ``stdin = "messages"`` its stdin is a pipe: each message sent to it
(``POST /agents/NAME/message``, carried by the host's poll) is written as one
line ``{"corral": {"message": {"id": ..., "text": ...}}}``, in order, once it
runs; messages that arrive while it is not running wait for it. The last one
written is reported (``message_seq``), so the control plane stops owing it.
Its answers are stdout lines ``{"corral": {"reply": ...}}``: log lines like
any other, which ``GET /sse/agents/NAME/messages`` picks out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from corral import logctx
from corral.config import DaemonSettings
from corral.executors.process import MARKER_VAR, PidRecords, stop_tree
from corral.executors.sandbox import Sandbox, found, job_environment, rw
from corral.models import new_id
from corral.protocol import AgentMessage, AgentState, LogLine, StatusChange

logger = logging.getLogger(__name__)

Status = Literal["stopped", "starting", "running", "backoff", "exited", "fatal"]
MAX_LINE = 16_384


class Listener(Protocol):
    """Who hears what the daemons do (the agent host)."""

    def status(self, change: StatusChange) -> None: ...

    def line(self, line: LogLine) -> None: ...

    def messages(self, name: str, n: int, at: float) -> None: ...

    def delivered(self, name: str) -> None:
        """Messages were written to the daemon's stdin (its ``message_seq`` moved)."""


class RotatingLog:
    """Append-only log file rotated by size: NAME.log, NAME.log.1, ..."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "ab")  # noqa: SIM115 - kept open for the daemon's life
        self._size = self._file.tell()

    def write(self, line: bytes) -> None:
        if self._size + len(line) > self.max_bytes and self._size > 0:
            self._rotate()
        self._file.write(line)
        self._file.flush()
        self._size += len(line)

    def _rotate(self) -> None:
        self._file.close()
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._file = open(self.path, "ab")  # noqa: SIM115
        self._size = 0

    def close(self) -> None:
        self._file.close()


@dataclass
class Daemon:
    name: str
    settings: DaemonSettings
    status: Status = "stopped"
    pid: int | None = None
    started_at: float | None = None
    restarts: int = 0
    last_exit_code: int | None = None
    message: str | None = None
    offset: int = 0  # lines written since corral started it first (kept by the server)
    applied_seq: int = 0  # operator actions applied (numbered by the server)
    quick_failures: int = 0
    task: asyncio.Task[None] | None = None
    proc: asyncio.subprocess.Process | None = None
    marker: str = field(default_factory=new_id)
    wanted: bool = False  # should be running
    inbox: list[AgentMessage] = field(default_factory=list)  # not written to stdin yet
    message_seq: int = 0  # the last message written to its stdin
    writing: asyncio.Lock = field(default_factory=asyncio.Lock)

    def state(self) -> AgentState:
        """What the host reports about it."""
        return AgentState(
            status=self.status,
            pid=self.pid,
            started_at=self.started_at,
            restarts=self.restarts,
            last_exit_code=self.last_exit_code,
            message=self.message,
            applied_seq=self.applied_seq,
            message_seq=self.message_seq,
        )


class Supervisor:
    def __init__(
        self,
        data_dir: Path,
        listener: Listener,
        sandbox: Sandbox | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.logs = data_dir / "agents" / "logs"
        self.homes = data_dir / "agents" / "home"
        self.pids = PidRecords(data_dir / "agents" / "pids")
        self.listener = listener
        self.sandbox = sandbox or Sandbox()
        self.daemons: dict[str, Daemon] = {}

    async def reap(self) -> list[int]:
        """Kill what a previous supervisor here left running (a crash)."""
        return await asyncio.to_thread(self.pids.reap)

    async def close(self) -> None:
        await asyncio.gather(*(self.stop_agent(n) for n in self.daemons), return_exceptions=True)

    # -- operations -------------------------------------------------------------

    def add(self, name: str, settings: DaemonSettings, *, offset: int = 0, seq: int = 0) -> Daemon:
        d = self.daemons[name] = Daemon(name, settings, offset=offset, applied_seq=seq)
        return d

    async def remove(self, name: str) -> None:
        if name in self.daemons:
            await self.stop_agent(name)
            self.daemons.pop(name, None)

    def get(self, name: str) -> Daemon:
        return self.daemons[name]

    async def start_agent(self, name: str) -> Daemon:
        d = self.get(name)
        d.wanted = True
        if d.task is None or d.task.done():
            d.quick_failures = 0
            d.message = None
            self._set(d, "starting")
            d.task = asyncio.create_task(self._keep(d), name=f"corral-agent-{name}")
        return d

    async def stop_agent(self, name: str) -> Daemon:
        d = self.get(name)
        d.wanted = False
        task = d.task
        if task is not None and not task.done():
            if d.proc is not None and d.proc.returncode is None:
                await self._stop_process(d)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if d.status != "stopped":
            self._set(d, "stopped")
        return d

    async def restart_agent(self, name: str) -> Daemon:
        await self.stop_agent(name)
        return await self.start_agent(name)

    async def deliver(self, name: str, messages: list[AgentMessage]) -> None:
        """Queue the messages not seen yet for the daemon's stdin; write what it can now."""
        d = self.get(name)
        last = max([d.message_seq, *(m.seq for m in d.inbox)])
        d.inbox += [m for m in sorted(messages, key=lambda m: m.seq) if m.seq > last]
        await self._flush(d)

    async def _flush(self, d: Daemon) -> None:
        async with d.writing:
            proc = d.proc
            if proc is None or proc.stdin is None or proc.returncode is not None:
                return  # written once it runs
            wrote = False
            while d.inbox:
                m = d.inbox[0]
                line = {"corral": {"message": {"id": m.id, "text": m.text}}}
                try:
                    proc.stdin.write(json.dumps(line).encode() + b"\n")
                    await proc.stdin.drain()
                except (BrokenPipeError, ConnectionResetError):
                    break  # it is ending: the next process gets it
                d.inbox.pop(0)
                d.message_seq, wrote = m.seq, True
            if wrote:
                self.listener.delivered(d.name)

    # -- internals ----------------------------------------------------------------

    def _set(self, d: Daemon, status: Status, exit_code: int | None = None) -> None:
        old, d.status = d.status, status
        self.listener.status(
            StatusChange(
                agent_id=d.name,
                old_status=old,
                new_status=status,
                pid=d.pid,
                exit_code=exit_code,
                at=time.time(),
            )
        )

    async def _keep(self, d: Daemon) -> None:
        """Run the daemon, restarting it as its policy says, until stopped."""
        logctx.bind(agent=d.name)  # this task's log lines name the agent
        s = d.settings
        delay = s.restart_delay
        log = RotatingLog(self.logs / f"{d.name}.log", s.log_max_bytes, s.log_backups)
        try:
            while d.wanted:
                if d.status != "starting":
                    self._set(d, "starting")
                attempt = time.time()
                try:
                    code = await self._run_once(d, log)
                except Exception as exc:  # a start that broke: a failed run, not a silent end
                    # Without this the task ended with the exception kept
                    # unread, the daemon left "starting" for good.
                    logger.exception("agent %s: its run failed", d.name)
                    d.message = f"could not run: {type(exc).__name__}: {exc}"
                    if d.proc is not None:  # started before it broke: not a second copy
                        await self._stop_process(d)
                        self.pids.remove(d.name)
                        d.proc = None
                    code = None
                # A run that never started (not found, broke) lived 0 s: not
                # the previous process's start, which would count it stable.
                began = d.started_at or 0.0
                lived = time.time() - began if began >= attempt else 0.0
                d.last_exit_code = code
                d.pid = None
                failed = code != 0
                if lived >= s.stable_after:
                    delay, d.quick_failures = s.restart_delay, 0
                elif failed:
                    d.quick_failures += 1
                self._set(d, "exited", exit_code=code)
                if not d.wanted:
                    return
                if s.restart == "never" or (s.restart == "on-failure" and not failed):
                    return
                if d.quick_failures >= s.max_quick_failures:
                    d.message = (
                        f"gave up after {d.quick_failures} quick failures (last exit code {code})"
                    )
                    self._set(d, "fatal", exit_code=code)
                    d.wanted = False
                    return
                self._set(d, "backoff", exit_code=code)
                await asyncio.sleep(delay)
                delay = min(delay * 2, s.restart_delay_max)
                d.restarts += 1
        finally:
            log.close()

    async def _run_once(self, d: Daemon, log: RotatingLog) -> int | None:
        s = d.settings
        home = self.homes / d.name
        home.mkdir(parents=True, exist_ok=True)
        cwd = s.cwd or home
        env = job_environment(
            os.environ, home=home, extra={**s.env, MARKER_VAR: d.marker, "CORRAL_AGENT": d.name}
        )
        if not found(s.command[0], env, cwd):
            d.message = f"cannot start {s.command[0]!r}: not found"
            self._line(d, log, "stderr", f"corral: {d.message}")
            return 127
        argv = self.sandbox.confine(rw(cwd, home), network=s.network)(
            s.command, cwd=cwd, programs=s.command
        )
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=env,
                stdin=(
                    asyncio.subprocess.PIPE if s.stdin == "messages" else asyncio.subprocess.DEVNULL
                ),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            d.message = f"cannot start {s.command[0]!r}: {exc.strerror or exc}"
            self._line(d, log, "stderr", f"corral: {d.message}")
            return 127
        d.proc, d.pid, d.started_at, d.message = proc, proc.pid, time.time(), None
        self.pids.add(d.name, proc.pid, d.marker)
        self._set(d, "running")
        await self._flush(d)
        assert proc.stdout is not None and proc.stderr is not None
        try:
            await asyncio.gather(
                self._pump(d, log, proc.stdout, "stdout"),
                self._pump(d, log, proc.stderr, "stderr"),
            )
            return await proc.wait()
        except asyncio.CancelledError:
            await self._stop_process(d)
            raise
        finally:
            self.pids.remove(d.name)
            d.proc = None

    async def _stop_process(self, d: Daemon) -> None:
        proc = d.proc
        if proc is None or proc.returncode is not None:
            return
        sig = signal.Signals[d.settings.stop_signal]
        if sig is not signal.SIGTERM:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), d.settings.stop_timeout)
        await stop_tree(proc, d.settings.stop_timeout, d.marker)

    async def _pump(
        self, d: Daemon, log: RotatingLog, stream: asyncio.StreamReader, name: str
    ) -> None:
        pending = b""
        while True:
            chunk = await stream.read(65_536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                self._line(d, log, name, raw[:MAX_LINE].decode("utf-8", "replace").rstrip("\r"))
            if len(pending) > MAX_LINE:
                self._line(d, log, name, pending[:MAX_LINE].decode("utf-8", "replace"))
                pending = b""
        if pending:
            self._line(d, log, name, pending.decode("utf-8", "replace"))

    def _line(self, d: Daemon, log: RotatingLog, stream: str, text: str) -> None:
        d.offset += 1
        at = time.time()
        log.write(f"{stream} {text}\n".encode())
        self.listener.line(LogLine(agent=d.name, offset=d.offset, at=at, stream=stream, line=text))
        if stream == "stdout" and text.startswith('{"corral"'):
            n = _messages(text)
            if n:
                self.listener.messages(d.name, n, at)


def _messages(text: str) -> int:
    """N of a ``{"corral": {"messages": N}}`` line (0 for anything else)."""
    try:
        data = json.loads(text)
        n = data["corral"]["messages"]
    except (ValueError, TypeError, KeyError):
        return 0
    return n if isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 1_000_000 else 0
