"""A new job handed to a runner whose lease poll waits in this process, in the
transaction that creates it (corral/store/jobs/handoff.py): leased there with
every dispatch rule, handed over only once that transaction committed, to one
waiter at a time, and never lost when the poll ends meanwhile or the
transaction fails. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from corral.auth import WorkerClaims
from corral.jobs import JobState
from corral.models import JobCreate, Outcome, Runner
from corral.routing import Decision
from corral.store import Store
from corral.store.db import Tx
from corral.store.jobs import create, handoff, now_utc


async def test_a_new_job_goes_to_the_waiting_poll_in_its_own_transaction(
    store: Store, runner: Runner
) -> None:
    writes = store.db.writes
    waiter = store.jobs.polls.enter(runner, 2, 30.0)
    job, _ = await store.jobs.create(JobCreate(command="true"))
    assert store.db.writes == writes + 1  # one transaction: created and leased
    # The submitter sees the job as committed: handed over, not queued.
    assert job.state is JobState.ASSIGNED and job.runner_id == runner.id and job.epoch == 1
    leases = await store.jobs.polls.leave(waiter)
    assert [lease.job.id for lease in leases] == [job.id]
    stored = await store.jobs.get(job.id)
    assert stored.state is JobState.ASSIGNED and stored.runner_id == runner.id
    assert stored.assigned_at == stored.created_at
    assert store.jobs.polls.handed == 1 and not store.jobs.polls
    # With nobody waiting, a job stays queued for the next lease.
    other, _ = await store.jobs.create(JobCreate(command="true"))
    assert (await store.jobs.get(other.id)).state is JobState.QUEUED


async def test_dispatch_rules_hold_a_handed_job_as_they_hold_a_leased_one(
    store: Store, runner: Runner
) -> None:
    # The kill switch holds every job: nothing is handed off.
    await store.settings.set("paused", "true")
    waiter = store.jobs.polls.enter(runner, 1, 30.0)
    held, _ = await store.jobs.create(JobCreate(command="true"))
    assert store.jobs.polls and (await store.jobs.get(held.id)).state is JobState.QUEUED
    await store.settings.set("paused", "false")
    assert [x.job.id for x in await store.jobs.lease(runner, 1, ttl=30)] == [held.id]
    first, _ = await store.jobs.create(JobCreate(command="true"))
    # The poll has one slot: the second job stays queued, the waiter is gone.
    second, _ = await store.jobs.create(JobCreate(command="true"))
    assert [x.job.id for x in await store.jobs.polls.leave(waiter)] == [first.id]
    assert (await store.jobs.get(second.id)).state is JobState.QUEUED
    # A runner that serves other providers is handed nothing and keeps waiting.
    codex = await store.runners.register(
        name="r2", key_id="k1", hostname="h", providers=["codex"], labels=[], slots=4
    )
    waiter = store.jobs.polls.enter(codex, 4, 30.0)
    third, _ = await store.jobs.create(JobCreate(command="true"))
    assert store.jobs.polls and (await store.jobs.get(third.id)).state is JobState.QUEUED
    assert await store.jobs.polls.leave(waiter) == []


async def test_a_failed_transaction_hands_nothing_and_frees_the_waiter(
    store: Store, runner: Runner
) -> None:
    waiter = store.jobs.polls.enter(runner, 1, 30.0)

    def created_then_failed(tx: Tx) -> None:
        now = now_utc()
        create.create(tx, JobCreate(command="true"), None, policy=store.jobs.policy, now=now)
        handoff.hand_off(
            tx, store.jobs.polls, "shell", caps=store.jobs.caps, skip_locked=False, now=now
        )
        raise RuntimeError("after the hand-off")

    with pytest.raises(RuntimeError):
        await store.db.write(created_then_failed)
    assert await store.jobs.list() == []  # rolled back, lease and all
    # The waiter is free again: the next job goes to it.
    job, _ = await store.jobs.create(JobCreate(command="true"))
    leases = await asyncio.wait_for(store.jobs.polls.leave(waiter), 5)
    assert [x.job.id for x in leases] == [job.id]


async def test_a_poll_that_ends_while_a_transaction_leases_for_it_gets_the_leases(
    store: Store, runner: Runner
) -> None:
    waiter = store.jobs.polls.enter(runner, 1, 30.0)
    assert store.jobs.polls.take("codex") is None  # its runner serves shell only
    taken = store.jobs.polls.take("shell")
    assert taken is waiter and store.jobs.polls.take("shell") is None  # one transaction at a time
    leaving = asyncio.ensure_future(store.jobs.polls.leave(waiter))
    await asyncio.sleep(0.05)
    assert not leaving.done()  # it waits for the transaction's outcome
    job, _ = await store.jobs.create(JobCreate(command="true"))
    [lease] = await store.jobs.lease(runner, 1, ttl=30)  # stands in for the transaction
    store.jobs.polls.settle(waiter, [lease])
    assert [x.job.id for x in await leaving] == [job.id]
    assert not store.jobs.polls


async def test_a_turns_first_events_and_its_assignment_take_the_seqs_their_session_row_reserved(
    store: Store, runner: Runner
) -> None:
    # The seqs of a new turn's first events are reserved with the session's
    # insert or turn update, the "assigned" event's with the turn lock
    # (events.append's ``reserved``): the log stays gapless and the session's
    # last_seq is its last event's, routed or not, handed off or leased.
    route = Decision(provider="shell", rule=5, reason="default provider")
    first, _ = await store.jobs.create(JobCreate(command="true"), route)
    waiter = store.jobs.polls.enter(runner, 1, 30.0)
    second, _ = await store.jobs.create(JobCreate(command="true", session_id=first.session_id))
    leased = await store.jobs.polls.leave(waiter)
    assert [x.job.id for x in leased] == [first.id]  # the older turn first
    log = await store.events.list(first.session_id, internal=True)
    assert [e.seq for e in log] == list(range(1, len(log) + 1))
    assert [e.type for e in log] == ["job.routed", "job.state", "job.state", "job.state"]
    assert [e.payload["to"] for e in log[1:]] == ["queued", "queued", "assigned"]
    assert (
        leased[0].session.last_seq
        == len(log)
        == (await store.sessions.get(first.session_id)).last_seq
    )
    assert leased[0].job.epoch == leased[0].session.epoch == log[-1].epoch == 1
    # The second turn waits for the first; its assignment by a lease reserves too.
    await store.jobs.complete(
        WorkerClaims(first.id, first.session_id, 1, runner.id), Outcome(status="done")
    )
    (lease,) = await store.jobs.lease(runner, 1, ttl=30)
    assert lease.job.id == second.id and lease.job.epoch == 2
    log = await store.events.list(first.session_id, internal=True)
    assert [e.seq for e in log] == list(range(1, len(log) + 1))
    assert lease.session.last_seq == len(log) == log[-1].seq
    assert (log[-1].type, log[-1].payload["to"], log[-1].epoch) == ("job.state", "assigned", 2)
