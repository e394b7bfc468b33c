"""The store's side of a runner's journal (``Store.jobs.recover``,
lifecycle.recover), on SQLite and PostgreSQL: which entries end the job, what
a recovered job looks like (runner, times, the infrastructure retry given
back, the note), and the answer and ``job.journal_dropped`` event for every
way a job can have moved on. tests/integration/test_journal_replay.py drives
the same code over POST /runners/register."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from corral.auth import WorkerClaims
from corral.jobs import JobState
from corral.models import Event, Job, JobCreate, NewEvent, Outcome, Runner, WebhookSpec
from corral.protocol import JournalAnswer, JournalEntry
from corral.store import Store
from corral.store.db import Tx
from corral.store.schema import sessions
from corral.testing import worker_claims

STARTED = datetime(2026, 12, 1, 8, 0, 0, tzinfo=UTC)
FINISHED = datetime(2026, 12, 1, 8, 5, 0, tzinfo=UTC)
DONE = Outcome(status="done", result="ok", exit_code=0)


def _entry(
    entry_id: str, *, started_at: datetime | None = STARTED, outcome: Outcome = DONE
) -> JournalEntry:
    return JournalEntry(
        id=entry_id,
        token="",  # checked by the API, not the store
        started_at=started_at,
        finished_at=FINISHED,
        outcome=outcome,
        events=[NewEvent(event_id=f"{entry_id}-line", type="output", payload={"line": "x"})],
        events_omitted=2,
        artifacts=["out.txt"],
    )


async def _present(
    store: Store, claims: WorkerClaims, entry: JournalEntry, key_id: str = "k1"
) -> JournalAnswer:
    (answer,) = await store.jobs.recover(key_id, [(claims, entry)])
    assert (answer.id, answer.job_id) == (entry.id, claims.job_id)
    return answer


async def _leased(store: Store, runner: Runner) -> WorkerClaims:
    (lease,) = await store.jobs.lease(runner, 1, ttl=60)
    return worker_claims(lease, runner)


async def _restart(store: Store, name: str = "r1") -> Runner:
    """The runner comes back without its journal: its jobs are released."""
    return await store.runners.register(
        name=name, key_id="k1", hostname="h", providers=["shell"], labels=[], slots=4
    )


async def _events(store: Store, job: Job, type_: str) -> list[Event]:
    return [e for e in await store.events.list(job.session_id) if e.type == type_]


async def _set_turn_lock(store: Store, session_id: str, job_id: str | None) -> None:
    def body(tx: Tx) -> None:
        tx.conn.execute(
            sa.update(sessions).where(sessions.c.id == session_id).values(active_job_id=job_id)
        )

    await store.db.write(body)


def _note(runner: Runner) -> dict[str, Any]:
    return {"from_runner": runner.name, "finished_at": FINISHED.isoformat(), "reason": "journal"}


async def _assert_dropped(
    store: Store, job: Job, runner: Runner, answer: JournalAnswer, entry: JournalEntry, why: str
) -> None:
    now = await store.jobs.get(job.id)
    assert (answer.result, answer.state, answer.detail) == ("dropped", now.state.value, why)
    (dropped,) = await _events(store, job, "job.journal_dropped")
    assert (dropped.event_id, dropped.job_id, dropped.epoch) == (entry.id, job.id, now.epoch)
    assert dropped.payload == {**_note(runner), "why": why, "status": "done"}
    assert now.recovered is None
    assert not await _events(store, job, "job.recovered")


async def test_a_released_job_is_put_back_on_its_runner_and_ended(
    store: Store, runner: Runner
) -> None:
    """Released by the runner's restart, then presented: running again on the
    runner that ran it (started and assigned when the process started), the
    released run's infrastructure retry given back, the outcome applied, the
    note on the job and its events."""
    job, _ = await store.jobs.create(JobCreate(prompt="x"))
    claims = await _leased(store, runner)
    await store.jobs.start(claims)
    bystander, _ = await store.jobs.create(JobCreate(prompt="another session"))
    await _restart(store)
    queued = await store.jobs.get(job.id)
    assert (queued.state, queued.epoch, queued.infra_retries) == ("queued", claims.epoch + 1, 1)
    assert (await store.sessions.get(job.session_id)).active_job_id is None

    answer = await _present(store, claims, _entry("e1"))
    assert (answer.result, answer.state, answer.detail) == ("recovered", "done", None)
    done = await store.jobs.get(job.id)
    assert (done.state, done.result, done.attempt, done.infra_retries) == ("done", "ok", 1, 0)
    assert (done.runner_id, done.assigned_at, done.started_at) == (runner.id, STARTED, STARTED)
    assert done.recovered == _note(runner)
    moves = [(e.payload["from"], e.payload["to"]) for e in await _events(store, job, "job.state")]
    assert moves[-2:] == [("queued", "running"), ("running", "done")]
    back = (await _events(store, job, "job.state"))[-2]
    assert {k: back.payload.get(k) for k in _note(runner)} == _note(runner)
    (recovered,) = await _events(store, job, "job.recovered")
    assert recovered.event_id == "e1"
    assert recovered.payload == {**_note(runner), "artifacts": ["out.txt"], "events_omitted": 2}
    assert [e.event_id for e in await _events(store, job, "output")] == ["e1-line"]
    # The turn is over: the session's turn lock is free for the next one;
    # no other session's lock was touched.
    assert (await store.sessions.get(job.session_id)).active_job_id is None
    assert (await store.sessions.get(bystander.session_id)).active_job_id is None


async def test_a_recovered_job_without_a_start_time_starts_when_it_finished(
    store: Store, runner: Runner
) -> None:
    job, _ = await store.jobs.create(JobCreate(prompt="x"))
    claims = await _leased(store, runner)
    await _restart(store)
    answer = await _present(store, claims, _entry("e1", started_at=None))
    assert answer.result == "recovered"
    done = await store.jobs.get(job.id)
    assert (done.assigned_at, done.started_at, done.infra_retries) == (FINISHED, FINISHED, 0)


async def test_only_the_last_release_is_given_back(store: Store, runner: Runner) -> None:
    """Released twice: the first release's retry was spent on a real second
    run, only the second one's re-queue was not needed."""
    job, _ = await store.jobs.create(JobCreate(prompt="x"))
    await _leased(store, runner)
    r2 = await _restart(store)
    claims = await _leased(store, r2)
    await _restart(store)
    assert (await store.jobs.get(job.id)).infra_retries == 2
    answer = await _present(store, claims, _entry("e1"))
    assert answer.result == "recovered"
    done = await store.jobs.get(job.id)
    assert (done.state, done.infra_retries, done.runner_id) == ("done", 1, r2.id)


