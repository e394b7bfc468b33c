"""The dashboard's pages (GET): jobs, a job, a session, the fleet (kill
switch, providers, runners) and the agent daemons. Each reads the store once
and renders one template; the live parts follow the API's SSE feeds."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response

from corral.api.trackers import info as tracker_info
from corral.api.webhooks import for_role
from corral.config import Settings
from corral.errors import BadRequest, NotFound
from corral.jobs import ACTIVE, TERMINAL, JobState
from corral.ui import charts, web

router = APIRouter(include_in_schema=False)

PAGE = 50
DIFF_MAX = 512 * 1024
DELIVERIES_SHOWN = 50  # a job's newest webhook deliveries on its page
SOURCES = ("api", "cli", "folder", "mcp", "tracker", "chat", "schedule")


@router.get("/ui", response_model=None)
@router.get("/ui/", response_model=None)
async def home() -> Response:
    return RedirectResponse("/ui/jobs", status_code=303)


@router.get("/ui/jobs", response_model=None)
async def jobs_page(
    request: Request,
    state: Annotated[list[str], Query()] = [],  # noqa: B006 - FastAPI query default
    provider: Annotated[str, Query(max_length=64)] = "",
    label: Annotated[str, Query(max_length=200)] = "",
    source: Annotated[str, Query(max_length=16)] = "",
    q: Annotated[str, Query(max_length=200)] = "",
    before: Annotated[str, Query(max_length=64)] = "",
) -> Response:
    who = await web.viewer(request)
    if who is None:
        return web.to_login(request)
    svc = web.services(request)
    try:
        states = [JobState(s) for s in state if s]
    except ValueError:
        raise BadRequest(f"unknown state in {state!r}") from None
    try:
        jobs = await svc.store.jobs.list(
            states=states,
            provider=provider or None,
            label=label or None,
            source=source or None,
            text=q or None,
            limit=PAGE,
            before=before or None,
        )
    except NotFound:
        jobs = []  # the cursor's job is gone: an empty page, with a link to the newest
    filters = {
        "state": [s.value for s in states],
        "provider": provider,
        "label": label,
        "source": source,
        "q": q,
    }
    bulk = None
    if who.can("write") and any(filters.values()):
        matching = await web.matching(svc, filters, web.BULK_MAX + 1)
        bulk = {
            "cancel": sum(j.state not in TERMINAL for j in matching),
            "retry": sum(j.state in (JobState.FAILED, JobState.CANCELLED) for j in matching),
            "capped": len(matching) > web.BULK_MAX,
            "states": ",".join(filters["state"]),
        }
    return await web.render(
        request,
        "jobs.html",
        who,
        jobs=jobs,
        counts=await svc.store.jobs.counts(),
        states=[s.value for s in JobState],
        providers=sorted(svc.providers),
        sources=SOURCES,
        filters=filters,
        filters_json=json.dumps(filters),
        base_query=urlencode({k: v for k, v in filters.items() if v}, doseq=True),
        page=PAGE,
        bulk=bulk,
        bulk_max=web.BULK_MAX,
        first_page=not before,
        next_before=jobs[-1].id if len(jobs) == PAGE else None,
    )


def diff_lines(text: str) -> list[tuple[str, str]]:
    """A unified diff as (class, line) pairs for the page to colour."""
    out = []
    for line in text.splitlines():
        if line.startswith(("+++", "---", "diff ", "index ")):
            kind = "meta"
        elif line.startswith("@@"):
            kind = "hunk"
        elif line.startswith("+"):
            kind = "add"
        elif line.startswith("-"):
            kind = "del"
        else:
            kind = ""
        out.append((kind, line))
    return out


@router.get("/ui/jobs/{job_id}", response_model=None)
async def job_page(request: Request, job_id: str) -> Response:
    who = await web.viewer(request)
    if who is None:
        return web.to_login(request)
    svc = web.services(request)
    job_id = await svc.store.jobs.resolve(job_id)
    job = await svc.store.jobs.get(job_id)
    if job.state is JobState.QUEUED:
        job = job.model_copy(update={"waiting": await svc.store.jobs.waiting(job)})
    asked = await svc.store.questions.waiting_for([job.id] if job.state in ACTIVE else [])
    if job.id in asked:
        job = job.model_copy(update={"waiting_for": asked[job.id]})
    artifacts = await svc.store.jobs.artifacts(job_id)
    diff = None
    if any(a.name == "diff.patch" and a.size <= DIFF_MAX for a in artifacts):
        _, data = await svc.store.jobs.artifact(job_id, "diff.patch")
        diff = diff_lines(data.decode(errors="replace"))
    rows = await svc.store.outbox.list(job_id=job.id, attempts=True, limit=DELIVERIES_SHOWN)
    return await web.render(
        request,
        "job.html",
        who,
        job=job,
        terminal=job.state in TERMINAL,
        artifacts=artifacts,
        diff=diff,
        deliveries=for_role(who.principal, rows),
        usage=json.dumps(job.usage, indent=1) if job.usage else None,
    )


@router.get("/ui/needs", response_model=None)
async def needs_page(request: Request) -> Response:
    """Every job waiting on a person's answer (``ask_human``), oldest first."""
    who = await web.viewer(request)
    if who is None:
        return web.to_login(request)
    svc = web.services(request)
    pending = await svc.store.questions.pending()
    jobs = {j.id: j for j in [await svc.store.jobs.get(job_id) for job_id, _ in pending]}
    return await web.render(
        request, "needs.html", who, items=[(jobs[job_id], q) for job_id, q in pending]
    )


