"""Runner protocol v1 (corral/protocol/): register and lease with a runner
key; report events, state, heartbeats and the outcome with the job's worker
JWT. A write carrying a stale epoch gets 409 and the runner stops that job."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from corral import auth, tracing
from corral.api import questions
from corral.api.deps import Admin, Reader, RunnerKey, Svc, TraceParent, Worker
from corral.auth import Principal, Role, WorkerClaims
from corral.config import Settings
from corral.errors import Forbidden, Unauthorized
from corral.models import Artifact, NewEvent, Runner
from corral.protocol import (
    VERSION,
    Completed,
    Completion,
    EventBatch,
    EventsAccepted,
    Heartbeat,
    JournalAnswer,
    JournalEntry,
    LeasedJob,
    LeaseRequest,
    LeaseResponse,
    RunnerRegister,
    RunnerRegistered,
    StateRecorded,
    WorkerState,
    paths,
    topics,
)
from corral.services import Services
from corral.store.jobs import Lease, handoff

log = logging.getLogger(__name__)
router = APIRouter(tags=["runners"])

# Even with nothing announced on the bus, a waiting lease looks again this
# often: it picks up retries whose backoff ended and work another replica took in.
RECHECK_SECONDS = 1.0
# The longest long-poll honoured, and how long a job leased with ``confirm``
# waits for its confirmation, as a share of lease_ttl: a runner cut off silently
# (no FIN, no RST) sees its poll unanswered well before a job's lease runs out,
# and a job answered into the cut is queued again a third of a lease later.
POLL_SHARE = 1 / 3
# A confirmation is one heartbeat sent on receipt; on a loaded machine it may
# take a second: never wait for less than this (nor longer than lease_ttl).
CONFIRM_MIN_SECONDS = 2.0


def poll_wait(settings: Settings) -> float:
    """The longest wait a lease or agents long-poll is held (``poll_wait`` of
    the registration's answer)."""
    return min(120.0, settings.lease_ttl * POLL_SHARE)


def lease_confirm(settings: Settings) -> float:
    """How long a job leased with ``confirm`` stays leased without a heartbeat."""
    return min(settings.lease_ttl, max(CONFIRM_MIN_SECONDS, settings.lease_ttl * POLL_SHARE))


@router.post(paths.REGISTER, response_model=RunnerRegistered)
async def register(body: RunnerRegister, svc: Svc, who: RunnerKey) -> RunnerRegistered:
    """Runner protocol: register a runner (re-registering a name releases its old jobs
    at once). Its journal (outcomes of jobs it finished without seeing the report
    acknowledged) is applied first, so a job whose process ended there is not run again."""
    answers = await _replay(body.journal, svc, who) if body.journal else []
    runner = await svc.store.runners.register(
        name=body.name,
        key_id=who.key_id,
        hostname=body.hostname,
        providers=body.providers,
        labels=body.labels,
        slots=body.slots,
        sandbox=body.sandbox,
    )
    return RunnerRegistered(
        runner_id=runner.id,
        protocol=VERSION,
        lease_ttl=svc.settings.lease_ttl,
        heartbeat_interval=svc.settings.heartbeat_interval,
        poll_wait=poll_wait(svc.settings),
        lease_confirm=lease_confirm(svc.settings),
        max_artifact_bytes=svc.settings.max_artifact_bytes,
        journal=answers,
    )


async def _replay(
    entries: list[JournalEntry], svc: Services, who: Principal
) -> list[JournalAnswer]:
    """Each entry's worker JWT is the server's proof that it leased that job at
    that epoch to that runner (expired or not; the store checks that the
    runner registered with ``who``'s key)."""
    proven: list[tuple[WorkerClaims, JournalEntry]] = []
    refused: list[JournalAnswer] = []
    for entry in entries:
        try:
            claims = auth.verify_worker_token(entry.token, svc.jwt_secret, expired_ok=True)
        except Unauthorized:
            refused.append(
                JournalAnswer(
                    id=entry.id, result="dropped", detail="not a worker token of this server"
                )
            )
            continue
        proven.append((claims, entry))
    answers = [*refused, *await svc.store.jobs.recover(who.key_id, proven)]
    for answer in answers:
        if answer.result == "recovered":
            svc.watchdog.recovered += 1
        log.info(
            "journal of a registering runner: job %s %s (%s)",
            answer.job_id,
            answer.result,
            answer.detail or answer.state,
            extra={"job_id": answer.job_id},
        )
    return answers


@router.get("/runners", response_model=list[Runner])
async def list_runners(svc: Svc, who: Reader) -> list[Runner]:
    """Active runners: name, providers, slots, sandbox, key, last seen."""
    return await svc.store.runners.list()


@router.post("/admin/runners/{name}/forget")
async def forget_runner(name: str, svc: Svc, who: Admin) -> dict[str, str]:
    """Release a runner name from the key that registered it: the next key to
    register under it owns it (a runner re-keyed, or a name to give away)."""
    key_id = await svc.store.runners.forget(name)
    return {"name": name, "key_id": key_id}


async def owned_runner(runner_id: str, svc: Services, who: Principal) -> Runner:
    """The active runner ``runner_id``, if ``who`` registered it (or is an admin)."""
    runner = await svc.store.runners.get(runner_id)
    if runner.key_id != who.key_id and who.role is not Role.ADMIN:
        raise Forbidden("this runner was registered with another key")
    if runner.status != "active":
        raise Forbidden(f"runner {runner.name!r} is {runner.status}: register again")
    return runner


@router.post(paths.LEASE, response_model=LeaseResponse)
async def lease(
    runner_id: str, body: LeaseRequest, request: Request, svc: Svc, who: RunnerKey
) -> LeaseResponse:
    """Long-poll for work (up to ``wait`` seconds) and for cancellations of
    jobs this runner holds."""
    return await lease_jobs(runner_id, body, svc, who, request.is_disconnected)


# Leases handed to a poll that was cancelled meanwhile, being given back.
_giving_back: set[asyncio.Task[Any]] = set()


async def _left(svc: Services, waiter: handoff.Waiter, runner: Runner) -> list[Lease]:
    """What was handed to ``waiter``'s poll, which ends now; a poll that
    was cancelled (the runner stopping) gives them back at once."""
    leases = await svc.store.jobs.polls.leave(waiter)
    task = asyncio.current_task()
    if leases and task is not None and task.cancelling():
        back = asyncio.ensure_future(svc.store.jobs.unlease([x.job.id for x in leases], runner))
        _giving_back.add(back)
        back.add_done_callback(_giving_back.discard)
    return leases


async def lease_jobs(
    runner_id: str,
    body: LeaseRequest,
    svc: Services,
    who: Principal,
    disconnected: Callable[[], Awaitable[bool]],
) -> LeaseResponse:
    """``lease``, over any transport: ``disconnected`` says whether the runner
    went away while it waited."""
    runner = await owned_runner(runner_id, svc, who)
    deadline = time.monotonic() + min(body.wait, poll_wait(svc.settings))
    # Until confirmed, a job answered into a silent network cut is not held a whole lease.
    ttl = lease_confirm(svc.settings) if body.confirm else svc.settings.lease_ttl
    with svc.store.bus.subscribe(
        topics.DISPATCH, topics.runner(runner_id), topics.SERVER_STOPPING, maxsize=10_000
    ) as sub:
        cancel: list[str] = []
        while True:
            leases = await svc.store.jobs.lease(runner, body.max_jobs, ttl)
            remaining = deadline - time.monotonic()
            # Stopping: answer now, the runner's next poll goes to another replica.
            stop = svc.stopping or await disconnected()
            if leases or cancel or remaining <= 0 or stop:
                break
            # Meanwhile a job queued in this process may be leased for this
            # runner in the transaction creating it (store/jobs/handoff.py).
            waiter = svc.store.jobs.polls.enter(runner, body.max_jobs, ttl)
            try:
                messages = await sub.get(timeout=min(remaining, RECHECK_SECONDS))
            finally:
                leases = await _left(svc, waiter, runner)
            for message in messages:
                job_id = topics.cancelled(message)
                if job_id is not None:
                    cancel.append(job_id)
            if leases:
                break
    if leases and await disconnected():
        # The runner went away meanwhile (killed, network): nobody would run them.
        await svc.store.jobs.unlease([lease.job.id for lease in leases], runner)
        return LeaseResponse(jobs=[], cancel=cancel)
    jobs = []
    for lease in leases:
        job = lease.job
        claims = WorkerClaims(
            job_id=job.id, session_id=lease.session.id, epoch=job.epoch, runner_id=runner_id
        )
        with tracing.span(
            "lease",
            parent=job.traceparent,
            job_id=job.id,
            provider=job.provider,
            attempt=job.attempt,
            runner=runner.name,
        ) as context:
            jobs.append(
                LeasedJob(
                    job=job,
                    session=lease.session,
                    epoch=job.epoch,
                    token=auth.issue_worker_token(
                        claims, svc.jwt_secret, svc.settings.worker_token_ttl
                    ),
                    resume_handle=lease.session.handle,
                    traceparent=context,
                )
            )
    return LeaseResponse(jobs=jobs, cancel=cancel)


@router.post(
    paths.WORKER_EVENTS,
    response_model=EventsAccepted,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": EventBatch.model_json_schema()}},
        }
    },
)
async def post_worker_events(request: Request, svc: Svc, claims: Worker) -> EventsAccepted:
    """Runner protocol: append a job's events (event ids make a re-send a duplicate, not
    a second event)."""
    # The raw body straight into the models (pydantic-core parses the JSON):
    # FastAPI's own body handling parses it into Python objects first and
    # validates those, ~1.6x the time per event (issue #18).
    try:
        body = EventBatch.model_validate_json(await request.body())
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        raise RequestValidationError(errors) from None
    return await worker_events(body, svc, claims)


