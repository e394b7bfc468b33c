"""A runner: registers, long-polls for leases, runs executors, reports back.

The embedded runner of ``corral serve`` and ``corral runner`` on another host
are the same class speaking the same protocol (corral/protocol/) through a
``Link`` (runner/link.py): over HTTP, or in-process for the embedded runner
(api/local.py: the same handlers and store code without the loopback)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path

import httpx

from corral import logctx, redact, tracing
from corral.errors import ClientError, ConfigError, Unauthorized
from corral.executors import base
from corral.executors.process import PidRecords, Survivors
from corral.executors.sandbox import Sandbox, warn_unsandboxed
from corral.executors.settings import AgentSettings, LocalSettings, ProviderSettings
from corral.gateway.settings import McpServerSettings
from corral.models import Outcome, new_id
from corral.protocol import JournalEntry, LeasedJob, LeaseRequest, RunnerRegister
from corral.protocol.bodies import JOURNAL_ENTRIES, JOURNAL_EVENTS
from corral.protocol.handles import own_handle, session_handle
from corral.runner import gateway as gateways
from corral.runner.agents import AgentHost
from corral.runner.channel import WorkerChannel
from corral.runner.journal import HOLD_ENV, Journal, Pending
from corral.runner.link import HttpLink, Link, LinkError, Refused, Unreachable
from corral.runner.workspace import Workspace, WorkspaceError, Workspaces

log = logging.getLogger(__name__)


# On shutdown, how long stopped jobs may take to report their outcome.
STOP_REPORT_SECONDS = 3.0
# How often orphans that ended are waited for (executors/process.py Survivors).
REAP_SECONDS = 1.0
# How long a connection to the server may take (SYN retransmits at 1 and 3 s:
# after a network cut the next attempt starts afresh instead of waiting for the
# kernel's 7 and 15 s ones).
CONNECT_SECONDS = 5.0
# The longest pause between attempts to reach a server that is away.
RETRY_SECONDS = 2.0
# How much of its journal a runner presents in one registration (the server's
# max_body_bytes is 1 MiB by default); what does not fit waits for the next.
JOURNAL_BYTES = 512 * 1024


def _watch_children_with_pidfd() -> None:
    """Python 3.11 waits for each child process in a thread of its own; a pidfd
    watcher (the default from 3.12) cuts the spawn tail (p99 16 -> 6 ms here)."""
    if sys.version_info < (3, 12) and hasattr(os, "pidfd_open"):
        policy = asyncio.get_event_loop_policy()
        if not isinstance(policy.get_child_watcher(), asyncio.PidfdChildWatcher):
            watcher = asyncio.PidfdChildWatcher()
            policy.set_child_watcher(watcher)
            watcher.attach_loop(asyncio.get_running_loop())


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Runner:
    def __init__(
        self,
        server: str,
        token: str,
        *,
        workdir: Path,
        name: str | None = None,
        slots: int = 4,
        providers: Mapping[str, ProviderSettings] | None = None,
        lease_wait: float = 20.0,
        kill_grace: float = 5.0,
        labels: list[str] | None = None,
        agent_aliases: list[str] | None = None,
        sandbox: Sandbox | None = None,
        mcp_servers: Mapping[str, McpServerSettings] | None = None,
        in_process: Callable[[HttpLink], AbstractAsyncContextManager[Link]] | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.name = name or default_name()
        self.slots = slots
        self.providers = dict(providers or {"shell": base.load("shell").settings(kind="shell")})
        self.lease_wait = lease_wait
        self.kill_grace = kill_grace
        self.labels = labels or []
        self.workdir = workdir
        self.pids = PidRecords(workdir / "runner" / "pids")
        # What a finished job left running (executors/process.py).
        self.survivors = Survivors()
        self._own: dict[str, int] = {}  # job id -> its running process (not a survivor)
        # Outcomes recorded before they are reported (runner/journal.py).
        self.journal = Journal(workdir / "runner" / "journal.sqlite")
        self.workspaces = Workspaces(workdir)
        # Local jobs and agent daemons run in it (executors/sandbox.py).
        self.sandbox = sandbox or Sandbox()
        # Upstream MCP servers jobs may reach through their gateways ([mcp.servers]).
        self.mcp_servers = dict(mcp_servers or {})
        # Agent daemons the server assigns to this runner (by its name, or by
        # an alias: the embedded runner hosts `runner = "embedded"` agents).
        self.agents = AgentHost(
            workdir, aliases=agent_aliases, poll_wait=lease_wait, sandbox=self.sandbox
        )
        # The embedded runner's transport (api/local.py), given the HTTP one
        # for the calls it does not carry itself; None: HTTP only.
        self.in_process = in_process
        self.runner_id: str | None = None
        self.heartbeat_interval = 5.0
        # The wait of a lease request: lease_wait, or less if the server holds
        # long-polls for less (``poll_wait``: it answers by then).
        self.poll_wait = lease_wait
        # Confirm each job before it starts (``lease_confirm``): over HTTP,
        # with a server that knows it (an answer in-process cannot be lost).
        self.confirm = False
        self._http: HttpLink | None = None
        self.max_artifact_bytes = 10_485_760
        self._jobs: dict[str, asyncio.Task[None]] = {}
        self._executors: dict[str, base.Executor] = {}
        # Cancellations in flight (the loop keeps only weak references to tasks).
        self._cancels: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._stopping = False  # set on the way out: stopped jobs were not cancelled by anyone
        for name, p in self.providers.items():
            model = base.load(p.kind).settings  # fail at start, not at the first job
            if not isinstance(p, model):
                raise ConfigError(
                    f"provider {name!r} of kind {p.kind!r}: its settings must be a {model.__name__}"
                )

    async def run(self) -> None:
        """Run until cancelled; running jobs are stopped on the way out."""
        _watch_children_with_pidfd()
        warning = warn_unsandboxed(self.sandbox)
        if warning is not None:
            log.warning("runner %s: %s", self.name, warning)
        for pid in self.pids.reap():
            log.warning("killed process tree %d left behind by a previous runner", pid)
        if not self.survivors.become_subreaper():
            log.info("runner %s: no child subreaper: each job ends with a process scan", self.name)
        # Long-polls and heartbeats have timeouts of their own (link.py).
        http = HttpLink(
            self.server,
            self.token,
            timeout=httpx.Timeout(30.0, connect=CONNECT_SECONDS, read=self.lease_wait + 30.0),
            max_connections=self.slots * 3 + 4,
        )
        self._http = http
        transport: AbstractAsyncContextManager[Link] = (
            self.in_process(http) if self.in_process is not None else http
        )
        async with self.journal, transport as link:
            hosting: asyncio.Task[None] | None = None
            reaping: asyncio.Task[None] | None = None
            try:
                await self._register(link)
                hosting = asyncio.create_task(
                    self.agents.run(link, lambda: self.runner_id), name="corral-agent-host"
                )
                reaping = asyncio.create_task(self._reap_loop(), name="corral-reaper")
                await self._lease_loop(link)
            finally:
                if reaping is not None:
                    reaping.cancel()
                # Agent daemons and jobs stop side by side.
                if hosting is not None:
                    hosting.cancel()
                self._stopping = True
                tasks = list(self._jobs.values())
                for executor in list(self._executors.values()):
                    with contextlib.suppress(Exception):
                        await executor.cancel()
                # Give the stopped jobs a moment to report how they ended.
                if tasks:
                    await asyncio.wait(tasks, timeout=STOP_REPORT_SECONDS)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if hosting is not None:
                    (ended,) = await asyncio.gather(hosting, return_exceptions=True)
                    if isinstance(ended, Exception):
                        log.error("agent host failed: %r", ended)

    async def _reap_loop(self) -> None:
        """Wait for re-parented orphans that ended (of agent daemons, of jobs
        stopped by a cancel), also while no job ends (executors/process.py)."""
        if not self.survivors.subreaper:
            return
        while True:
            await asyncio.sleep(REAP_SECONDS)
            own = frozenset(self._own.values())
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.survivors.reap, frozenset(), own)

    async def _register(self, link: Link) -> None:
        """Register, presenting the outcomes journalled but not acknowledged.
        Those of jobs this runner is still reporting too: registering again
        (the server took this runner for stopped or lost) ends the jobs its
        previous registration held, and a job whose process ended would run
        again; presented, its outcome is recorded first (and the report that
        follows changes nothing)."""
        pending = await self.journal.pending()
        body = RunnerRegister(
            name=self.name,
            hostname=socket.gethostname(),
            slots=self.slots,
            providers=sorted(self.providers),
            labels=self.labels,
            sandbox=self.sandbox.kind,
            journal=_fit(pending),
        )
        delay = 0.02
        while True:
            try:
                registered = await link.register(body)
            except Unreachable as exc:
                log.debug("register: %s; retrying", exc)
            except Refused as exc:
                if exc.status in (401, 403):
                    raise Unauthorized(f"the server refused this runner's key: {exc}") from exc
                if exc.status in (413, 422) and body.journal:
                    # Never let the journal keep the runner from starting.
                    log.error("the server refused this runner's journal (%s): dropping it", exc)
                    for entry in body.journal:
                        self.journal.forget(entry.id)
                    body = body.model_copy(update={"journal": []})
                    continue
                if exc.status < 500:
                    raise ClientError(f"registration refused: {exc}") from exc
            else:
                self.runner_id = registered.runner_id
                self.heartbeat_interval = registered.heartbeat_interval
                self.max_artifact_bytes = registered.max_artifact_bytes
                if self._http is not None:
                    self._http.heartbeat_interval = registered.heartbeat_interval
                # A server before poll_wait honoured any wait.
                self.poll_wait = min(self.lease_wait, registered.poll_wait or self.lease_wait)
                self.agents.poll_wait = self.poll_wait
                self.confirm = self.in_process is None and registered.lease_confirm is not None
                log.info("runner %s registered as %s", self.name, self.runner_id)
                for answer in registered.journal:
                    log.log(
                        logging.INFO if answer.result != "dropped" else logging.WARNING,
                        "journalled outcome of job %s: %s (%s)",
                        answer.job_id,
                        answer.result,
                        answer.detail or answer.state,
                        extra={"job_id": answer.job_id},
                    )
                # Answered, or not understood (a server older than the journal).
                for entry in body.journal:
                    self.journal.forget(entry.id)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_SECONDS)

    async def _lease_loop(self, link: Link) -> None:
        delay = 0.05
        while True:
            assert self.runner_id is not None
            free = self.slots - len(self._jobs)
            self._slot_freed.clear()
            body = LeaseRequest(max_jobs=free, wait=self.poll_wait, confirm=self.confirm)
            request = asyncio.create_task(link.lease(self.runner_id, body))
            if free == 0:
                # Only listening for cancels: safe to abandon when a slot frees.
                freed = asyncio.create_task(self._slot_freed.wait())
                await asyncio.wait({request, freed}, return_when=asyncio.FIRST_COMPLETED)
                freed.cancel()
                if not request.done():
                    request.cancel()
                    with contextlib.suppress(asyncio.CancelledError, LinkError):
                        await request
                    continue
            try:
                leased = await request
            except Unreachable as exc:
                log.warning("lease failed (%s); retrying", exc)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, RETRY_SECONDS)
                continue
            except Refused as exc:
                delay = 0.05
                if exc.status in (403, 404):
                    log.warning("lease refused (%s); registering again", exc)
                    await self._register(link)
                    continue
                if exc.status == 401:
                    raise Unauthorized(f"the server refused this runner's key: {exc}") from exc
                log.warning("lease failed (%s)", exc)
                await asyncio.sleep(1.0)
                continue
            delay = 0.05
            for job_id in leased.cancel:
                executor = self._executors.get(job_id)
                if executor is not None:
                    log.info("cancelling job %s", job_id, extra={"job_id": job_id})
                    self._cancel(executor)
            for item in leased.jobs:
                self._jobs[item.job.id] = asyncio.create_task(
                    self._execute(link, item), name=f"corral-job-{item.job.id}"
                )

    async def _execute(self, link: Link, item: LeasedJob) -> None:
        # The run span (corral.tracing): the lease's child, the job's worker calls' parent.
        with tracing.span(
            "run",
            parent=item.traceparent or item.job.traceparent,
            job_id=item.job.id,
            provider=item.job.provider,
            attempt=item.job.attempt,
            runner=self.name,
        ) as traceparent:
            await self._execute_job(link, item, traceparent)

    async def _execute_job(self, link: Link, item: LeasedJob, traceparent: str | None) -> None:
        job, session = item.job, item.session
        log_extra = {"job_id": job.id, "session_id": session.id}
        # This task's log lines (and its children's: executor, gateway) name the job.
        logctx.bind(job_id=job.id, session_id=session.id, runner=self.name)
        began = time.monotonic()
        try:
            settings = self.providers.get(job.provider)
            if settings is None:
                raise ClientError(f"this runner has no provider {job.provider!r}")
            executor = base.load(settings.kind)()
            self._executors[job.id] = executor

            def stale(reason: str) -> None:
                log.warning("job %s: stopping, server says %s", job.id, reason, extra=log_extra)
                self._cancel(executor)

            worker = link.worker(item.token, traceparent)
            channel = WorkerChannel(worker, job_id=job.id, on_stale=stale)
            if self.confirm:
                # The lease holds for lease_confirm only: an answer that spent
                # longer on the way (a network cut) was leased again meanwhile,
                # and this heartbeat is refused before the job runs twice.
                await channel.heartbeat(self.heartbeat_interval)
                if channel.stale is not None:
                    await channel.close()
                    return
            # Heartbeats from the start: making a worktree (a first clone) and
            # collecting a large diff may take longer than a lease.
            beats = asyncio.create_task(self._heartbeats(channel))
            try:
                outcome, entry = await self._run_job(item, settings, executor, channel)
            finally:
                beats.cancel()
            tracing.annotate(outcome=outcome.status, reason=outcome.reason)
            await channel.complete(outcome)
            if entry is not None and channel.answered:
                self.journal.forget(entry.id)
            await channel.close()
            log.info(
                "job %s %s in %.2fs%s",
                job.id,
                outcome.status,
                time.monotonic() - began,
                f" ({outcome.reason})" if outcome.reason else "",
            )
        except Exception:
            log.exception("job %s could not be run", job.id, extra=log_extra)
        finally:
            # Not a newer lease of the same job (this one was refused as stale).
            if self._jobs.get(job.id) is asyncio.current_task():
                self._executors.pop(job.id, None)
                self._jobs.pop(job.id, None)
            self._slot_freed.set()

    def _cancel(self, executor: base.Executor) -> None:
        task = asyncio.create_task(executor.cancel())
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def _run_job(
        self,
        item: LeasedJob,
        settings: ProviderSettings,
        executor: base.Executor,
        channel: WorkerChannel,
    ) -> tuple[Outcome, JournalEntry | None]:
        """Prepare the workspace, run the executor, journal the outcome, record
        the artifacts. Returns the outcome and its journal entry."""
        job, session = item.job, item.session
        log_extra = {"job_id": job.id, "session_id": session.id}
        try:
            # A plain folder and its record: a few hundred µs of file system
            # calls, done here. In a thread, each call's return waits for the
            # GIL while the event loop is busy (up to the 5 ms switch
            # interval): it was ~2.3 ms of every job's start (issue #18).
            ws = self.workspaces.prepare_folder(job)
            if ws is not None:
                mounts = self.workspaces.mounts(ws) if self.sandbox.kind == "bwrap" else []
            else:  # a git worktree: git runs (seconds for a first clone)
                ws = await asyncio.to_thread(self.workspaces.prepare, job)
                mounts = []
                if self.sandbox.kind == "bwrap":
                    mounts = await asyncio.to_thread(self.workspaces.mounts, ws)
        except (WorkspaceError, OSError) as exc:
            failed = Outcome(status="failed", reason="workspace", failure="input", error=str(exc))
            return failed, None
        marker = new_id()

        def started(pid: int | None) -> None:
            # The start's time first: the record below is ~0.2 ms of file
            # system calls after the process began (its report goes out later).
            channel.started()
            if pid is not None:
                self.pids.add(job.id, pid, marker)
                self._own[job.id] = pid

        gateway = None
        if gateways.wanted(settings, channel.emit, sandboxed=self.sandbox.kind == "bwrap"):
            assert isinstance(settings, AgentSettings)
            try:
                gateway = await gateways.start(
                    job,
                    settings,
                    link=channel.link,
                    emit=channel.emit,
                    servers=self.mcp_servers,
                    run_marker=marker,
                    log_dir=self.workdir / "runner" / "mcp",
                    hold=channel.waiting.hold,
                    ask=channel.ask,
                )
            except Exception as exc:
                log.exception("job %s: the MCP gateway did not start", job.id, extra=log_extra)
                await asyncio.to_thread(self.survivors.kill, marker, frozenset(self._own.values()))
                failed = Outcome(
                    status="failed",
                    reason="gateway",
                    failure="infra",
                    error=f"the job's MCP gateway did not start: {type(exc).__name__}: {exc}",
                )
                return failed, None
        ctx = base.Context(
            job=job,
            session=session,
            workdir=ws.path,
            emit=channel.emit,
            started=started,
            kill_grace=self.kill_grace,
            provider=job.provider,
            settings=settings,
            handle=own_handle(item.resume_handle, job.provider),
            save_handle=lambda handle: channel.save_handle(session_handle(job.provider, handle)),
            state_dir=self.workdir / "providers" / job.provider,
            run_marker=marker,
            confine=self.sandbox.confine(
                mounts, network=settings.network if isinstance(settings, LocalSettings) else True
            ),
            waiting=channel.waiting,
            mcp=gateway.endpoint if gateway is not None else None,
            traceparent=channel.link.traceparent,
        )
        entry: JournalEntry | None = None
        try:
            outcome = await executor.run(ctx)
            if self._stopping and outcome.status == "failed":
                outcome = outcome.model_copy(
                    update={
                        "reason": "runner_stopped",
                        "failure": "infra",
                        "error": "the runner stopped while the job ran",
                    }
                )
            # Journalled at once, before the clean-up below (it may scan every
            # process): the window in which a kill loses the outcome of a job
            # whose process ended is as short as it can be.
            entry = await self._record(item, channel, outcome)
        except Exception as exc:  # an executor bug must not take the runner down
            log.exception("executor %s failed", settings.kind, extra=log_extra)
            outcome = Outcome(
                status="failed",
                reason="executor_error",
                failure="infra",
                error=f"{type(exc).__name__}: {exc}",
            )
        finally:
            if gateway is not None:
                await gateway.close()  # stdio MCP servers stop with their trees
            # Whatever the agent left running (daemonised tool processes) dies with the run.
            self._own.pop(job.id, None)
            own = frozenset(self._own.values())
            if not self.survivors.settled(marker, own):
                await asyncio.to_thread(self.survivors.kill, marker, own)
            self.pids.remove(job.id)
        if ws.branch is not None and not self._stopping:
            stored = await self._artifacts(ws, channel, log_extra)
            if entry is not None and stored:
                entry = await self._record(item, channel, outcome, entry, stored)
        return outcome, entry

    async def _record(
        self,
        item: LeasedJob,
        channel: WorkerChannel,
        outcome: Outcome,
        entry: JournalEntry | None = None,
        artifacts: list[str] | None = None,
    ) -> JournalEntry | None:
        """Journal how the job ended as it is reported (again with the
        artifacts stored since, replacing ``entry``): the write starts here and
        the report does not wait for it (runner/journal.py). Not an
        infrastructure failure (the job runs again anyway), nor a job the
        server fenced off."""
        if channel.stale is not None or outcome.failure == "infra":
            return entry
        events = channel.unacknowledged()
        new = JournalEntry.model_construct(
            id=entry.id if entry is not None else new_id(),
            token=channel.token,
            started_at=channel.started_at,
            finished_at=entry.finished_at if entry is not None else datetime.now(UTC),
            outcome=redact.outcome(outcome),
            events=events[:JOURNAL_EVENTS],
            events_omitted=max(0, len(events) - JOURNAL_EVENTS),
            artifacts=artifacts or [],
        )
        # A safeguard: the report goes on whether or not it is written (a
        # failed commit is logged by the journal).
        try:
            durable = self.journal.put(item.job.id, new)
        except Exception:
            log.exception("job %s: could not journal its outcome", item.job.id)
            return entry
        durable.add_done_callback(_retrieved)
        hold = os.environ.get(HOLD_ENV)
        if hold:  # a test's kill point (runner/journal.py): once it is on disk
            with contextlib.suppress(Exception):
                await durable
            await asyncio.to_thread(Path(hold).write_text, item.job.id)
            await asyncio.Event().wait()
        return new

    async def _artifacts(
        self, ws: Workspace, channel: WorkerChannel, log_extra: dict[str, str]
    ) -> list[str]:
        """Record what the job changed in its worktree: the diff against the
        base as ``diff.patch``, and branch, commit and files as ``changes.json``."""
        try:
            changes = await asyncio.to_thread(self.workspaces.changes, ws)
        except (WorkspaceError, OSError, subprocess.SubprocessError) as exc:
            log.warning("could not collect the changes of %s: %s", ws.path, exc, extra=log_extra)
            channel.emit("workspace.error", {"error": str(exc)})
            return []
        if changes is None:
            return []
        summary = changes.summary()
        patch = changes.patch
        if len(patch) > self.max_artifact_bytes:
            # Too big for the server: say so; the branch in the worktree keeps it all.
            note = (
                f"the diff has {len(patch)} bytes, over the server's max_artifact_bytes "
                f"({self.max_artifact_bytes}); see branch {changes.branch}"
            )
            summary["patch_omitted"] = note
            patch = note.encode() + b"\n"
        channel.emit("workspace.changes", summary)
        stored = []
        if await channel.put_artifact("diff.patch", "text/x-diff", patch):
            stored.append("diff.patch")
        if await channel.put_artifact(
            "changes.json", "application/json", json.dumps(summary, indent=2).encode()
        ):
            stored.append("changes.json")
        return stored

    async def _heartbeats(self, channel: WorkerChannel) -> None:
        while channel.stale is None:
            await asyncio.sleep(self.heartbeat_interval)
            await channel.heartbeat(self.heartbeat_interval)


def _retrieved(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # logged where it happened


def _fit(pending: list[Pending]) -> list[JournalEntry]:
    """The oldest entries that fit in one registration (``JOURNAL_BYTES``); an
    entry too large alone goes with as many of its events as fit."""
    fitted: list[JournalEntry] = []
    room = JOURNAL_BYTES
    for p in pending[:JOURNAL_ENTRIES]:
        entry = p.entry
        size = len(entry.model_dump_json())
        if size > room and not fitted:
            while size > room and entry.events:
                keep = len(entry.events) // 2
                entry = entry.model_copy(
                    update={
                        "events": entry.events[:keep],
                        "events_omitted": entry.events_omitted + len(entry.events) - keep,
                    }
                )
                size = len(entry.model_dump_json())
        if size > room:
            break
        fitted.append(entry)
        room -= size
    return fitted