async def test_a_failed_outcome_recovered_takes_an_attempt(store: Store, runner: Runner) -> None:
    """The outcome is applied as the runner's completion would have been: a
    failed run with attempts left is retried (attempt + 1), not ended."""
    job, _ = await store.jobs.create(JobCreate(prompt="x", max_attempts=2))
    claims = await _leased(store, runner)
    await _restart(store)
    failed = Outcome(status="failed", error="boom", exit_code=1)
    answer = await _present(store, claims, _entry("e1", outcome=failed))
    assert (answer.result, answer.state) == ("recovered", "queued")
    again = await store.jobs.get(job.id)
    assert (again.state, again.attempt, again.infra_retries) == ("queued", 2, 0)
    assert (await store.sessions.get(job.session_id)).active_job_id is None


async def test_a_job_still_held_is_ended_and_keeps_its_own_start(
    store: Store, runner: Runner
) -> None:
    """Held at that epoch by that runner (no restart seen): ended as is. Its
    start is the one the server recorded; one it never saw is the entry's."""
    running, _ = await store.jobs.create(JobCreate(prompt="running"))
    held = await _leased(store, runner)
    started = (await store.jobs.start(held)).started_at
    assert started is not None and started != STARTED
    assigned, _ = await store.jobs.create(JobCreate(prompt="assigned"))
    unstarted = await _leased(store, runner)

    assert (await _present(store, held, _entry("e1"))).result == "recovered"
    done = await store.jobs.get(running.id)
    assert (done.state, done.started_at, done.infra_retries) == ("done", started, 0)
    assert done.recovered == _note(runner)

    assert (await _present(store, unstarted, _entry("e2"))).result == "recovered"
    assert (await store.jobs.get(assigned.id)).started_at == STARTED
    assert (await _present(store, unstarted, _entry("e3", started_at=None))).result == "recorded"


