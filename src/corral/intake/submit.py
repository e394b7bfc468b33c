"""The one way work comes in: every entry point (``POST /jobs``, session
turns, the Ollama-compatible chat and generate, the queue folder, and the
intake sources to come) submits through ``submit()``."""

from __future__ import annotations

from corral import egress, tracing
from corral.auth import WorkerClaims
from corral.models import Job, JobCreate
from corral.services import Services


async def submit(
    services: Services,
    spec: JobCreate,
    *,
    parent: WorkerClaims | None = None,
    traceparent: str | None = None,
) -> tuple[Job, bool]:
    """Route ``spec`` (``Services.route``: a follow-up turn prefers its
    session's provider) and create its job. Returns ``(job, created)``:
    ``created`` is False when the idempotency key names a job made before.
    Raises ``Unroutable`` (422) when no provider may run it, and the store's
    errors (an unknown session: 404), and ``WebhookRefused`` (422) for a
    webhook aimed into the server's own network (``corral.egress``).
    ``parent``: a running job's worker submits a sub-job through its MCP
    gateway (refused, 409, once that worker was fenced off). ``traceparent``:
    the caller's W3C trace context, the parent of the submit span
    (corral.tracing); the job keeps the submit span's."""
    with tracing.span("submit", parent=traceparent, source=spec.source) as context:
        await egress.check_webhook(spec, services.settings)
        decision = await services.route(spec)
        job, created = await services.store.jobs.create(
            spec, decision, parent=parent, traceparent=context
        )
        tracing.annotate(job_id=job.id, provider=job.provider, attempt=job.attempt)
        return job, created
