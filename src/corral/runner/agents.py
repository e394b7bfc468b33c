"""A runner's agent host: runs the agent daemons the control plane assigns
to this runner, and reports on them.

Two loops over the runner protocol (runner key, through the runner's link):

- ``poll_agents`` (``POST /runners/{id}/agents``) long-polls for the desired
  set (configuration, wanted, the numbered operator actions); each change is
  applied by the supervisor — new agents start if wanted, removed ones stop,
  changed ones restart, a new action (start, stop, restart) is carried out once.
- ``report_agents`` (``POST /runners/{id}/agents/report``) sends status
  changes, states, log lines and message counts in batches, one request in
  flight, as they happen.

While the control plane is away (a restart, a deploy) the daemons keep
running: reports wait in a bounded buffer (the oldest lines are dropped past
``MAX_PENDING_LINES``; the log file here has them all) and the desired set
stays what it was. Only this runner stopping stops its daemons."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

from pydantic import ValidationError

from corral.config import DaemonSettings
from corral.executors.sandbox import Sandbox
from corral.protocol import AgentPoll, AgentReport, AgentState, DesiredAgent, LogLine, StatusChange
from corral.runner.daemons import Supervisor
from corral.runner.link import BadAnswer, Link, Refused, Unreachable

log = logging.getLogger(__name__)

MAX_PENDING_LINES = 20_000
BATCH_LINES = 2_000
FINAL_REPORT = 3.0  # seconds a stopping runner tries to report its stopped daemons
# A poll (or applying what it brought) that failed in a way it does not retry
# is tried again after this many seconds.
POLL_ERROR_PAUSE = 5.0

RunnerId = Callable[[], str | None]


class AgentHost:
    def __init__(
        self,
        workdir: Path,
        *,
        aliases: list[str] | None = None,
        poll_wait: float = 20.0,
        sandbox: Sandbox | None = None,
    ) -> None:
        self.aliases = aliases or []
        self.poll_wait = poll_wait
        self.sup = Supervisor(workdir, self, sandbox)
        self._changes: list[StatusChange] = []
        self._lines: list[LogLine] = []
        self._messages: dict[str, dict[int, int]] = {}
        self._dirty: set[str] = set()
        self._dropped = 0
        self._wake = asyncio.Event()
        self._locks: dict[str, asyncio.Lock] = {}
        self._fresh: set[str] = set()  # added, not started yet
        self._work: set[asyncio.Task[None]] = set()

    async def run(self, link: Link, runner_id: RunnerId) -> None:
        """Host until cancelled; the daemons are stopped on the way out."""
        for pid in await self.sup.reap():
            log.warning("killed agent process tree %d left behind by a previous runner", pid)
        try:
            await asyncio.gather(self._poll(link, runner_id), self._report(link, runner_id))
        finally:
            for task in list(self._work):
                task.cancel()
            await asyncio.gather(*self._work, return_exceptions=True)
            await self.sup.close()
            # Say so, and let another runner take them, if the server hears it.
            self._dirty.update(self.sup.daemons)
            final = self._take().model_copy(update={"release": True})
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._send(link, runner_id, final), FINAL_REPORT)

    # -- desired state -------------------------------------------------------------

    async def _poll(self, link: Link, runner_id: RunnerId) -> None:
        version: str | None = None
        delay = 0.05
        while True:
            rid = runner_id()
            if rid is None:
                await asyncio.sleep(0.1)
                continue
            body = AgentPoll(
                version=version,
                wait=self.poll_wait,
                aliases=self.aliases,
                hosting=sorted(self.sup.daemons),
            )
            try:
                desired = await link.poll_agents(rid, body)
                if desired.version != version:
                    self._apply(desired.agents)
                    version = desired.version
            except Unreachable as exc:
                log.debug("agents poll: %s; retrying", exc)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)  # as the lease loop's (runner.py RETRY_SECONDS)
                continue
            except Refused as exc:
                # 403/404: the lease loop registers again; the rest: try later.
                log.warning("agents poll refused (%s): %s", exc.status, exc)
                await asyncio.sleep(1.0)
                continue
            except BadAnswer as exc:  # not what this runner speaks
                log.error("agents poll: %s", exc)
                await asyncio.sleep(POLL_ERROR_PAUSE)
                continue
            except Exception:
                # One bad poll must not end the host (and stop every daemon
                # with it); the version is unchanged, so it is applied again.
                log.exception("agents poll failed; polling again in %.0f s", POLL_ERROR_PAUSE)
                await asyncio.sleep(POLL_ERROR_PAUSE)
                continue
            delay = 0.05

    def _apply(self, specs: list[DesiredAgent]) -> None:
        wanted = {s.name: s for s in specs}
        for name in set(self.sup.daemons) - set(wanted):
            self._spawn(name, self._remove(name))
        for name, spec in wanted.items():
            try:
                settings = DaemonSettings.model_validate(spec.config)
            except ValidationError as exc:  # a server newer than this runner
                log.error("agent %s: cannot run its configuration here: %s", name, exc)
                continue
            if name not in self.sup.daemons:
                self._add(spec, settings)  # now: the next poll says it is hosted here
            self._spawn(name, self._reconcile(spec, settings))

    def _add(self, spec: DesiredAgent, settings: DaemonSettings) -> None:
        # New here (or this runner restarted): its lines continue the server's
        # numbering; past actions are history, `wanted` decides.
        self.sup.add(spec.name, settings, offset=spec.log_offset, seq=spec.seq)
        self._fresh.add(spec.name)

    def _spawn(self, name: str, work: Awaitable[None]) -> None:
        lock = self._locks.setdefault(name, asyncio.Lock())

        async def serialised() -> None:
            async with lock:
                try:
                    await work
                except Exception:
                    log.exception("agent %s: applying the desired state failed", name)

        task = asyncio.create_task(serialised(), name=f"corral-agent-apply-{name}")
        self._work.add(task)
        task.add_done_callback(self._work.discard)

    async def _remove(self, name: str) -> None:
        await self.sup.remove(name)
        self._dirty.discard(name)
        log.info("agent %s is no longer hosted here", name)

    async def _reconcile(self, spec: DesiredAgent, settings: DaemonSettings) -> None:
        name = spec.name
        if name not in self.sup.daemons:  # removed meanwhile, and wanted back
            self._add(spec, settings)
        d = self.sup.daemons[name]
        if name in self._fresh:
            self._fresh.discard(name)
            if spec.wanted:
                await self.sup.start_agent(name)
            if spec.messages:
                await self.sup.deliver(name, spec.messages)
            self._mark(name)
            return
        if d.settings != settings:
            await self.sup.stop_agent(name)
            d.settings = settings
            if spec.wanted:
                await self.sup.start_agent(name)
        if spec.seq > d.applied_seq:
            if spec.action == "start":
                await self.sup.start_agent(name)
            elif spec.action == "stop":
                await self.sup.stop_agent(name)
            elif spec.action == "restart":
                await self.sup.restart_agent(name)
            d.applied_seq = spec.seq
        if spec.messages:
            await self.sup.deliver(name, spec.messages)
        self._mark(name)

    # -- reporting (the supervisor's listener) ---------------------------------------

    def status(self, change: StatusChange) -> None:
        self._changes.append(change)
        self._changes = self._changes[-1000:]
        self._mark(change.agent_id)

    def line(self, line: LogLine) -> None:
        self._lines.append(line)
        if len(self._lines) > MAX_PENDING_LINES:
            drop = len(self._lines) - MAX_PENDING_LINES
            self._dropped += drop
            del self._lines[:drop]
        self._wake.set()

    def messages(self, name: str, n: int, at: float) -> None:
        per_minute = self._messages.setdefault(name, {})
        minute = int(at // 60)
        per_minute[minute] = per_minute.get(minute, 0) + n
        self._wake.set()

    def delivered(self, name: str) -> None:
        self._mark(name)

    def _mark(self, name: str) -> None:
        self._dirty.add(name)
        self._wake.set()

    def _take(self) -> AgentReport:
        states = self._take_states()
        lines, self._lines = self._lines[:BATCH_LINES], self._lines[BATCH_LINES:]
        if self._lines:
            self._wake.set()
        changes, self._changes = self._changes, []
        messages, self._messages = self._messages, {}
        return AgentReport(states=states, changes=changes, lines=lines, messages=messages)

    async def _report(self, link: Link, runner_id: RunnerId) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch = self._take()
            if self._dropped:
                log.warning("agent host: %d log lines not reported (server away)", self._dropped)
                self._dropped = 0
            try:
                await self._send(link, runner_id, batch)
            except Exception:  # one bad batch must not end the reports (and the host with them)
                log.exception("agents report failed; its changes and lines are dropped")

    async def _send(self, link: Link, runner_id: RunnerId, batch: AgentReport) -> None:
        delay = 0.05
        while True:
            rid = runner_id()
            if rid is not None:
                try:
                    await link.report_agents(rid, batch)
                    return
                except Unreachable as exc:
                    log.debug("agents report: %s; retrying", exc)
                except Refused as exc:
                    if 400 <= exc.status < 500 and exc.status not in (403, 404, 429):
                        log.error("agents report refused (%s): %s", exc.status, exc)
                        return
                except BadAnswer as exc:  # not what this runner speaks: sent, not understood
                    log.error("agents report: %s", exc)
                    return
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)
            # Newer states supersede the held batch's: send them with it.
            batch.states.update(self._take_states())

    def _take_states(self) -> dict[str, AgentState]:
        states = {
            n: self.sup.daemons[n].state() for n in sorted(self._dirty) if n in self.sup.daemons
        }
        self._dirty.clear()
        return states