async def test_a_job_held_at_that_epoch_by_another_runner_is_not_ended(
    store: Store, runner: Runner
) -> None:
    """Claims naming another runner of the same key at the job's epoch (the
    lease was not that runner's): the job keeps its run."""
    job, _ = await store.jobs.create(JobCreate(prompt="x"))
    claims = await _leased(store, runner)
    other = await _restart(store, "r2")
    forged = replace(claims, runner_id=other.id)
    entry = _entry("e1")
    answer = await _present(store, forged, entry)
    why = (
        f"the job was leased again (epoch {claims.epoch}, runner {runner.id}) and keeps its new run"
    )
    await _assert_dropped(store, job, other, answer, entry, why)
    assert (await store.jobs.get(job.id)).state is JobState.ASSIGNED


async def test_presented_again_is_recorded_whatever_happened(store: Store, runner: Runner) -> None:
    job, _ = await store.jobs.create(JobCreate(prompt="x"))
    claims = await _leased(store, runner)
    await _present(store, claims, _entry("e1"))
    before = await store.events.list(job.session_id)
    answer = await _present(store, claims, _entry("e1"))
    assert (answer.result, answer.state, answer.detail) == (
        "recorded",
        "done",
        "this entry was presented before",
    )
    assert await store.events.list(job.session_id) == before


async def test_a_completion_that_landed_is_recorded(store: Store, runner: Runner) -> None:
    job, _ = await store.jobs.create(JobCreate(prompt="x"))
    claims = await _leased(store, runner)
    await store.jobs.complete(claims, DONE, [])
    before = await store.events.list(job.session_id)
    answer = await _present(store, claims, _entry("e1"))
    assert (answer.result, answer.state, answer.detail) == ("recorded", "done", None)
    assert await store.events.list(job.session_id) == before
    assert (await store.jobs.get(job.id)).recovered is None


async def test_a_cancelled_job_is_dropped_and_its_webhook_told(
    store: Store, runner: Runner
) -> None:
    hook = WebhookSpec(url="http://a/hook", events=["job.journal_dropped"])
    job, _ = await store.jobs.create(JobCreate(prompt="x", webhook=hook))
    claims = await _leased(store, runner)
    await store.jobs.cancel(job.id)
    entry = _entry("e1")
    answer = await _present(store, claims, entry)
    await _assert_dropped(store, job, runner, answer, entry, "the job was cancelled")
    assert (await store.jobs.get(job.id)).state is JobState.CANCELLED
    (told,) = [d for d in await store.outbox.list(job_id=job.id) if d["event"] != "job.state"]
    assert (told["url"], told["event"], told["body"]["state"]) == (
        "http://a/hook",
        "job.journal_dropped",
        "cancelled",
    )
    assert told["body"]["event"]["payload"]["why"] == "the job was cancelled"


async def test_a_job_leased_again_is_dropped(store: Store, runner: Runner) -> None:
    job, _ = await store.jobs.create(JobCreate(prompt="x"))
    claims = await _leased(store, runner)
    r2 = await _restart(store)
    again = await _leased(store, r2)
    entry = _entry("e1")
    answer = await _present(store, claims, entry)
    why = f"the job was leased again (epoch {again.epoch}, runner {r2.id}) and keeps its new run"
    await _assert_dropped(store, job, runner, answer, entry, why)
    now = await store.jobs.get(job.id)
    assert (now.state, now.runner_id, now.infra_retries) == ("assigned", r2.id, 1)
    assert (await store.sessions.get(job.session_id)).active_job_id == job.id


async def test_a_lease_never_delivered_is_not_the_runners_to_end(
    store: Store, runner: Runner
) -> None:
    """Queued one epoch on, but not by the runner's loss (an undelivered lease
    gives the job back before it runs): the entry does not end it."""
    job, _ = await store.jobs.create(JobCreate(prompt="x"))
    claims = await _leased(store, runner)
    await store.jobs.unlease([job.id], runner)
    entry = _entry("e1")
    answer = await _present(store, claims, entry)
    why = "the job was queued again (lease_undelivered) and is not the runner's to end"
    await _assert_dropped(store, job, runner, answer, entry, why)
    assert (await store.jobs.get(job.id)).state is JobState.QUEUED


