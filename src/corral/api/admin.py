"""The kill switch: paused means no new leases; running jobs finish and
intake keeps accepting and queueing. Also: lift a provider's quota pause."""

from __future__ import annotations

from fastapi import APIRouter

from corral.api.deps import Admin, Svc
from corral.protocol import topics

router = APIRouter(tags=["admin"])


@router.post("/admin/pause")
async def pause(svc: Svc, who: Admin) -> dict[str, bool]:
    """Kill switch on: no new leases (running jobs finish, submissions still queue)."""
    await svc.store.settings.set("paused", "true")
    return {"paused": True}


@router.post("/admin/resume")
async def resume(svc: Svc, who: Admin) -> dict[str, bool]:
    """Kill switch off: leases go out again."""
    await svc.store.settings.set("paused", "false", notify=topics.DISPATCH)
    return {"paused": False}


@router.post("/admin/providers/{name}/resume")
async def resume_provider(name: str, svc: Svc, who: Admin) -> dict[str, bool]:
    """Lift the quota pause of a provider before its reset time."""
    return {"was_paused": await svc.store.jobs.unpause(name)}
