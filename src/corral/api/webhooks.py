"""Webhook deliveries: what was sent where, every attempt, and redelivery."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from corral.api.deps import Admin, Reader, Svc, Writer
from corral.api.ids import JobId
from corral.auth import Principal, Role
from corral.egress import public_error
from corral.models import Delivery

router = APIRouter(tags=["webhooks"])

DeliveryState = Literal["pending", "delivered", "failed"]


@router.get("/jobs/{job_id}/deliveries", response_model=list[Delivery])
async def job_deliveries(svc: Svc, who: Reader, job_id: JobId) -> list[dict[str, Any]]:
    """The job's webhook deliveries, newest first, each with its attempt log."""
    await svc.store.jobs.get(job_id)  # 404 for an unknown job
    rows = await svc.store.outbox.list(job_id=job_id, attempts=True, limit=1000)
    return for_role(who, rows)


@router.get(
    "/webhooks/deliveries", response_model=list[Delivery], response_model_exclude_unset=True
)
async def deliveries(
    svc: Svc,
    who: Reader,
    state: DeliveryState | None = None,
    job_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Deliveries of every job, newest first."""
    return for_role(who, await svc.store.outbox.list(job_id=job_id, state=state, limit=limit))


@router.post(
    "/webhooks/deliveries/{delivery_id}/redeliver",
    response_model=Delivery,
    response_model_exclude_unset=True,
)
async def redeliver(delivery_id: str, svc: Svc, who: Writer) -> dict[str, Any]:
    """Send a delivery again (it keeps its id: receivers may drop it as a duplicate)."""
    return for_role(who, [await svc.store.outbox.redeliver(delivery_id, datetime.now(UTC))])[0]


@router.get("/admin/webhook-secret")
async def webhook_secret(svc: Svc, who: Admin) -> dict[str, str]:
    """The secret that signs deliveries of webhooks given without one."""
    return {"secret": svc.webhook_secret}


def for_role(who: Principal, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Only admins see why a connection failed (refused, reset, timed out...):
    to anyone else, the delivery log would map the server's network."""
    if who.role is Role.ADMIN:
        return rows
    for row in rows:
        row["last_error"] = public_error(row["last_error"])
        for attempt in row.get("attempt_log", ()):
            attempt["error"] = public_error(attempt["error"])
    return rows
