"""A runner's agent host: runs the agent daemons the control plane assigns
to this runner, and reports on them.

Two loops over the runner protocol (runner key):

- ``POST /runners/{id}/agents`` long-polls for the desired set (configuration,
  wanted, the numbered operator actions); each change is applied by the
  supervisor — new agents start if wanted, removed ones stop, changed ones
  restart, a new action (start, stop, restart) is carried out once.
- ``POST /runners/{id}/agents/report`` sends status changes, states, log
  lines and message counts in batches, one request in flight, as they happen.

While the control plane is away (a restart, a deploy) the daemons keep
running: reports wait in a bounded buffer (the oldest lines are dropped past
``MAX_PENDING_LINES``; the log file here has them all) and the desired set
stays what it was. Only this runner stopping stops its daemons."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from corral.config import DaemonSettings
from corral.executors.sandbox import Sandbox
from corral.runner.daemons import MESSAGES_TOPIC, Supervisor
from corral.store.agents import STATUS_TOPIC

log = logging.getLogger(__name__)

MAX_PENDING_LINES = 20_000
BATCH_LINES = 2_000
FINAL_REPORT = 3.0  # seconds a stopping runner tries to report its stopped daemons


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
        self.sup = Supervisor(workdir, self._publish, sandbox)
        self._changes: list[dict[str, Any]] = []
        self._lines: list[dict[str, Any]] = []
        self._messages: dict[str, dict[int, int]] = {}
        self._dirty: set[str] = set()
        self._dropped = 0
        self._wake = asyncio.Event()
        self._locks: dict[str, asyncio.Lock] = {}
        self._fresh: set[str] = set()  # added, not started yet
        self._work: set[asyncio.Task[None]] = set()

    async def run(self, http: httpx.AsyncClient, runner_id: Callable[[], str | None]) -> None:
        """Host until cancelled; the daemons are stopped on the way out."""
        for pid in await self.sup.reap():
            log.warning("killed agent process tree %d left behind by a previous runner", pid)
        try:
            await asyncio.gather(self._poll(http, runner_id), self._report(http, runner_id))
        finally:
            for task in list(self._work):
                task.cancel()
            await asyncio.gather(*self._work, return_exceptions=True)
            await self.sup.close()
            # Say so, and let another runner take them, if the server hears it.
            self._dirty.update(self.sup.daemons)
            final = {**self._take(), "release": True}
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._send(http, runner_id, final), FINAL_REPORT)

    # -- desired state -------------------------------------------------------------

    async def _poll(self, http: httpx.AsyncClient, runner_id: Callable[[], str | None]) -> None:
        version: str | None = None
        delay = 0.05
        while True:
            rid = runner_id()
            if rid is None:
                await asyncio.sleep(0.1)
                continue
            body = {
                "version": version,
                "wait": self.poll_wait,
                "aliases": self.aliases,
                "hosting": sorted(self.sup.daemons),
            }
            try:
                resp = await http.post(f"/runners/{rid}/agents", json=body)
            except httpx.TransportError as exc:
                log.debug("agents poll: %s; retrying", exc)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.05
            if resp.status_code != 200:
                # 403/404: the lease loop registers again; the rest: try later.
                log.warning("agents poll refused (%s): %s", resp.status_code, resp.text[:200])
                await asyncio.sleep(1.0)
                continue
            try:
                data = resp.json()
                if data["version"] != version:
                    self._apply(data["agents"])
                    version = data["version"]
            except (ValueError, KeyError, TypeError) as exc:  # not what this runner speaks
                log.error("agents poll: unexpected answer (%r): %s", exc, resp.text[:200])
                await asyncio.sleep(5.0)

    def _apply(self, specs: list[dict[str, Any]]) -> None:
        wanted = {s["name"]: s for s in specs}
        for name in set(self.sup.daemons) - set(wanted):
            self._spawn(name, self._remove(name))
        for name, spec in wanted.items():
            try:
                settings = DaemonSettings.model_validate(spec["config"])
            except ValidationError as exc:  # a server newer than this runner
                log.error("agent %s: cannot run its configuration here: %s", name, exc)
                continue
            if name not in self.sup.daemons:
                self._add(name, settings, spec)  # now: the next poll says it is hosted here
            self._spawn(name, self._reconcile(spec, settings))

    def _add(self, name: str, settings: DaemonSettings, spec: dict[str, Any]) -> None:
        # New here (or this runner restarted): its lines continue the server's
        # numbering; past actions are history, `wanted` decides.
        self.sup.add(name, settings, offset=spec["log_offset"], seq=spec["seq"])
        self._fresh.add(name)

    def _spawn(self, name: str, work: Any) -> None:
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

    async def _reconcile(self, spec: dict[str, Any], settings: DaemonSettings) -> None:
        name = spec["name"]
        if name not in self.sup.daemons:  # removed meanwhile, and wanted back
            self._add(name, settings, spec)
        d = self.sup.daemons[name]
        if name in self._fresh:
            self._fresh.discard(name)
            if spec["wanted"]:
                await self.sup.start_agent(name)
            self._mark(name)
            return
        if d.settings != settings:
            await self.sup.stop_agent(name)
            d.settings = settings
            if spec["wanted"]:
                await self.sup.start_agent(name)
        if spec["seq"] > d.applied_seq:
            action = spec["action"]
            if action == "start":
                await self.sup.start_agent(name)
            elif action == "stop":
                await self.sup.stop_agent(name)
            elif action == "restart":
                await self.sup.restart_agent(name)
            d.applied_seq = spec["seq"]
        self._mark(name)

    # -- reporting -------------------------------------------------------------------

    def _publish(self, topic: str, message: Any) -> None:
        if topic == STATUS_TOPIC:
            self._changes.append(message)
            self._changes = self._changes[-1000:]
            self._mark(message["agent_id"])
        elif topic == MESSAGES_TOPIC:
            name, n, at = message
            per_minute = self._messages.setdefault(name, {})
            minute = int(at // 60)
            per_minute[minute] = per_minute.get(minute, 0) + n
            self._wake.set()
        else:  # agent-log:NAME
            self._lines.append({"agent": topic.removeprefix("agent-log:"), **message})
            if len(self._lines) > MAX_PENDING_LINES:
                drop = len(self._lines) - MAX_PENDING_LINES
                self._dropped += drop
                del self._lines[:drop]
            self._wake.set()

    def _mark(self, name: str) -> None:
        self._dirty.add(name)
        self._wake.set()

    def _take(self) -> dict[str, Any]:
        states = self._take_states()
        lines, self._lines = self._lines[:BATCH_LINES], self._lines[BATCH_LINES:]
        if self._lines:
            self._wake.set()
        changes, self._changes = self._changes, []
        messages, self._messages = self._messages, {}
        return {"states": states, "changes": changes, "lines": lines, "messages": messages}

    async def _report(self, http: httpx.AsyncClient, runner_id: Callable[[], str | None]) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch = self._take()
            if self._dropped:
                log.warning("agent host: %d log lines not reported (server away)", self._dropped)
                self._dropped = 0
            await self._send(http, runner_id, batch)

    async def _send(
        self, http: httpx.AsyncClient, runner_id: Callable[[], str | None], batch: dict[str, Any]
    ) -> None:
        delay = 0.05
        while True:
            rid = runner_id()
            if rid is not None:
                try:
                    resp = await http.post(f"/runners/{rid}/agents/report", json=batch)
                except httpx.TransportError as exc:
                    log.debug("agents report: %s; retrying", exc)
                else:
                    if resp.status_code == 200:
                        return
                    if 400 <= resp.status_code < 500 and resp.status_code not in (403, 404, 429):
                        log.error("agents report refused (%s): %s", resp.status_code, resp.text)
                        return
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)
            # Newer states supersede the held batch's: send them with it.
            batch["states"].update(self._take_states())

    def _take_states(self) -> dict[str, Any]:
        states = {
            n: self.sup.daemons[n].state() for n in sorted(self._dirty) if n in self.sup.daemons
        }
        self._dirty.clear()
        return states
