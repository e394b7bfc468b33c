"""The dashboard's writes: form POSTs under ``/ui``, each checked by
``web.writer`` (a live session, its CSRF token, the role), then 303 back to
the page, with the error to show when the action was refused."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError

from corral.errors import Conflict, CorralError, InvalidInput
from corral.intake.submit import submit
from corral.jobs import TERMINAL, JobState
from corral.models import JobCreate
from corral.protocol import topics
from corral.ui import web

router = APIRouter(include_in_schema=False)

AGENT_ACTIONS = ("start", "stop", "restart")


def _spec(fields: dict[str, str], **extra: object) -> JobCreate:
    """A job from the submit form: empty fields are absent."""
    raw: dict[str, object] = {
        k: v.strip()
        for k, v in fields.items()
        if k in ("prompt", "command", "provider", "repo", "title") and v.strip()
    }
    if "priority" in fields and fields["priority"].strip():
        raw["priority"] = fields["priority"].strip()
    labels = [x.strip() for x in fields.get("labels", "").split(",") if x.strip()]
    if labels:
        raw["labels"] = labels
    if "provider" in raw:
        raw["preferred_ai"] = raw.pop("provider")
    # The page sends the time in UTC (run_at_utc, filled by its script); a bare
    # local time (no script ran) is refused by JobCreate: it names no time zone.
    when = (fields.get("run_at_utc") or fields.get("run_at") or "").strip()
    if when:
        raw["run_at"] = when
    try:
        return JobCreate.model_validate({**raw, **extra, "source_ref": "dashboard"})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "form"
        raise InvalidInput(f"{where}: {first['msg']}") from None


@router.post("/ui/jobs", response_model=None)
async def submit_job(request: Request) -> Response:
    _, fields = await web.writer(request, "write")
    try:
        job, _ = await submit(web.services(request), _spec(fields))
    except CorralError as exc:
        return web.back(fields, "/ui/jobs", exc)
    return RedirectResponse(f"/ui/jobs/{job.id}", status_code=303)


@router.post("/ui/jobs/bulk", response_model=None)
async def bulk(request: Request) -> Response:
    """Cancel (the unfinished) or retry (the failed and cancelled) of the
    newest ``BULK_MAX`` jobs a filter of the jobs page matches."""
    who, fields = await web.writer(request, "write")
    svc = web.services(request)
    action = fields.get("action")
    filters: dict[str, Any] = {k: fields.get(k, "") for k in ("provider", "label", "source", "q")}
    filters["state"] = [s for s in fields.get("states", "").split(",") if s]
    query = urlencode({k: v for k, v in filters.items() if v}, doseq=True)
    try:
        if action not in ("cancel", "retry"):
            raise InvalidInput(f"unknown bulk action {action!r}")
        done = 0
        for job in await web.matching(svc, filters, web.BULK_MAX):
            try:
                if action == "cancel" and job.state not in TERMINAL:
                    await svc.store.jobs.cancel(job.id, by=who.principal.name)
                elif action == "retry" and job.state in (JobState.FAILED, JobState.CANCELLED):
                    await svc.store.jobs.retry(job.id)
                else:
                    continue
            except Conflict:
                continue  # it moved on meanwhile
            done += 1
    except CorralError as exc:
        return web.back({"next": f"/ui/jobs?{query}"}, "/ui/jobs", exc)
    verb = "cancelled" if action == "cancel" else "queued again"
    notice = quote(f"{done} job{'s' if done != 1 else ''} {verb}")
    return RedirectResponse(f"/ui/jobs?{query}&notice={notice}", status_code=303)


@router.post("/ui/jobs/{job_id}/cancel", response_model=None)
async def cancel_job(request: Request, job_id: str) -> Response:
    who, fields = await web.writer(request, "write")
    try:
        jobs = web.services(request).store.jobs
        await jobs.cancel(await jobs.resolve(job_id), by=who.principal.name)
    except CorralError as exc:
        return web.back(fields, f"/ui/jobs/{job_id}", exc)
    return web.back(fields, f"/ui/jobs/{job_id}")


@router.post("/ui/jobs/{job_id}/retry", response_model=None)
async def retry_job(request: Request, job_id: str) -> Response:
    _, fields = await web.writer(request, "write")
    try:
        jobs = web.services(request).store.jobs
        await jobs.retry(await jobs.resolve(job_id))
    except CorralError as exc:
        return web.back(fields, f"/ui/jobs/{job_id}", exc)
    return web.back(fields, f"/ui/jobs/{job_id}")


@router.post("/ui/deliveries/{delivery_id}/redeliver", response_model=None)
async def redeliver(request: Request, delivery_id: str) -> Response:
    """Send a webhook delivery again (``POST /webhooks/deliveries/{id}/redeliver``)."""
    _, fields = await web.writer(request, "write")
    try:
        await web.services(request).store.outbox.redeliver(delivery_id, datetime.now(UTC))
    except CorralError as exc:
        return web.back(fields, "/ui/jobs", exc)
    return web.back(fields, "/ui/jobs")


@router.post("/ui/jobs/{job_id}/answer", response_model=None)
async def answer_job(request: Request, job_id: str) -> Response:
    """Answer the question the job waits on (``question_id`` from the form)."""
    who, fields = await web.writer(request, "write")
    store = web.services(request).store
    # An option's button sends `text`; the Answer button, the field `custom`.
    text = (fields.get("text") or fields.get("custom") or "").strip()
    try:
        if not text:
            raise InvalidInput("write an answer (or pick one of the options)")
        job_id = await store.jobs.resolve(job_id)
        await store.questions.answer(
            job_id, text, by=who.principal.name, question_id=fields.get("question_id") or None
        )
    except CorralError as exc:
        return web.back(fields, f"/ui/jobs/{job_id}", exc)
    return web.back(fields, f"/ui/jobs/{job_id}")


@router.post("/ui/sessions/{session_id}/turns", response_model=None)
async def add_turn(request: Request, session_id: str) -> Response:
    _, fields = await web.writer(request, "write")
    back = f"/ui/sessions/{session_id}"
    svc = web.services(request)
    try:
        session_id = await svc.store.sessions.resolve(session_id)
        job, _ = await submit(svc, _spec(fields, session_id=session_id))
    except CorralError as exc:
        return web.back(fields, back, exc)
    return RedirectResponse(f"/ui/jobs/{job.id}", status_code=303)


@router.post("/ui/pause", response_model=None)
async def pause(request: Request) -> Response:
    _, fields = await web.writer(request, "admin")
    await web.services(request).store.settings.set("paused", "true")
    return web.back(fields, "/ui/fleet")


@router.post("/ui/resume", response_model=None)
async def resume(request: Request) -> Response:
    _, fields = await web.writer(request, "admin")
    await web.services(request).store.settings.set("paused", "false", notify=topics.DISPATCH)
    return web.back(fields, "/ui/fleet")


@router.post("/ui/providers/{name}/resume", response_model=None)
async def resume_provider(request: Request, name: str) -> Response:
    _, fields = await web.writer(request, "admin")
    await web.services(request).store.jobs.unpause(name)
    return web.back(fields, "/ui/fleet")


@router.post("/ui/agents/{name}/{action}", response_model=None)
async def agent_action(request: Request, name: str, action: str) -> Response:
    """Record start, stop or restart; the agent's runner applies it and the
    page hears the new status on /sse/status."""
    _, fields = await web.writer(request, "write")
    if action not in AGENT_ACTIONS:
        return web.back(fields, f"/ui/agents/{name}", InvalidInput(f"unknown action {action!r}"))
    try:
        await web.services(request).store.agents.act(name, action)
    except CorralError as exc:
        return web.back(fields, f"/ui/agents/{name}", exc)
    return web.back(fields, f"/ui/agents/{name}")
