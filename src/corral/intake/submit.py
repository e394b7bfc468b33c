"""The one way work comes in: every entry point (``POST /jobs``, session
turns, the Ollama-compatible chat and generate, the queue folder, and the
intake sources to come) submits through ``submit()``."""

from __future__ import annotations

from corral import egress
from corral.auth import WorkerClaims
from corral.models import Job, JobCreate
from corral.services import Services


async def submit(
    services: Services, spec: JobCreate, *, parent: WorkerClaims | None = None
) -> tuple[Job, bool]:
    """Route ``spec`` (``Services.route``: a follow-up turn prefers its
    session's provider) and create its job. Returns ``(job, created)``:
    ``created`` is False when the idempotency key names a job made before.
    Raises ``Unroutable`` (422) when no provider may run it, and the store's
    errors (an unknown session: 404), and ``WebhookRefused`` (422) for a
    webhook aimed into the server's own network (``corral.egress``).
    ``parent``: a running job's worker submits a sub-job through its MCP
    gateway (refused, 409, once that worker was fenced off)."""
    await egress.check_webhook(spec, services.settings)
    decision = await services.route(spec)
    return await services.store.jobs.create(spec, decision, parent=parent)
