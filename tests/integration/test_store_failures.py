"""Failure classes, quota pauses with fallback, the per-repo cap and
artifacts, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from corral.errors import ArtifactNotFound, JobNotFound
from corral.jobs import JobState
from corral.models import JobCreate, Outcome
from corral.store import Caps, RetryPolicy, Store
from corral.testing import worker_claims as claims


@pytest.fixture
async def st(db_url: str) -> AsyncIterator[Store]:
    store = await Store.open(
        db_url,
        policy=RetryPolicy(
            backoff_base=0, backoff_max=0, max_infra_retries=2, fallbacks={"claude": "codex"}
        ),
        caps=Caps(repo=1),
    )
    try:
        yield store
    finally:
        await store.close()


async def _runner(st: Store, *providers: str):  # type: ignore[no-untyped-def]
    return await st.runners.register(
        name="r", key_id="k", hostname=None, providers=list(providers), labels=[], slots=10
    )


async def test_only_agent_errors_consume_attempts(st: Store) -> None:
    runner = await _runner(st, "shell")
    _job, _ = await st.jobs.create(JobCreate(prompt="x", max_attempts=2))
    for n in (1, 2):
        [lease] = await st.jobs.lease(runner, 1, ttl=30)
        infra = Outcome(status="failed", failure="infra", reason="stalled", error="no output")
        again, _ = await st.jobs.complete(claims(lease, runner), infra)
        assert again.state is JobState.QUEUED and again.attempt == 1
        assert again.infra_retries == n and again.available_at <= datetime.now(UTC)
    [lease] = await st.jobs.lease(runner, 1, ttl=30)
    agent = Outcome(status="failed", failure="agent", error="tests fail")
    again, _ = await st.jobs.complete(claims(lease, runner), agent)
    assert again.state is JobState.QUEUED and again.attempt == 2
    [lease] = await st.jobs.lease(runner, 1, ttl=30)
    # The infrastructure budget (2) is spent: the third infra failure ends it.
    final, _ = await st.jobs.complete(
        claims(lease, runner), Outcome(status="failed", failure="infra", error="killed")
    )
    assert final.state is JobState.FAILED and final.failure == "infra"
    assert "2 infrastructure retries spent" in (final.error or "")


async def test_bad_input_fails_at_once(st: Store) -> None:
    runner = await _runner(st, "shell")
    await st.jobs.create(JobCreate(prompt="x", max_attempts=5))
    [lease] = await st.jobs.lease(runner, 1, ttl=30)
    final, _ = await st.jobs.complete(
        claims(lease, runner), Outcome(status="failed", failure="input", error="no such repo")
    )
    assert final.state is JobState.FAILED and final.attempt == 1 and final.failure == "input"


async def test_quota_pauses_the_provider_and_falls_back(st: Store) -> None:
    runner = await _runner(st, "claude")
    other = await st.runners.register(
        name="r2", key_id="k", hostname=None, providers=["codex"], labels=[], slots=10
    )
    first, _ = await st.jobs.create(JobCreate(prompt="a", provider="claude"))
    waiting, _ = await st.jobs.create(JobCreate(prompt="b", provider="claude"))
    [lease] = await st.jobs.lease(runner, 1, ttl=30)
    assert lease.job.id == first.id
    reset = datetime.now(UTC) + timedelta(minutes=5)
    quota = Outcome(status="failed", failure="quota", error="429 rate limited", retry_at=reset)
    again, _ = await st.jobs.complete(claims(lease, runner), quota)
    # Re-queued as the same attempt, and moved to the fallback with the waiting one.
    assert again.state is JobState.QUEUED and again.attempt == 1
    assert again.provider == "codex" and "claude is paused" in (again.route_reason or "")
    assert (await st.jobs.get(waiting.id)).provider == "codex"
    for job in (first, waiting):  # every job moved says so in its session
        [routed] = [
            e.payload for e in await st.events.list(job.session_id) if e.type == "job.routed"
        ]
        assert (routed["job_id"], routed["from"], routed["provider"]) == (job.id, "claude", "codex")
    [pause] = await st.jobs.pauses()
    assert pause.provider == "claude" and pause.fallback == "codex"
    assert abs((pause.until - reset).total_seconds()) < 1
    # New jobs for the paused provider go to the fallback too.
    new, _ = await st.jobs.create(JobCreate(prompt="c", provider="claude"))
    assert new.provider == "codex"
    assert await st.jobs.lease(runner, 10, ttl=30) == []
    assert len(await st.jobs.lease(other, 10, ttl=30)) == 3
    events = [e.payload for e in await st.events.list(new.session_id) if e.type == "job.routed"]
    assert events[-1]["provider"] == "codex" and events[-1]["from"] == "claude"
    # Lifting the pause routes new jobs to claude again.
    assert await st.jobs.unpause("claude") is True
    assert await st.jobs.pauses() == []
    later, _ = await st.jobs.create(JobCreate(prompt="d", provider="claude"))
    assert later.provider == "claude"


async def test_quota_without_fallback_waits_until_the_reset(st: Store) -> None:
    runner = await _runner(st, "gpu")
    job, _ = await st.jobs.create(JobCreate(prompt="a", provider="gpu"))
    [lease] = await st.jobs.lease(runner, 1, ttl=30)
    await st.jobs.complete(
        claims(lease, runner), Outcome(status="failed", failure="quota", error="usage limit")
    )
    queued = await st.jobs.get(job.id)
    assert queued.provider == "gpu" and queued.state is JobState.QUEUED
    assert await st.jobs.lease(runner, 1, ttl=30) == []
    why = await st.jobs.waiting(queued)
    assert why is not None and why.startswith("provider 'gpu' is paused by a quota limit until")


async def _until(check, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    """Poll ``check`` (a coroutine function) until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (got := await check()):
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)
    return got