# The body it takes, for the protocol's tests (FastAPI does not see it).
post_worker_events.corral_body = EventBatch  # type: ignore[attr-defined]


async def worker_events(body: EventBatch, svc: Services, claims: WorkerClaims) -> EventsAccepted:
    """``POST /worker/events``, and the embedded runner's in-process call."""
    stored, duplicates = await svc.store.jobs.append_events(claims, body.events)
    return EventsAccepted(
        accepted=[e.seq for e in stored if e.seq is not None], duplicates=duplicates
    )


@router.put(paths.WORKER_STATE, response_model=StateRecorded)
async def worker_state(body: WorkerState, svc: Svc, claims: Worker) -> StateRecorded:
    """Runner protocol: the worker's state (`running` starts the job)."""
    if body.handle is not None:
        await svc.store.jobs.set_handle(claims, body.handle)
    if body.state == "running":
        job = await svc.store.jobs.start(claims, started_at=body.started_at)
        return StateRecorded(state=job.state)
    if body.state == "requires_action" and "question" in body.details:
        # The same as POST /worker/questions: the job waits for a person.
        asked = await questions.ask(svc, claims, questions.question_in(body.details))
        job = await svc.store.jobs.get(claims.job_id)
        return StateRecorded(state=job.state, question_id=asked.question_id)
    await svc.store.jobs.append_events(
        claims, [NewEvent(type="worker.state", payload={"state": body.state, **body.details})]
    )
    return StateRecorded(state=(await svc.store.jobs.get(claims.job_id)).state)


