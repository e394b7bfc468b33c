"""Issue trackers: their state, a poll on demand, the switch, and the
inbound webhook each tracker's deliveries come to."""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, Request

from corral.api.deps import Reader, Svc, Writer
from corral.config import TrackerSettings
from corral.errors import BadRequest, TrackerNotFound, Unauthorized
from corral.forges import KINDS
from corral.intake import tracker as intake
from corral.models import Tracker, TrackerItemInfo
from corral.protocol import topics
from corral.services import Services

router = APIRouter(tags=["trackers"])


def _settings(svc: Services, name: str) -> TrackerSettings:
    found = svc.settings.tracker(name)
    if found is None:
        known = ", ".join(t.name for t in svc.settings.trackers) or "none configured"
        raise TrackerNotFound(f"no tracker {name!r} ({known})")
    return found


async def info(svc: Services, t: TrackerSettings, *, items: bool = False) -> Tracker:
    status = await intake.stored_status(svc, t.name)
    enabled = await intake.enabled(svc, t)
    info = Tracker(
        name=t.name,
        kind=t.kind,
        base_url=t.base_url,
        repos=t.repos,
        label=t.label,
        trigger=t.trigger,
        enabled=enabled,
        webhook=t.webhook_secret is not None,
        poll_interval=t.poll_interval,
        **{**vars(status), "state": status.state if enabled else "disabled"},
        jobs=await svc.store.trackers.counts(t.name),
    )
    if items:
        rows = await svc.store.trackers.list(t.name, limit=100)
        states = {row.job_id: (await svc.store.jobs.get(row.job_id)).state.value for row in rows}
        info.items = [
            TrackerItemInfo(**row.model_dump(), job_state=states.get(row.job_id)) for row in rows
        ]
    return info


@router.get("/trackers", response_model=list[Tracker])
async def trackers(svc: Svc, who: Reader) -> list[Tracker]:
    """The configured issue trackers and how their intake is doing."""
    return [await info(svc, t) for t in svc.settings.trackers]


@router.get("/trackers/{name}", response_model=Tracker)
async def tracker(name: str, svc: Svc, who: Reader) -> Tracker:
    """One tracker, with the issues it took in (newest first)."""
    return await info(svc, _settings(svc, name), items=True)


@router.post("/trackers/{name}/sync", status_code=202, response_model=Tracker)
async def sync(name: str, svc: Svc, who: Writer) -> Tracker:
    """Poll the tracker now (on the replica that polls)."""
    t = _settings(svc, name)
    # Through the database: its NOTIFY reaches the leader on another replica.
    await svc.store.settings.set(
        intake.SYNC_KEY.format(name=t.name), str(time.time()), notify=topics.TRACKERS
    )
    return await info(svc, t)


@router.post("/trackers/{name}/enable", response_model=Tracker)
async def enable(name: str, svc: Svc, who: Writer) -> Tracker:
    """Take issues in from the tracker (remembered in the database)."""
    return await _switch(svc, _settings(svc, name), True)


@router.post("/trackers/{name}/disable", response_model=Tracker)
async def disable(name: str, svc: Svc, who: Writer) -> Tracker:
    """Stop taking issues in from the tracker; running jobs finish and report."""
    return await _switch(svc, _settings(svc, name), False)


async def _switch(svc: Services, t: TrackerSettings, on: bool) -> Tracker:
    await svc.store.settings.set(
        intake.ENABLED_KEY.format(name=t.name), "true" if on else "false", notify=topics.TRACKERS
    )
    return await info(svc, t)


@router.post("/hooks/trackers/{name}", openapi_extra={"security": []})
async def hook(name: str, request: Request, svc: Svc) -> dict[str, Any]:
    """A tracker's webhook delivery (GitHub ``X-Hub-Signature-256``, Forgejo
    and Gitea ``X-Gitea-Signature``): verified against the tracker's
    ``webhook_secret`` before anything is read; the issue or comment is taken
    at once. No API key: the signature is the credential."""
    t = svc.settings.tracker(name)
    if t is None or t.webhook_secret is None:
        raise TrackerNotFound(f"no tracker {name!r} takes webhooks")
    body = await request.body()
    forge = KINDS[t.kind]
    if not forge.verify(t.webhook_secret.get_secret_value(), body, request.headers):
        raise Unauthorized("bad or missing webhook signature")
    event = forge.event_of(request.headers) or ""
    if event == "ping":
        return {"ok": True, "done": "pong"}
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise BadRequest("the delivery is not JSON") from exc
    if not isinstance(payload, dict):
        raise BadRequest("the delivery is not a JSON object")
    if not await intake.enabled(svc, t):
        return {"ok": True, "done": "ignored: the tracker is disabled"}
    done = await intake.intake_for(svc, t.name).delivery(event, payload)
    return {"ok": True, "done": done}