@router.get("/ui/sessions", response_model=None)
async def sessions_page(request: Request, before: str | None = None) -> Response:
    """Sessions, newest first, each with its last turn; keyset pages."""
    who = await web.viewer(request)
    if who is None:
        return web.to_login(request)
    store = web.services(request).store
    if before is not None:
        before = await store.sessions.resolve(before)
    rows = await store.sessions.page(limit=PAGE + 1, before=before)
    older = rows[PAGE - 1].session.id if len(rows) > PAGE else None
    return await web.render(
        request, "sessions.html", who, rows=rows[:PAGE], older=older, first_page=before is None
    )


@router.get("/ui/sessions/{session_id}", response_model=None)
async def session_page(request: Request, session_id: str) -> Response:
    who = await web.viewer(request)
    if who is None:
        return web.to_login(request)
    svc = web.services(request)
    session_id = await svc.store.sessions.resolve(session_id)
    session = await svc.store.sessions.get(session_id)
    turns = await svc.store.jobs.list(session_id=session_id, limit=500)
    return await web.render(
        request,
        "session.html",
        who,
        session=session,
        turns=sorted(turns, key=lambda j: j.turn),
    )


@router.get("/ui/fleet", response_model=None)
async def fleet_page(request: Request) -> Response:
    who = await web.viewer(request)
    if who is None:
        return web.to_login(request)
    svc = web.services(request)
    pauses = {p.provider: p for p in await svc.store.jobs.pauses()}
    return await web.render(
        request,
        "fleet.html",
        who,
        runners=await svc.store.runners.list(),
        providers=sorted(svc.providers.values(), key=lambda p: p.name),
        settings=svc.settings.providers,
        pauses=pauses,
        live=await svc.store.jobs.live_by_provider(),
        counts=await svc.store.jobs.counts(),
        queue=await asyncio.to_thread(_queue_folder, svc.settings),
        trackers=[await tracker_info(svc, t) for t in svc.settings.trackers],
        now=time.time(),
    )


def _queue_folder(settings: Settings) -> dict[str, Any] | None:
    """The queue folder and how many files each of its folders holds (None: not watched)."""
    if not settings.queue_enabled:
        return None
    root = settings.queue_dir

    def count(folder: Path) -> int:
        try:
            return sum(1 for f in folder.iterdir() if f.suffix == ".md" and f.is_file())
        except OSError:
            return 0

    names = ("running", "done", "failed")
    return {"path": str(root), "waiting": count(root), **{n: count(root / n) for n in names}}


# Range -> (seconds, bucket): about 24 to 168 bars a chart.
RANGES = {
    "1h": (3600, 60),
    "24h": (86400, 3600),
    "7d": (7 * 86400, 3600),
    "30d": (30 * 86400, 86400),
}


@router.get("/ui/stats", response_model=None)
async def stats_page(request: Request, range: str = "24h") -> Response:
    who = await web.viewer(request)
    if who is None:
        return web.to_login(request)
    if range not in RANGES:
        raise BadRequest(f"range must be one of {', '.join(RANGES)}")
    seconds, bucket = RANGES[range]
    end = datetime.now(UTC)
    # The last bucket ends at the next bucket boundary: bars stay put as time passes.
    end = datetime.fromtimestamp((int(end.timestamp()) // bucket + 1) * bucket, UTC)
    start = end - timedelta(seconds=seconds)
    jobs = web.services(request).store.jobs
    frame = {"from": start, "to": end, "bucket": bucket}
    states = {**frame, **await jobs.stats(start=start, end=end, bucket=bucket, group_by="state")}
    providers = {
        **frame,
        **await jobs.stats(start=start, end=end, bucket=bucket, group_by="provider"),
    }
    return await web.render(
        request,
        "stats.html",
        who,
        range=range,
        ranges=list(RANGES),
        states=states,
        charts=[
            charts.stacked(states, value="count", title="Jobs finished", unit="jobs", states=True),
            charts.stacked(providers, value="cost", title="Cost by provider", unit="$"),
            charts.stacked(providers, value="tokens", title="Tokens by provider", unit="tokens"),
        ],
    )


@router.get("/ui/agents", response_model=None)
async def agents_page(request: Request) -> Response:
    who = await web.viewer(request)
    if who is None:
        return web.to_login(request)
    agents = [r.view() for r in await web.services(request).store.agents.list()]
    return await web.render(request, "agents.html", who, agents=agents)


@router.get("/ui/agents/{name}", response_model=None)
async def agent_page(request: Request, name: str) -> Response:
    who = await web.viewer(request)
    if who is None:
        return web.to_login(request)
    rec = await web.services(request).store.agents.get(name)
    return await web.render(request, "agent.html", who, agent=rec.view())
