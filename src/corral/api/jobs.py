"""Jobs: submit, read, cancel, retry, and their events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from corral.api import stream
from corral.api.deps import Reader, Svc, TraceParent, Writer, principal
from corral.api.ids import JobId, SessionFilter
from corral.api.schemas import EventPage
from corral.auth import Principal, Role
from corral.errors import BadRequest, Forbidden, JobNotFound
from corral.intake.submit import submit as submit_job
from corral.jobs import ACTIVE, JobState
from corral.models import INT32_MAX, Artifact, Job, JobAccepted, JobCreate, JobPage, RouteDecision
from corral.protocol import paths, topics

router = APIRouter(tags=["jobs"])


async def _readable(svc: Svc, job: Job, who: Principal) -> Job:
    """Readers see every job; a runner key only the jobs its runner holds."""
    if who.role is not Role.RUNNER:
        who.require("read")
    elif job.runner_id is None or await svc.store.runners.key_of(job.runner_id) != who.key_id:
        raise Forbidden("a runner key may only read jobs its runner holds")
    return job


def _states(raw: list[str]) -> list[JobState]:
    states: list[JobState] = []
    for item in raw:
        for name in item.split(","):
            if not name.strip():
                continue
            try:
                states.append(JobState(name.strip()))
            except ValueError:
                allowed = ", ".join(s.value for s in JobState)
                raise BadRequest(f"unknown state {name.strip()!r}; use one of {allowed}") from None
    return states


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobAccepted,
    responses={200: {"model": JobAccepted, "description": "A known idempotency_key: that job."}},
)
async def submit(
    spec: JobCreate,
    svc: Svc,
    who: Writer,
    response: Response,
    traceparent: TraceParent = None,
) -> JobAccepted:
    """Submit a job: 202 `{job_id, session_id, state, created}`, or 200 with the
    existing job for a known `idempotency_key`."""
    # A W3C traceparent header makes the job's trace a part of the caller's.
    job, created = await submit_job(svc, spec, traceparent=traceparent)
    if not created:
        response.status_code = 200
    return JobAccepted(job_id=job.id, session_id=job.session_id, state=job.state, created=created)


@router.post("/route", response_model=RouteDecision)
async def route(spec: JobCreate, svc: Svc, who: Reader) -> RouteDecision:
    """Where this job would run, the rule that fired and why earlier rules did not."""
    d = await svc.route(spec)
    return RouteDecision(
        provider=d.provider, model=d.model, rule=d.rule, reason=d.reason, skipped=list(d.skipped)
    )


@router.get("/jobs", response_model=JobPage)
async def list_jobs(
    svc: Svc,
    who: Reader,
    session_id: SessionFilter,
    state: Annotated[list[str], Query()] = [],  # noqa: B006 - FastAPI query default
    provider: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: str | None = None,
    label: Annotated[str | None, Query(max_length=200)] = None,
    source: Annotated[str | None, Query(max_length=16)] = None,
    q: Annotated[str | None, Query(max_length=200, description="Text in prompts.")] = None,
) -> JobPage:
    """Jobs, newest first, filtered by state, session, provider, label, source and
    text (`q`); `next` is the `before` of the next page."""
    jobs = await svc.store.jobs.list(
        states=_states(state),
        session_id=session_id,
        provider=provider,
        limit=limit,
        before=before,
        label=label,
        source=source,
        text=q,
    )
    next_page = jobs[-1].id if len(jobs) == limit else None
    return JobPage(jobs=await _with_questions(svc, jobs), next=next_page)


# What /sse/jobs leaves out of each job: the bulky fields a table has no use for.
_BULKY = {"prompt", "messages", "tools", "options", "message", "result", "webhook_url"}
_PROMPT_HEAD = 200


@router.get("/sse/jobs")
async def follow_jobs(svc: Svc, who: Reader) -> Response:
    """SSE: every job created or changing state, as it happens (`event: job`, the
    job without its messages and result, its prompt cut to 200 characters)."""

    async def changes() -> AsyncIterator[dict[str, Any]]:
        with svc.store.bus.subscribe(topics.JOB_STATES, maxsize=svc.settings.sse_buffer) as sub:
            while not sub.overflowed:
                got = await sub.get(timeout=svc.settings.sse_ping)
                ids = dict.fromkeys(m for m in got if isinstance(m, str))
                for job_id in ids:
                    try:
                        job = await svc.store.jobs.get(job_id)
                    except JobNotFound:
                        continue
                    data = job.model_dump(mode="json", exclude=_BULKY)
                    if job.prompt is not None:
                        data["prompt"] = job.prompt[:_PROMPT_HEAD]
                    yield {"event": "job", "data": json.dumps(data)}

    return stream.response_of(changes(), ping=svc.settings.sse_ping, streams=svc.streams)


@router.get("/jobs/{job_id}", response_model=Job)
async def get_job(svc: Svc, who: Annotated[Principal, Depends(principal)], job_id: JobId) -> Job:
    """One job: state, attempt, result, error, reason, exit code, usage, cost, timings,
    the routing decision, `waiting` (why a queued job waits) and `waiting_for` (the
    question a running job waits on a person to answer). A runner key sees only jobs it
    holds."""
    job = await _readable(svc, await svc.store.jobs.get(job_id), who)
    if job.state is JobState.QUEUED:
        job = job.model_copy(update={"waiting": await svc.store.jobs.waiting(job)})
    return (await _with_questions(svc, [job]))[0]


async def _with_questions(svc: Svc, jobs: list[Job]) -> list[Job]:
    """``jobs`` with the question each active one waits on (``waiting_for``)."""
    asked = await svc.store.questions.waiting_for([j.id for j in jobs if j.state in ACTIVE])
    if not asked:
        return jobs
    return [j.model_copy(update={"waiting_for": asked[j.id]}) if j.id in asked else j for j in jobs]


@router.post("/jobs/{job_id}/cancel", response_model=Job)
async def cancel_job(svc: Svc, who: Writer, job_id: JobId) -> Job:
    """Cancel; a running job's process tree is stopped."""
    return await svc.store.jobs.cancel(job_id, by=who.name)


