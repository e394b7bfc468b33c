"""The corral tools of a running job's MCP gateway (corral/gateway/), as
calls of runner protocol v1 made with the job's worker JWT: submit a sub-job
(routed, capped and budgeted like any job), read, wait for and cancel the
job's own sub-jobs, report progress. Each is fenced like every worker write:
once the worker's epoch is stale it gets 409 and nothing changes."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Path

from corral.api.deps import Svc, TraceParent, Worker
from corral.intake.submit import submit
from corral.jobs import TERMINAL
from corral.models import Job, NewEvent
from corral.protocol import (
    ChildJob,
    ChildSubmit,
    ChildWait,
    Progress,
    ProgressRecorded,
    paths,
    topics,
)
from corral.services import Services

router = APIRouter(tags=["runners"])

# A waiting call looks again this often even when the bus said nothing (a
# change on another replica whose NOTIFY was missed).
RECHECK_SECONDS = 1.0

JobId = Annotated[str, Path(min_length=1, max_length=64)]


async def _answer(svc: Services, job: Job, *, created: bool = True) -> ChildJob:
    ended = job.state in TERMINAL
    names = [a.name for a in await svc.store.jobs.artifacts(job.id)] if ended else []
    return ChildJob(
        job_id=job.id,
        session_id=job.session_id,
        state=job.state,
        provider=job.provider,
        ended=ended,
        result=job.result,
        error=job.error,
        artifacts=names,
        created=created,
    )


@router.post(paths.WORKER_CHILDREN, response_model=ChildJob)
async def submit_child(
    body: ChildSubmit, svc: Svc, claims: Worker, traceparent: TraceParent = None
) -> ChildJob:
    """Submit a sub-job of the worker's job (``submit_job``); it joins the
    trace of the caller's run span (its ``traceparent``)."""
    spec = body.spec.model_copy(
        update={"source": "mcp", "source_ref": body.spec.source_ref or f"job:{claims.job_id}"}
    )
    job, created = await submit(svc, spec, parent=claims, traceparent=traceparent)
    return await _answer(svc, job, created=created)


@router.post(paths.WORKER_CHILD_WAIT, response_model=ChildJob)
async def wait_child(job_id: JobId, body: ChildWait, svc: Svc, claims: Worker) -> ChildJob:
    """One of the worker's sub-jobs, once it ended or ``timeout`` passed."""
    deadline = time.monotonic() + body.timeout
    with svc.store.bus.subscribe(topics.JOBS, maxsize=10_000) as sub:
        while True:
            job = await svc.store.jobs.child(claims, job_id)
            remaining = deadline - time.monotonic()
            if job.state in TERMINAL or remaining <= 0 or svc.stopping:
                return await _answer(svc, job)
            await sub.get(timeout=min(remaining, RECHECK_SECONDS))


@router.post(paths.WORKER_CHILD_CANCEL, response_model=ChildJob)
async def cancel_child(job_id: JobId, svc: Svc, claims: Worker) -> ChildJob:
    """Cancel one of the worker's sub-jobs (``cancel_job``)."""
    return await _answer(svc, await svc.store.jobs.cancel_child(claims, job_id))


@router.post(paths.WORKER_PROGRESS, response_model=ProgressRecorded)
async def progress(body: Progress, svc: Svc, claims: Worker) -> ProgressRecorded:
    """A ``job.progress`` event of the worker's job (``report_progress``)."""
    payload: dict[str, object] = {"message": body.message}
    if body.percent is not None:
        payload["percent"] = body.percent
    stored, _ = await svc.store.jobs.append_events(
        claims, [NewEvent(type="job.progress", payload=payload)]
    )
    return ProgressRecorded(seq=stored[0].seq or 0 if stored else 0)
