"""Cron schedules as an intake source: the ``[[schedules]]`` tables of the
configuration, each slot one job, submitted through ``intake.submit``.

One loop runs them (``Scheduler.run``, leader-elected across replicas). It
sleeps until the next slot of any schedule (at most ``POLL`` seconds, so an
operator's enable or disable on any replica is seen soon), then, per
schedule, plans from the last slot handled (``corral.schedules.plan``),
submits the slot to fire with the idempotency key ``schedule:NAME:SLOT``
and records the slot as handled (``store.schedules.handled``).

Exactly once, also across restarts and replicas: the slot is recorded only
after its job exists, and a loop that stops in between (or a second leader
for a moment) submits the same key again, which names the job made before;
if that slot is missed by then, its job is found by its key and recorded as
fired, not as skipped.
A slot whose job is refused (no provider may run it...) is recorded as
handled with a ``schedule.failed`` event: it is not tried again each second."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from corral import schedules as cron
from corral.config import ScheduleSettings
from corral.errors import CorralError, ScheduleNotFound
from corral.intake.submit import submit
from corral.models import Job, Schedule
from corral.services import Services
from corral.store.jobs import now_utc
from corral.store.schedules import ScheduleState

log = logging.getLogger(__name__)

POLL = 1.0  # seconds: the longest the loop sleeps between looks


def slot_key(name: str, slot: datetime) -> str:
    """The idempotency key of a slot's job."""
    return f"schedule:{name}:{slot.isoformat()}"


class Scheduler:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.store = services.store
        self.settings = services.settings

    async def run(self) -> None:
        """Fire every due slot until cancelled."""
        while True:
            await asyncio.sleep(await self.tick())

    async def tick(self) -> float:
        """Handle what is due now; the seconds until the next slot (at most ``POLL``)."""
        wait = POLL
        for conf in self.settings.schedules:
            try:
                upcoming = await self._one(conf)
            except CorralError as exc:
                log.warning("schedule %s: %s", conf.name, exc.message)
                continue
            if upcoming is not None:
                wait = min(wait, (upcoming - now_utc()).total_seconds())
        return max(wait, 0.0)

    async def state(self, conf: ScheduleSettings) -> ScheduleState:
        """Its row, as the configuration says now (a read unless it is new or changed)."""
        state = await self.store.schedules.get(conf.name)
        if state is None or (state.cron, state.timezone) != (conf.cron, conf.timezone):
            state = await self.store.schedules.sync(conf.name, conf.cron, conf.timezone)
        return state

    async def _one(self, conf: ScheduleSettings) -> datetime | None:
        """Handle schedule ``conf``; its next slot (None: it is disabled)."""
        state = await self.state(conf)
        enabled = conf.enabled if state.enabled is None else state.enabled
        if enabled != state.active:
            state = await self.store.schedules.activate(conf.name, enabled)
        if not enabled:
            return None
        now = now_utc()
        plan = cron.plan(
            conf.cron,
            conf.timezone,
            state.last_slot,
            now,
            grace=self.settings.schedule_grace,
            catch_up=conf.catch_up,
        )
        if plan is None:
            return cron.next_slot(conf.cron, conf.timezone, state.last_slot or now)
        if state.last_slot is not None and await self._orphan(conf, state, plan):
            return await self._one(conf)  # plan the rest from there
        job_id = error = None
        if plan.fire is not None:
            try:
                job, _ = await self.submit(conf, plan.fire)
                job_id = job.id
            except CorralError as exc:
                error = exc.message
                log.warning("schedule %s: slot %s refused: %s", conf.name, plan.fire, error)
        skipped = _skipped(plan, conf) if plan.skipped is not None else None
        await self.store.schedules.handled(
            conf.name,
            expected=state.last_slot,
            last=plan.last,
            fired=plan.fire,
            job_id=job_id,
            error=error,
            late=plan.late,
            skipped=skipped,
        )
        if plan.skipped is not None:
            log.warning(
                "schedule %s: %s%d slot(s) from %s to %s skipped (corral was not running them)",
                conf.name,
                "at least " if plan.skipped.at_least else "",
                plan.skipped.count,
                plan.skipped.first.isoformat(),
                plan.skipped.last.isoformat(),
            )
        return cron.next_slot(conf.cron, conf.timezone, plan.last)

    async def _orphan(self, conf: ScheduleSettings, state: ScheduleState, plan: cron.Plan) -> bool:
        """Record the job of the first due slot as fired, if a loop submitted
        it and stopped before recording it (a stop, a crash, a lost lock) and
        this plan would skip that slot. Only that slot can have one: each
        slot is recorded right after its job is made."""
        assert state.last_slot is not None
        first = cron.next_slot(conf.cron, conf.timezone, state.last_slot)
        if first == plan.fire:
            return False  # it is submitted again: its key names that job
        job = await self.store.jobs.by_idempotency_key(slot_key(conf.name, first))
        if job is None:
            return False
        late = (job.created_at - first).total_seconds() > self.settings.schedule_grace
        await self.store.schedules.handled(
            conf.name, expected=state.last_slot, last=first, fired=first, job_id=job.id, late=late
        )
        return True

    async def submit(self, conf: ScheduleSettings, slot: datetime | None) -> tuple[Job, bool]:
        """Submit schedule ``conf``'s job for ``slot`` (None: a run outside the slots)."""
        at = slot.isoformat() if slot is not None else "run"
        spec = conf.job().model_copy(
            update={
                "idempotency_key": slot_key(conf.name, slot) if slot is not None else None,
                "source": "schedule",
                "source_ref": f"schedule {conf.name} {at}",
                "title": conf.title or f"{conf.name} {at}",
            }
        )
        return await submit(self.services, spec)


