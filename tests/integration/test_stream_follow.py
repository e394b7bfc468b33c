"""A job's event stream (``corral.api.stream.follow``, behind
``GET /jobs/{id}/events`` as SSE): it ends with the job's final state, on
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

from corral.api import stream
from corral.models import Event, JobCreate, Outcome, Runner
from corral.store import Store
from corral.testing import worker_claims


async def test_it_ends_at_the_final_state_not_at_one_an_operator_retried(
    store: Store, runner: Runner
) -> None:
    """From the log, a terminal state the job has left since (a retry) is
    passed; a live one ends the stream (without reading the job again)."""
    job, _ = await store.jobs.create(JobCreate(command="true"))
    await store.jobs.cancel(job.id)
    await store.jobs.retry(job.id)
    seen: list[Event] = []

    async def follow() -> None:
        async for batch in stream.follow(store, job.session_id, since=0, buffer=100, job_id=job.id):
            seen.extend(batch)

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.2)
    assert not task.done()  # the old "cancelled" did not end it
    [lease] = await store.jobs.lease(runner, 1, ttl=30)
    claims = worker_claims(lease, runner)
    await store.jobs.start(claims)
    await store.jobs.complete(claims, Outcome(status="done"))
    await asyncio.wait_for(task, 5)
    states = [e.payload["to"] for e in seen if e.type == "job.state"]
    assert states[-1] == "done" and "cancelled" in states
    assert states.index("cancelled") < states.index("queued", states.index("cancelled"))