@router.post("/jobs/{job_id}/retry", response_model=Job)
async def retry_job(svc: Svc, who: Writer, job_id: JobId) -> Job:
    """Queue a failed or cancelled job again."""
    return await svc.store.jobs.retry(job_id)


@router.get("/jobs/{job_id}/events", response_model=EventPage)
async def job_events(
    request: Request,
    svc: Svc,
    who: Reader,
    job_id: JobId,
    since: Annotated[int, Query(ge=0, le=INT32_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
    internal: bool = False,
) -> Response:
    """JSON by default; an SSE stream (ending with the job) when the client
    accepts ``text/event-stream``."""
    session_id = await svc.store.jobs.session_of(job_id)
    if "text/event-stream" in request.headers.get("accept", ""):
        return stream.response(
            svc.store,
            session_id,
            since=stream.last_event_id(request, since),
            buffer=svc.settings.sse_buffer,
            job_id=job_id,
            internal=internal,
            ping=svc.settings.sse_ping,
            streams=svc.streams,
        )
    items = await svc.store.events.list(
        session_id, since=since, limit=limit, job_id=job_id, internal=internal
    )
    next_since = items[-1].seq if items and items[-1].seq else since
    return JSONResponse({"events": [e.to_dict() for e in items], "next_since": next_since})


ArtifactName = Annotated[
    str, Path(pattern=paths.ARTIFACT_NAME, description="Letters, digits, '.', '_', '-'; no paths.")
]


@router.get("/jobs/{job_id}/artifacts", response_model=list[Artifact])
async def list_artifacts(svc: Svc, who: Reader, job_id: JobId) -> list[Artifact]:
    """What the job left: diff.patch and changes.json for a worktree job."""
    return await svc.store.jobs.artifacts(job_id)


@router.get("/jobs/{job_id}/artifacts/{name}", response_class=Response)
async def get_artifact(svc: Svc, who: Reader, job_id: JobId, name: ArtifactName) -> Response:
    """An artifact's bytes, with its media type."""
    meta, data = await svc.store.jobs.artifact(job_id, name)
    return Response(
        data,
        media_type=meta.media_type,
        headers={"Content-Disposition": f'attachment; filename="{meta.name}"'},
    )
