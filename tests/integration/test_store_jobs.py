"""Every store operation on jobs, sessions and events, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

from corral.errors import (
    InvalidTransition,
    JobNotActive,
    JobNotFound,
    SessionNotFound,
    StaleEpoch,
)
from corral.jobs import JobState
from corral.models import JobCreate, NewEvent, Outcome, Runner
from corral.protocol import topics
from corral.store import Caps, RetryPolicy, Store
from corral.store.jobs import now_utc, state
from corral.store.schema import jobs, sessions
from corral.testing import job_row, session_row
from corral.testing import worker_claims as claims


async def _lease_one(store: Store, runner: Runner):  # type: ignore[no-untyped-def]
    leases = await store.jobs.lease(runner, 1, ttl=30)
    assert len(leases) == 1
    return leases[0]


async def test_create_get_and_list(store: Store) -> None:
    job, created = await store.jobs.create(JobCreate(prompt="echo hi", labels=["a"], title="t"))
    assert created and job.state is JobState.QUEUED and job.attempt == 1 and job.turn == 1
    assert (await store.jobs.get(job.id)).model_dump() == job.model_dump()
    other, _ = await store.jobs.create(JobCreate(command="true", priority=0))
    listed = await store.jobs.list()
    assert [j.id for j in listed] == [other.id, job.id]
    assert [j.id for j in await store.jobs.list(limit=1, before=other.id)] == [job.id]
    assert await store.jobs.list(states=[JobState.DONE]) == []
    assert (await store.jobs.counts()) == {"queued": 2}
    events = await store.events.list(job.session_id)
    assert [(e.seq, e.type, e.payload["to"]) for e in events] == [(1, "job.state", "queued")]
    with pytest.raises(JobNotFound):
        await store.jobs.get("nope")


async def test_list_filters_by_label_source_and_text(store: Store) -> None:
    a, _ = await store.jobs.create(JobCreate(prompt="Fix the 100% bug", labels=["ui", "x_y"]))
    b, _ = await store.jobs.create(JobCreate(command="make test", labels=["uix"], source="cli"))
    c, _ = await store.jobs.create(JobCreate(prompt="other", title="Release notes"))

    async def ids(**filters: str) -> list[str]:
        return [j.id for j in await store.jobs.list(**filters)]  # type: ignore[arg-type]

    assert await ids(label="ui") == [a.id]  # not "uix"
    assert await ids(label="x_y") == [a.id]
    assert await ids(label="x%") == []
    assert await ids(source="cli") == [b.id]
    assert await ids(text="100%") == [a.id]  # wildcards match themselves
    assert await ids(text="MAKE") == [b.id]  # case-insensitive; commands too
    assert await ids(text="release") == [c.id]  # and titles
    assert await ids(text="e", before=c.id) == [b.id, a.id]
    # Labels of 200+ characters share their head in job_labels: the job's own list decides.
    long_a, long_b = "l" * 200 + "a", "l" * 200 + "b"
    d, _ = await store.jobs.create(JobCreate(command="true", labels=[long_a]))
    e, _ = await store.jobs.create(JobCreate(command="true", labels=[long_b]))
    assert await ids(label=long_a) == [d.id]
    assert await ids(label=long_b) == [e.id]
    assert await ids(label="l" * 200) == []
    with pytest.raises(JobNotFound):
        await store.jobs.list(before="nope")


async def test_idempotency_key_returns_the_existing_job(store: Store) -> None:
    first, created = await store.jobs.create(JobCreate(prompt="a", idempotency_key="k"))
    again, created_again = await store.jobs.create(JobCreate(prompt="b", idempotency_key="k"))
    assert created and not created_again and again.id == first.id
    racing = await asyncio.gather(
        *(store.jobs.create(JobCreate(prompt="c", idempotency_key="race")) for _ in range(5))
    )
    assert len({job.id for job, _ in racing}) == 1
    assert sum(created for _, created in racing) == 1


async def test_turns_of_a_session_run_one_at_a_time_in_order(store: Store, runner: Runner) -> None:
    first, _ = await store.jobs.create(JobCreate(prompt="1", priority=5))
    second, _ = await store.jobs.create(
        JobCreate(prompt="2", session_id=first.session_id, priority=0)
    )
    assert second.turn == 2
    leases = await store.jobs.lease(runner, 10, ttl=30)
    assert [lease.job.id for lease in leases] == [first.id]  # priority does not jump the turn
    assert await store.jobs.lease(runner, 10, ttl=30) == []  # turn lock held
    await store.jobs.start(claims(leases[0], runner))
    assert await store.jobs.lease(runner, 10, ttl=30) == []  # and while it runs
    assert (await store.sessions.get(first.session_id)).active_job_id == first.id
    await store.jobs.complete(claims(leases[0], runner), Outcome(status="done", result="ok"))
    assert [lease.job.id for lease in await store.jobs.lease(runner, 10, ttl=30)] == [second.id]
    with pytest.raises(SessionNotFound):
        await store.jobs.create(JobCreate(prompt="x", session_id="missing"))


async def test_a_follow_up_turn_numbers_itself_and_works_in_the_first_turns_repo(
    store: Store,
) -> None:
    first, _ = await store.jobs.create(JobCreate(prompt="1", repo="/src/app", base="main"))
    before = await store.sessions.get(first.session_id)
    second, _ = await store.jobs.create(JobCreate(prompt="2", session_id=first.session_id))
    third, _ = await store.jobs.create(
        JobCreate(prompt="3", session_id=first.session_id, repo="/src/other", base="dev")
    )
    assert (second.turn, second.repo, second.base) == (2, "/src/app", "main")
    assert (third.turn, third.repo, third.base) == (3, "/src/other", "dev")  # its own, given
    after = await store.sessions.get(first.session_id)
    assert after.turns == 3 and after.updated_at >= before.updated_at


async def test_lease_order_is_priority_then_age_and_respects_slots(store: Store) -> None:
    small = await store.runners.register(
        name="small", key_id="k", hostname=None, providers=["shell"], labels=[], slots=2
    )
    low, _ = await store.jobs.create(JobCreate(prompt="low", priority=4))
    old, _ = await store.jobs.create(JobCreate(prompt="old", priority=1))
    new, _ = await store.jobs.create(JobCreate(prompt="new", priority=1))
    urgent, _ = await store.jobs.create(JobCreate(prompt="urgent", priority=0))
    other, _ = await store.jobs.create(JobCreate(prompt="x", provider="claude"))
    leased = await store.jobs.lease(small, 10, ttl=30)
    assert [lease.job.id for lease in leased] == [urgent.id, old.id]
    assert await store.jobs.lease(small, 10, ttl=30) == []  # slots full
    await store.jobs.complete(claims(leased[0], small), Outcome(status="done"))
    assert [lease.job.id for lease in await store.jobs.lease(small, 10, ttl=30)] == [new.id]
    assert (await store.jobs.get(low.id)).state is JobState.QUEUED
    assert (await store.jobs.get(other.id)).state is JobState.QUEUED  # no such provider here


async def test_concurrent_leases_never_hand_out_a_job_twice(store: Store) -> None:
    runners = [
        await store.runners.register(
            name=f"r{i}", key_id="k", hostname=None, providers=["shell"], labels=[], slots=50
        )
        for i in range(4)
    ]
    for i in range(40):
        await store.jobs.create(JobCreate(prompt=str(i)))
    results = await asyncio.gather(*(store.jobs.lease(r, 15, ttl=30) for r in runners * 2))
    ids = [lease.job.id for batch in results for lease in batch]
    assert len(ids) == len(set(ids)) == 40


async def test_full_lifecycle_and_events(store: Store, runner: Runner) -> None:
    job, _ = await store.jobs.create(JobCreate(prompt="echo"))
    lease = await _lease_one(store, runner)
    assert lease.job.state is JobState.ASSIGNED and lease.job.epoch == lease.session.epoch == 1
    c = claims(lease, runner)
    running = await store.jobs.start(c)
    assert running.state is JobState.RUNNING and running.started_at is not None
    stored, dups = await store.jobs.append_events(
        c,
        [
            NewEvent(event_id="e1", type="output", payload={"line": "a"}),
            NewEvent(event_id="e2", type="output", payload={"line": "b"}, internal=True),
            NewEvent(event_id="e3", type="delta", payload={"t": "x"}, ephemeral=True),
        ],
    )
    assert [e.seq for e in stored] == [4, 5] and dups == []
    done, _ = await store.jobs.complete(
        c,
        Outcome(status="done", result="b", exit_code=0, usage={"tokens": 3}, cost=0.5),
        [NewEvent(event_id="e1", type="output"), NewEvent(event_id="e4", type="output")],
    )
    assert done.state is JobState.DONE and done.result == "b" and done.finished_at
    assert done.usage == {"tokens": 3} and done.cost == 0.5
    visible = await store.events.list(job.session_id)
    everything = await store.events.list(job.session_id, internal=True)
    assert [e.seq for e in everything] == list(range(1, 8))  # no gaps, e3 never stored
    assert 5 not in [e.seq for e in visible]
    assert [e.payload.get("to") for e in everything if e.type == "job.state"] == [
        "queued",
        "assigned",
        "running",
        "done",
    ]
    assert [e.seq for e in await store.events.list(job.session_id, since=5)] == [6, 7]
    session = await store.sessions.get(job.session_id)
    assert session.last_seq == 7 and session.active_job_id is None


async def test_duplicate_event_ids_are_skipped_under_concurrency(
    store: Store, runner: Runner
) -> None:
    await store.jobs.create(JobCreate(prompt="x"))
    c = claims(await _lease_one(store, runner), runner)
    batches = [
        [NewEvent(event_id=f"e{(i * 7 + k) % 60}", type="output") for k in range(20)]
        for i in range(12)
    ]
    results = await asyncio.gather(*(store.jobs.append_events(c, b) for b in batches))
    stored = sorted(e.seq for accepted, _ in results for e in accepted if e.seq)
    assert len(stored) == 60
    seqs = [e.seq for e in await store.events.list(c.session_id)]
    assert seqs == list(range(1, len(seqs) + 1))


async def test_failure_retries_then_fails(store: Store, runner: Runner) -> None:
    job, _ = await store.jobs.create(JobCreate(prompt="x", max_attempts=2))
    first = await _lease_one(store, runner)
    again, _ = await store.jobs.complete(
        claims(first, runner), Outcome(status="failed", error="exit code 1", reason="exit_code")
    )
    assert again.state is JobState.QUEUED and again.attempt == 2 and again.runner_id is None
    second = await _lease_one(store, runner)
    assert second.job.epoch > first.job.epoch
    final, _ = await store.jobs.complete(claims(second, runner), Outcome(status="failed"))
    assert final.state is JobState.FAILED and final.attempt == 2 and final.error == "failed"
    retried = await store.jobs.retry(job.id)
    assert retried.state is JobState.QUEUED and retried.attempt == 3
    assert retried.max_attempts == 3 and retried.error is None


async def test_stale_epoch_and_inactive_jobs_refuse_writes(store: Store, runner: Runner) -> None:
    job, _ = await store.jobs.create(JobCreate(prompt="x", max_attempts=3))
    old = claims(await _lease_one(store, runner), runner)
    await store.jobs.start(old)
    # The runner re-registers (a restart): its jobs are released, epoch bumped.
    again = await store.runners.register(
        name="r1", key_id="k1", hostname="h", providers=["shell"], labels=[], slots=4
    )
    requeued = await store.jobs.get(job.id)
    assert requeued.state is JobState.QUEUED and requeued.reason == "runner_restarted"
    # Infrastructure, not the agent: the same attempt runs again.
    assert requeued.epoch > old.epoch and requeued.attempt == 1 and requeued.infra_retries == 1
    assert requeued.failure == "infra"
    for write in (
        store.jobs.append_events(old, [NewEvent(type="output")]),
        store.jobs.heartbeat(old, 30),
        store.jobs.complete(old, Outcome(status="done")),
        store.jobs.start(old),
    ):
        with pytest.raises(StaleEpoch):
            await write
    new = claims(await _lease_one(store, again), again)
    await store.jobs.cancel(job.id)
    with pytest.raises(JobNotActive):
        await store.jobs.append_events(new, [NewEvent(type="output")])
    with pytest.raises(InvalidTransition):
        await store.jobs.cancel(job.id)


async def test_watchdog_requeues_expired_leases(db_url: str) -> None:
    """A lost runner is infrastructure: the job runs again as the same attempt,
    until the infrastructure retry budget (here 1) is spent."""
    store = await Store.open(db_url, policy=RetryPolicy(max_infra_retries=1))
    try:
        runner = await store.runners.register(
            name="r1", key_id="k1", hostname="h", providers=["shell"], labels=[], slots=4
        )
        job, _ = await store.jobs.create(JobCreate(prompt="x", max_attempts=1))
        c = claims((await store.jobs.lease(runner, 1, ttl=0.01))[0], runner)
        await asyncio.sleep(0.05)
        lost = await store.jobs.expire()
        assert [j.id for j in lost] == [job.id]
        assert lost[0].state is JobState.QUEUED and lost[0].reason == "runner_lost"
        assert lost[0].attempt == 1 and lost[0].infra_retries == 1
        with pytest.raises(StaleEpoch):
            await store.jobs.heartbeat(c, 30)
        c2 = claims((await store.jobs.lease(runner, 1, ttl=0.01))[0], runner)
        await asyncio.sleep(0.05)
        (final,) = await store.jobs.expire()
        assert final.state is JobState.FAILED and "stopped heartbeating" in (final.error or "")
        assert "1 infrastructure retries spent" in (final.error or "")
        assert final.failure == "infra" and final.attempt == 1
        assert c2.epoch > c.epoch
        assert await store.jobs.expire() == []
    finally:
        await store.close()


async def test_an_expired_lease_fences_its_own_job_one_epoch_on(
    store: Store, runner: Runner
) -> None:
    """The watchdog moves only the lost job's epoch, by exactly one (a runner's
    journal proves a finished run by that "epoch + 1"), and queues it for now;
    another job at the same epoch keeps its worker."""
    lost, _ = await store.jobs.create(JobCreate(prompt="lost"))
    kept, _ = await store.jobs.create(JobCreate(prompt="kept"))
    gone = claims((await store.jobs.lease(runner, 1, ttl=0.01))[0], runner)
    await store.jobs.start(gone)
    alive = claims((await store.jobs.lease(runner, 1, ttl=60))[0], runner)
    assert (gone.job_id, alive.job_id, gone.epoch) == (lost.id, kept.id, alive.epoch)
    await asyncio.sleep(0.05)
    before = now_utc()
    (back,) = await store.jobs.expire()
    assert (back.id, back.state, back.epoch) == (lost.id, JobState.QUEUED, gone.epoch + 1)
    assert back.available_at >= before  # at once, not at its first queueing time
    assert (back.runner_id, back.assigned_at, back.started_at) == (None, None, None)
    events = await store.events.list(lost.session_id)
    assert [e.payload for e in events if e.type == "job.state"][-1] == {
        "job_id": lost.id,
        "from": "running",
        "to": "queued",
        "attempt": 1,
        "error": f"runner {runner.id} stopped heartbeating (lease expired)",
        "reason": "runner_lost",
    }
    assert (await store.sessions.get(lost.session_id)).epoch == back.epoch
    assert (await store.jobs.get(kept.id)).epoch == alive.epoch
    assert (await store.jobs.heartbeat(alive, 60)).state is JobState.ASSIGNED
    # Leased again: the assignment carries no error from the lost run.
    await store.jobs.lease(runner, 1, ttl=60)
    events = await store.events.list(lost.session_id)
    assert "error" not in [e.payload for e in events if e.type == "job.state"][-1]


async def test_a_repeated_start_is_answered_with_the_running_job(
    store: Store, runner: Runner
) -> None:
    job, _ = await store.jobs.create(JobCreate(prompt="x"))
    c = claims(await _lease_one(store, runner), runner)
    first = await store.jobs.start(c)
    again = await store.jobs.start(c)  # a retried request: nothing changes
    assert (again.id, again.state, again.started_at) == (job.id, "running", first.started_at)


async def test_a_worker_fenced_off_by_its_own_runner_is_refused(
    store: Store, runner: Runner
) -> None:
    """The same runner leases the job again after losing it: the worker of the
    lost lease (same runner, older epoch) is refused, the new one is not."""
    job, _ = await store.jobs.create(JobCreate(prompt="x"))
    old = claims((await store.jobs.lease(runner, 1, ttl=0.01))[0], runner)
    await asyncio.sleep(0.05)
    assert [j.id for j in await store.jobs.expire()] == [job.id]
    new = claims(await _lease_one(store, runner), runner)
    assert (new.runner_id, new.epoch) == (old.runner_id, old.epoch + 2)
    with pytest.raises(StaleEpoch) as refused:
        await store.jobs.heartbeat(old, 30)
    assert refused.value.message == (
        f"job {job.id} is at epoch {new.epoch}, this worker holds epoch {old.epoch}"
    )
    assert (await store.jobs.start(new)).state is JobState.RUNNING
    await store.jobs.cancel(job.id)
    with pytest.raises(JobNotActive) as ended:
        await store.jobs.heartbeat(new, 30)
    assert ended.value.message == f"job {job.id} is cancelled; stop working on it"
    with pytest.raises(JobNotFound) as missing:
        await store.jobs.cancel("job_missing")
    assert missing.value.message == "no job job_missing"


async def test_a_fresh_lease_is_kept_and_its_event_names_the_runner(
    store: Store, runner: Runner
) -> None:
    job, _ = await store.jobs.create(JobCreate(prompt="x"))
    (lease,) = await store.jobs.lease(runner, 1, ttl=60)
    assert await store.jobs.expire() == []  # a fresh lease is not taken back
    # The session as leased counts the "assigned" event: the worker's seqs follow it.
    assert lease.session.last_seq == (await store.sessions.get(job.session_id)).last_seq
    events = await store.events.list(job.session_id)
    [assigned] = [
        e.payload
        for e in events
        if e.type == "job.state" and e.payload["to"] == "assigned" and e.job_id == job.id
    ]
    assert assigned == {
        "job_id": job.id,
        "from": "queued",
        "to": "assigned",
        "attempt": 1,
        "runner_id": runner.id,
    }


async def test_state_changes_are_announced_after_commit(store: Store, runner: Runner) -> None:
    """Every state change wakes what waits on it: the job's watchers, the
    runners' long-polls when it is queued again, the sinks when it ends; and
    the jobs counter of /metrics counts it."""

    def entered(state: str) -> float:
        labels = {"provider": "shell", "state": state}
        return REGISTRY.get_sample_value("corral_jobs_total", labels) or 0.0

    job, _ = await store.jobs.create(JobCreate(prompt="x"))
    assigned, done = entered("assigned"), entered("done")
    with (
        store.bus.subscribe(topics.JOB_STATES) as states,
        store.bus.subscribe(topics.DISPATCH) as dispatch,
        store.bus.subscribe(topics.JOBS) as ended,
    ):
        await store.jobs.lease(runner, 1, ttl=30)
        assert await states.get(5) == [job.id]
        await store.jobs.unlease([job.id], runner)
        assert await dispatch.get(5) == [job.id]  # queued again: a runner may take it
        c = claims(await _lease_one(store, runner), runner)
        await store.jobs.complete(c, Outcome(status="done"))
        assert await ended.get(5) == [job.id]
        assert await states.get(5) == [job.id] * 3  # queued, assigned, done
        assert await dispatch.get(0.2) == []  # only a queued job wakes the runners
    assert (entered("assigned"), entered("done")) == (assigned + 2, done + 1)


async def test_a_heartbeat_sets_the_lease_deadline(store: Store, runner: Runner) -> None:
    """A heartbeat's ttl is the new deadline, shorter or longer: a runner that
    stops after a heartbeat still loses the job when that one runs out."""
    job, _ = await store.jobs.create(JobCreate(prompt="x"))
    c = claims((await store.jobs.lease(runner, 1, ttl=60))[0], runner)
    await store.jobs.heartbeat(c, 0.01)
    await asyncio.sleep(0.05)
    assert [j.id for j in await store.jobs.expire()] == [job.id]


async def test_a_replaced_runner_leases_nothing(store: Store, runner: Runner) -> None:
    await store.jobs.create(JobCreate(prompt="x"))
    again = await store.runners.register(
        name="r1", key_id="k1", hostname="h", providers=["shell"], labels=[], slots=4
    )
    assert again.id != runner.id
    assert await store.jobs.lease(runner, 1, ttl=30) == []  # its lease request came too late
    assert len(await store.jobs.lease(again, 1, ttl=30)) == 1


async def test_a_lease_waiting_for_another_of_the_same_runner_counts_what_it_gave(
    pg_url: str,
) -> None:
    """Two leases for one runner at once (PostgreSQL; SQLite has one writer):
    the second waits for the first on the runner's row and then counts the
    job the first gave it, so a one-slot runner gets one job, not two."""
    import asyncpg
    import sqlalchemy as sa

    store = await Store.open(pg_url)
    try:
        runner = await store.runners.register(
            name="r", key_id="k", hostname=None, providers=["shell"], labels=[], slots=1
        )
        first = (await store.jobs.create(JobCreate(prompt="x")))[0]
        second = (await store.jobs.create(JobCreate(prompt="y")))[0]
        # The first lease, by hand and held open: the runner's row locked
        # (as a lease stamps it), the first job given to it.
        conn = await asyncpg.connect(
            sa.make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
        )
        try:
            tx = conn.transaction()
            await tx.start()
            await conn.execute("UPDATE runners SET last_seen_at = now() WHERE id = $1", runner.id)
            await conn.execute(
                "UPDATE jobs SET state = 'assigned', runner_id = $1, assigned_at = now() "
                "WHERE id = $2",
                runner.id,
                first.id,
            )
            waiting = asyncio.create_task(store.jobs.lease(runner, 1, ttl=30))
            await asyncio.sleep(0.3)
            assert not waiting.done()  # it waits for the runner's row
            await tx.commit()
            assert await asyncio.wait_for(waiting, 10) == []
        finally:
            await conn.close()
        assert (await store.jobs.get(second.id)).state is JobState.QUEUED
    finally:
        await store.close()


async def test_a_runner_of_several_providers_leases_in_one_order_across_them(
    store: Store,
) -> None:
    """Each provider's queue is read on its own and the lease takes the
    most urgent of them all: priority, then age, whatever the provider, and
    no more than its room."""
    both = await store.runners.register(
        name="both", key_id="k", hostname=None, providers=["a", "b"], labels=[], slots=3
    )

    async def made(provider: str, priority: int) -> str:
        job, _ = await store.jobs.create(
            JobCreate(prompt="x", provider=provider, priority=priority)
        )
        return job.id

    a_old = await made("a", 2)
    b_urgent = await made("b", 1)
    a_urgent = await made("a", 1)
    b_low = await made("b", 3)
    leased = await store.jobs.lease(both, 10, ttl=30)
    assert [lease.job.id for lease in leased] == [b_urgent, a_urgent, a_old]
    assert (await store.jobs.get(b_low)).state is JobState.QUEUED


async def test_a_cap_filling_mid_lease_still_leases_at_most_max_jobs(db_url: str) -> None:
    """The lease looks again without a provider whose cap filled while it was
    leasing, for the room that is left, not more."""
    store = await Store.open(db_url, caps=Caps(providers={"a": 1}))
    try:
        runner = await store.runners.register(
            name="r", key_id="k", hostname=None, providers=["a", "b"], labels=[], slots=10
        )
        made = [
            (await store.jobs.create(JobCreate(prompt="x", provider=p)))[0]
            for p in ("a", "a", "b", "b", "b", "b")
        ]
        leased = await store.jobs.lease(runner, 3, ttl=30)
        assert [lease.job.id for lease in leased] == [made[0].id, made[2].id, made[3].id]
    finally:
        await store.close()


async def test_heartbeat_extends_the_lease(store: Store, runner: Runner) -> None:
    await store.jobs.create(JobCreate(prompt="x"))
    c = claims((await store.jobs.lease(runner, 1, ttl=0.2))[0], runner)
    await store.jobs.heartbeat(c, 60)
    await asyncio.sleep(0.3)
    assert await store.jobs.expire() == []


async def test_cancel_queued_and_running(store: Store, runner: Runner) -> None:
    queued, _ = await store.jobs.create(JobCreate(prompt="x"))
    cancelled = await store.jobs.cancel(queued.id, by="alice")
    assert cancelled.state is JobState.CANCELLED and cancelled.error == "cancelled by alice"
    running, _ = await store.jobs.create(JobCreate(prompt="y"))
    c = claims(await _lease_one(store, runner), runner)
    await store.jobs.start(c)
    with store.bus.subscribe(f"runner:{runner.id}") as sub:
        await store.jobs.cancel(running.id)
        assert await sub.get(1) == [f"cancel:{running.id}"]
    assert (await store.sessions.get(running.session_id)).active_job_id is None


async def test_sessions_and_handles(store: Store, runner: Runner) -> None:
    session = await store.sessions.create("chat")
    assert session.turns == 0 and session.title == "chat"
    await store.jobs.create(JobCreate(prompt="x", session_id=session.id))
    c = claims(await _lease_one(store, runner), runner)
    await store.jobs.set_handle(c, "agent-session-1")
    assert (await store.sessions.get(session.id)).handle == "agent-session-1"
    with pytest.raises(SessionNotFound):
        await store.sessions.get("missing")


async def test_events_are_published_after_commit(store: Store, runner: Runner) -> None:
    job, _ = await store.jobs.create(JobCreate(prompt="x"))
    with store.bus.subscribe(topics.session(job.session_id)) as sub:
        c = claims(await _lease_one(store, runner), runner)
        await store.jobs.append_events(c, [NewEvent(type="output", payload={"line": "hi"})])
        messages = await sub.get(1)
    seqs = [e.seq for batch in messages for e in batch]  # type: ignore[union-attr]
    assert seqs == [2, 3]


async def test_a_jobs_session_is_known_without_a_read_once_this_process_saw_the_job(
    store: Store, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, _ = await store.jobs.create(JobCreate(command="true"))
    other = await Store.open(db_url)  # another replica: it has not seen the job
    try:
        assert await other.jobs.session_of(job.id) == job.session_id  # read once
        with pytest.raises(JobNotFound):
            await other.jobs.session_of("0" * 32)

        async def no_reads(body: object) -> object:
            raise AssertionError("a read")

        for st in (store, other):
            monkeypatch.setattr(st.db, "read", no_reads)
            assert await st.jobs.session_of(job.id) == job.session_id
    finally:
        await other.close()


async def test_a_state_change_finds_its_job_by_key_when_the_statistics_are_old(
    store: Store,
) -> None:
    """A state change (``state.apply``'s compare-and-set on id, state and
    epoch) reads its one row by the primary key, also when the queued and
    running jobs came after PostgreSQL's last ANALYZE (of 3,000 finished
    jobs). With the state compared as a column, PostgreSQL took a state
    as next to none and found the row through an index that starts with the
    state (the lease's, whose last column is the id): every assignment walked
    every queued job, every end every running one."""
    at = datetime.now(UTC) - timedelta(days=1)
    old = [uuid.uuid4().hex for _ in range(3000)]
    new = [uuid.uuid4().hex for _ in range(2050)]
    rows = [job_row(s, at, state="queued" if i < 2000 else "running") for i, s in enumerate(new)]

    def seed(tx: Any) -> None:
        tx.conn.execute(sa.insert(sessions), [session_row(s, at) for s in old])
        tx.conn.execute(sa.insert(jobs), [job_row(s, at) for s in old])
        if tx.conn.dialect.name == "postgresql":
            tx.conn.execute(sa.text("ANALYZE jobs"))
        tx.conn.execute(sa.insert(sessions), [session_row(s, at) for s in new])
        tx.conn.execute(sa.insert(jobs), rows)

    await store.db.write(seed)
    by_id = "sqlite_autoindex_jobs_1" if store.db.is_sqlite else "pk_jobs"
    stmt = state._compare_and_set(("state", "updated_at"))
    for row, to in ((rows[1000], "assigned"), (rows[-1], "done")):
        params = {
            "w_id": row["id"],
            "w_state": row["state"],
            "w_epoch": 1,
            "v_state": to,
            "v_updated_at": at,
        }
        text = "\n".join(await store.db.read(lambda c: stmt.explain(c, params)))  # noqa: B023
        assert by_id in text, text
        assert "ix_jobs_state" not in text and "Seq Scan" not in text, text