@router.put(paths.WORKER_ARTIFACT, response_model=Artifact)
async def worker_artifact(
    name: Annotated[str, Path(pattern=paths.ARTIFACT_NAME)],
    request: Request,
    svc: Svc,
    claims: Worker,
) -> Artifact:
    """Store a file the job produced (the raw body; its Content-Type is kept).
    Limited to ``max_artifact_bytes``."""
    data = await request.body()
    media_type = request.headers.get("content-type", "application/octet-stream")[:128]
    return await svc.store.jobs.put_artifact(claims, name, media_type, data)


@router.post(paths.WORKER_HEARTBEAT, response_model=Heartbeat)
async def worker_heartbeat(svc: Svc, claims: Worker) -> Heartbeat:
    """Runner protocol: extend the lease; answers a fresh worker token."""
    job = await svc.store.jobs.heartbeat(claims, svc.settings.lease_ttl)
    token = auth.issue_worker_token(claims, svc.jwt_secret, svc.settings.worker_token_ttl)
    return Heartbeat(token=token, state=job.state, lease_expires_in=svc.settings.lease_ttl)


@router.post(paths.WORKER_COMPLETE, response_model=Completed)
async def worker_complete(
    body: Completion, svc: Svc, claims: Worker, traceparent: TraceParent = None
) -> Completed:
    """Runner protocol: end the attempt with its outcome and last events."""
    with tracing.span("complete", parent=traceparent, job_id=claims.job_id, epoch=claims.epoch):
        job, duplicates = await svc.store.jobs.complete(
            claims, body.outcome, body.events, started_at=body.started_at
        )
        tracing.annotate(
            provider=job.provider, attempt=job.attempt, state=job.state, outcome=body.outcome.status
        )
        return Completed(state=job.state, attempt=job.attempt, duplicates=duplicates)
