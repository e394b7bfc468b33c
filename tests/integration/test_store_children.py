"""Sub-jobs of a running job (its MCP gateway's submit_job), on SQLite and
PostgreSQL: recorded as children, reachable only by their parent's worker,
and refused, with nothing written, once that worker is fenced off."""

from __future__ import annotations

import pytest

from corral.errors import Forbidden, InvalidTransition, StaleEpoch, SubjobTooDeep
from corral.jobs import JobState
from corral.models import JobCreate, Runner
from corral.store import Store
from corral.store.jobs.policy import RetryPolicy
from corral.testing import worker_claims as claims


async def test_children_belong_to_their_parent_and_fencing_writes_nothing(
    store: Store, runner: Runner
) -> None:
    parent, _ = await store.jobs.create(JobCreate(prompt="parent"))
    (lease,) = await store.jobs.lease(runner, 1, ttl=30)
    held = claims(lease, runner)
    child, created = await store.jobs.create(
        JobCreate(prompt="child", source="mcp", mcp_tools=["corral.report_progress"]),
        parent=held,
    )
    assert created and child.parent_job_id == parent.id and child.state is JobState.QUEUED
    assert child.mcp_tools == ["corral.report_progress"]
    assert child.session_id != parent.session_id
    assert (await store.jobs.child(held, child.id)).id == child.id

    stranger, _ = await store.jobs.create(JobCreate(prompt="not a child"))
    with pytest.raises(Forbidden):
        await store.jobs.child(held, stranger.id)
    with pytest.raises(Forbidden):
        await store.jobs.cancel_child(held, stranger.id)
    assert (await store.jobs.get(stranger.id)).state is JobState.QUEUED

    cancelled = await store.jobs.cancel_child(held, child.id)
    assert (
        cancelled.state is JobState.CANCELLED and cancelled.error == f"cancelled by job {parent.id}"
    )
    with pytest.raises(InvalidTransition):
        await store.jobs.cancel_child(held, child.id)

    # The runner comes back (a restart): the old worker is fenced off.
    await store.runners.register(
        name="r1", key_id="k1", hostname="h", providers=["shell"], labels=[], slots=4
    )
    before = await store.jobs.counts()
    with pytest.raises(StaleEpoch):
        await store.jobs.create(JobCreate(prompt="late"), parent=held)
    with pytest.raises(StaleEpoch):
        await store.jobs.child(held, child.id)
    assert await store.jobs.counts() == before


async def test_sub_jobs_nest_no_deeper_than_max_subjob_depth(db_url: str) -> None:
    store = await Store.open(db_url, policy=RetryPolicy(max_subjob_depth=2))
    try:
        runner = await store.runners.register(
            name="r1", key_id="k1", hostname="h", providers=["shell"], labels=[], slots=4
        )
        await store.jobs.create(JobCreate(prompt="top"))  # depth 0
        chain = []
        for depth in (1, 2):
            (lease,) = await store.jobs.lease(runner, 1, ttl=30)
            child, _ = await store.jobs.create(
                JobCreate(prompt=f"depth {depth}"), parent=claims(lease, runner)
            )
            chain.append(child)
        assert chain[1].parent_job_id == chain[0].id
        (lease,) = await store.jobs.lease(runner, 1, ttl=30)
        assert lease.job.id == chain[1].id
        before = await store.jobs.counts()
        with pytest.raises(SubjobTooDeep, match="max_subjob_depth"):
            await store.jobs.create(JobCreate(prompt="depth 3"), parent=claims(lease, runner))
        assert await store.jobs.counts() == before  # nothing written
    finally:
        await store.close()