async def test_a_released_job_is_not_taken_back_from_another_turn(
    store: Store, runner: Runner
) -> None:
    """The session's turn lock held by another of its turns: the released job
    stays queued and the lock stays where it is. Held by the job itself (or
    free): it is recovered and takes the lock."""
    job, _ = await store.jobs.create(JobCreate(prompt="1"))
    turn2, _ = await store.jobs.create(JobCreate(prompt="2", session_id=job.session_id))
    elsewhere, _ = await store.jobs.create(JobCreate(prompt="other session"))
    claims = await _leased(store, runner)
    assert claims.job_id == job.id
    await _restart(store)
    # Another session holds its own lock: it does not matter here.
    await _set_turn_lock(store, elsewhere.session_id, elsewhere.id)
    await _set_turn_lock(store, job.session_id, turn2.id)
    entry = _entry("e1")
    answer = await _present(store, claims, entry)
    why = "the job was queued again (runner_restarted) and is not the runner's to end"
    await _assert_dropped(store, job, runner, answer, entry, why)
    assert (await store.jobs.get(job.id)).state is JobState.QUEUED
    assert (await store.sessions.get(job.session_id)).active_job_id == turn2.id

    await _set_turn_lock(store, job.session_id, job.id)
    answer = await _present(store, claims, _entry("e2"))
    assert (answer.result, answer.state) == ("recovered", "done")
    # Ended: the lock it took is let go for turn 2; the other session keeps its own.
    assert (await store.sessions.get(job.session_id)).active_job_id is None
    assert (await store.sessions.get(elsewhere.session_id)).active_job_id == elsewhere.id


async def test_a_job_that_ran_again_since_is_dropped(store: Store, runner: Runner) -> None:
    job, _ = await store.jobs.create(JobCreate(prompt="x"))
    claims = await _leased(store, runner)
    r2 = await _restart(store)
    await _leased(store, r2)
    r3 = await _restart(store)
    queued = await store.jobs.get(job.id)
    assert queued.epoch == claims.epoch + 3
    entry = _entry("e1")
    answer = await _present(store, claims, entry)
    why = f"the job ran again since (epoch {queued.epoch}) and is queued"
    await _assert_dropped(store, job, runner, answer, entry, why)

    # Ran again once (released, leased again: two epochs on) and ended there.
    await store.jobs.cancel(job.id)  # out of the way of the next leases
    other, _ = await store.jobs.create(JobCreate(prompt="y"))
    first = await _leased(store, r3)
    r4 = await _restart(store)
    second = await _leased(store, r4)
    assert (first.job_id, second.job_id, second.epoch) == (other.id, other.id, first.epoch + 2)
    await store.jobs.complete(second, Outcome(status="done", result="second"), [])
    answer = await _present(store, first, _entry("e2"))
    why = f"the job ran again since (epoch {second.epoch}) and is done"
    assert (answer.result, answer.state, answer.detail) == ("dropped", "done", why)
    assert (await store.jobs.get(other.id)).result == "second"


async def test_a_job_failed_by_its_release_stays_failed(store: Store, runner: Runner) -> None:
    """Released with its infrastructure retries spent, the job failed one
    epoch on: the entry does not bring it back."""
    job, _ = await store.jobs.create(JobCreate(prompt="x"))
    current = runner
    for _ in range(store.jobs.policy.max_infra_retries):
        await _leased(store, current)
        current = await _restart(store)
    claims = await _leased(store, current)
    await _restart(store)
    failed = await store.jobs.get(job.id)
    assert (failed.state, failed.epoch) == ("failed", claims.epoch + 1)
    entry = _entry("e1")
    answer = await _present(store, claims, entry)
    why = "the job is failed (runner_restarted)"
    await _assert_dropped(store, job, current, answer, entry, why)


async def test_unknown_runners_keys_and_jobs_are_dropped(store: Store, runner: Runner) -> None:
    job, _ = await store.jobs.create(JobCreate(prompt="x"))
    claims = await _leased(store, runner)
    other_key = "the job was leased to a runner of another key"
    for key_id, c in (
        ("k2", claims),
        ("k1", replace(claims, runner_id="no-such-runner")),
    ):
        answer = await _present(store, c, _entry(f"e-{key_id}"), key_id=key_id)
        assert (answer.result, answer.state, answer.detail) == ("dropped", None, other_key)
    for c in (
        replace(claims, job_id="no-such-job"),
        replace(claims, session_id="no-such-session"),
    ):
        answer = await _present(store, c, _entry(f"e-{c.job_id}-{c.session_id}"))
        assert (answer.result, answer.state, answer.detail) == ("dropped", None, "no such job")
    now = await store.jobs.get(job.id)
    assert (now.state, now.recovered) == ("assigned", None)
    assert not await _events(store, job, "job.journal_dropped")