def _skipped(plan: cron.Plan, conf: ScheduleSettings) -> dict[str, Any]:
    assert plan.skipped is not None
    s = plan.skipped
    return {
        "count": s.count,
        "at_least": s.at_least,
        "first": s.first.isoformat(),
        "last": s.last.isoformat(),
        "catch_up": conf.catch_up,
        "reason": "missed while corral was not running",
    }


def _conf(services: Services, name: str) -> ScheduleSettings:
    conf = services.settings.schedule(name)
    if conf is None:
        known = ", ".join(s.name for s in services.settings.schedules) or "none configured"
        raise ScheduleNotFound(f"no schedule {name!r} ({known})")
    return conf


def describe(conf: ScheduleSettings, state: ScheduleState | None, now: datetime) -> Schedule:
    """What ``GET /schedules`` says of one schedule."""
    enabled = conf.enabled if state is None or state.enabled is None else state.enabled
    upcoming = None
    if enabled:
        after = max(now, state.last_slot) if state and state.last_slot else now
        upcoming = cron.next_slot(conf.cron, conf.timezone, after)
    return Schedule(
        name=conf.name,
        cron=conf.cron,
        timezone=conf.timezone,
        enabled=enabled,
        enabled_by="operator" if state is not None and state.enabled is not None else "config",
        catch_up=conf.catch_up,
        next_slot=upcoming,
        last_slot=state.last_slot if state else None,
        last_job_id=state.last_job_id if state else None,
        last_fired_at=state.last_fired_at if state else None,
        fired=state.fired if state else 0,
        skipped=state.skipped if state else 0,
        session_id=state.session_id if state else None,
        job=conf.job().model_dump(mode="json", exclude_defaults=True),
    )


async def list_schedules(services: Services) -> list[Schedule]:
    states = {s.name: s for s in await services.store.schedules.list()}
    now = now_utc()
    return [describe(c, states.get(c.name), now) for c in services.settings.schedules]


async def get_schedule(services: Services, name: str) -> Schedule:
    conf = _conf(services, name)
    return describe(conf, await services.store.schedules.get(name), now_utc())


async def run_now(services: Services, name: str, by: str) -> tuple[Job, bool]:
    """Submit schedule ``name``'s job now, outside its slots."""
    conf = _conf(services, name)
    scheduler = Scheduler(services)
    await scheduler.state(conf)
    job, created = await scheduler.submit(conf, None)
    await services.store.schedules.ran(name, job.id, by)
    return job, created


async def set_enabled(services: Services, name: str, enabled: bool, by: str) -> Schedule:
    """An operator enables or disables schedule ``name`` (it wins over the
    configuration); the loop sees it within ``POLL`` seconds."""
    conf = _conf(services, name)
    await Scheduler(services).state(conf)
    state = await services.store.schedules.set_enabled(name, enabled, by)
    return describe(conf, state, now_utc())
