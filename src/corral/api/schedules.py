"""Cron schedules: list them, run one now, enable or disable one."""

from __future__ import annotations

from fastapi import APIRouter

from corral.api.deps import Reader, Svc, Writer
from corral.intake import schedules
from corral.models import JobAccepted, Schedule

router = APIRouter(tags=["schedules"])


@router.get("/schedules", response_model=list[Schedule])
async def list_schedules(svc: Svc, who: Reader) -> list[Schedule]:
    """Every `[[schedules]]` table: cron, zone, enabled (and by whom), next and
    last slot, last job, slots fired and skipped, its event log's session."""
    return await schedules.list_schedules(svc)


@router.get("/schedules/{name}", response_model=Schedule)
async def get_schedule(name: str, svc: Svc, who: Reader) -> Schedule:
    """One schedule."""
    return await schedules.get_schedule(svc, name)


@router.post("/schedules/{name}/run", status_code=202, response_model=JobAccepted)
async def run_schedule(name: str, svc: Svc, who: Writer) -> JobAccepted:
    """Submit the schedule's job now, outside its slots (a `schedule.run` event)."""
    job, created = await schedules.run_now(svc, name, who.name)
    return JobAccepted(job_id=job.id, session_id=job.session_id, state=job.state, created=created)


@router.post("/schedules/{name}/enable", response_model=Schedule)
async def enable_schedule(name: str, svc: Svc, who: Writer) -> Schedule:
    """Fire its slots from now on (wins over the configuration's `enabled`;
    slots passed while it was disabled are not run)."""
    return await schedules.set_enabled(svc, name, True, who.name)


@router.post("/schedules/{name}/disable", response_model=Schedule)
async def disable_schedule(name: str, svc: Svc, who: Writer) -> Schedule:
    """Fire none of its slots until enabled again (wins over the configuration)."""
    return await schedules.set_enabled(svc, name, False, who.name)