async def test_a_quota_pause_ends_by_itself_at_its_reset(st: Store) -> None:
    """No hand lifts this pause: once its reset time passes, the queued job
    is leased on its own provider, and new jobs route there again instead of
    to the fallback."""
    runner = await _runner(st, "gpu", "claude")
    job, _ = await st.jobs.create(JobCreate(prompt="a", provider="gpu"))
    [lease] = await st.jobs.lease(runner, 1, ttl=30)
    reset = datetime.now(UTC) + timedelta(seconds=1.5)
    quota = Outcome(status="failed", failure="quota", error="429", retry_at=reset)
    await st.jobs.complete(claims(lease, runner), quota)
    assert await st.jobs.lease(runner, 1, ttl=30) == []
    assert [p.provider for p in await st.jobs.pauses()] == ["gpu"]
    [again] = await _until(lambda: st.jobs.lease(runner, 1, ttl=30))
    assert datetime.now(UTC) >= reset
    assert again.job.id == job.id and again.job.provider == "gpu" and again.job.attempt == 1
    assert await st.jobs.pauses() == []
    # The same for a provider with a fallback: while paused its new jobs go
    # to the fallback; after the reset, to itself.
    first, _ = await st.jobs.create(JobCreate(prompt="b", provider="claude"))
    [lease] = await st.jobs.lease(runner, 1, ttl=30)
    assert lease.job.id == first.id
    reset = datetime.now(UTC) + timedelta(seconds=1.5)
    quota = Outcome(status="failed", failure="quota", error="429", retry_at=reset)
    await st.jobs.complete(claims(lease, runner), quota)
    during, _ = await st.jobs.create(JobCreate(prompt="c", provider="claude"))
    assert during.provider == "codex"
    await _until(lambda: _pauses_over(st))
    after, _ = await st.jobs.create(JobCreate(prompt="d", provider="claude"))
    assert after.provider == "claude" and datetime.now(UTC) >= reset


async def _pauses_over(st: Store) -> bool:
    return await st.jobs.pauses() == []


async def test_repo_cap(st: Store) -> None:
    runner = await _runner(st, "shell")
    a1, _ = await st.jobs.create(JobCreate(prompt="x", repo="/src/a"))
    a2, _ = await st.jobs.create(JobCreate(prompt="x", repo="/src/a"))
    b1, _ = await st.jobs.create(JobCreate(prompt="x", repo="/src/b"))
    plain, _ = await st.jobs.create(JobCreate(prompt="x"))
    leased = await st.jobs.lease(runner, 10, ttl=30)
    assert sorted(lease.job.id for lease in leased) == sorted([a1.id, b1.id, plain.id])
    assert await st.jobs.waiting(await st.jobs.get(a2.id)) == "repo cap: 1/1 jobs active in /src/a"
    first = next(lease for lease in leased if lease.job.id == a1.id)
    await st.jobs.complete(claims(first, runner), Outcome(status="done"))
    [lease] = await st.jobs.lease(runner, 10, ttl=30)
    assert lease.job.id == a2.id and lease.job.repo == "/src/a"


async def test_artifacts(st: Store) -> None:
    runner = await _runner(st, "shell")
    job, _ = await st.jobs.create(JobCreate(prompt="x"))
    [lease] = await st.jobs.lease(runner, 1, ttl=30)
    c = claims(lease, runner)
    await st.jobs.put_artifact(c, "diff.patch", "text/x-diff", b"old")
    await st.jobs.put_artifact(c, "diff.patch", "text/x-diff", b"\x00binary\xff")
    await st.jobs.put_artifact(c, "changes.json", "application/json", b"{}")
    listed = await st.jobs.artifacts(job.id)
    assert [(a.name, a.size) for a in listed] == [("changes.json", 2), ("diff.patch", 8)]
    meta, data = await st.jobs.artifact(job.id, "diff.patch")
    assert data == b"\x00binary\xff" and meta.media_type == "text/x-diff"
    with pytest.raises(ArtifactNotFound):
        await st.jobs.artifact(job.id, "nope")
    with pytest.raises(JobNotFound):
        await st.jobs.artifacts("nope")
