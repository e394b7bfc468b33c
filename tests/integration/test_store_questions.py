"""Questions a worker asks a person (store/questions.py), on SQLite and PostgreSQL:
asked, shown as ``waiting_for``, answered or expired, fenced by the epoch."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from corral.auth import WorkerClaims
from corral.errors import JobNotActive, NotWaiting, QuestionNotFound, StaleEpoch
from corral.models import JobCreate, Outcome, Runner
from corral.store import Store
from corral.store.jobs.state import now_utc
from corral.store.schema import questions
from corral.testing import worker_claims


async def _running(store: Store, runner: Runner) -> WorkerClaims:
    await store.jobs.create(JobCreate(command="true"))
    [lease] = await store.jobs.lease(runner, 1, ttl=30)
    claims = worker_claims(lease, runner)
    await store.jobs.start(claims)
    return claims


async def _types(store: Store, claims: WorkerClaims) -> list[tuple[str, dict[str, object]]]:
    events = await store.events.list(claims.session_id)
    return [
        (e.type, e.payload) for e in events if e.type.startswith("job.") and e.type != "job.state"
    ]


async def test_ask_wait_answer(store: Store, runner: Runner) -> None:
    claims = await _running(store, runner)
    asked = await store.questions.ask(claims, "q1", "Deploy to prod?", ["yes", "no"], 60)
    assert asked.state == "open" and asked.job_id == claims.job_id
    assert asked.expires_at is not None and asked.expires_at > asked.asked_at

    shown = (await store.questions.waiting_for([claims.job_id]))[claims.job_id]
    assert (shown.question_id, shown.question, shown.options) == (
        "q1",
        "Deploy to prod?",
        ["yes", "no"],
    )
    assert shown.asked_at == asked.asked_at

    # Asking again with the same id (a retried request) records nothing new.
    again = await store.questions.ask(claims, "q1", "Deploy to prod?", ["yes", "no"], 60)
    assert again.question_id == "q1"
    assert [t for t, _ in await _types(store, claims)] == ["job.question"]

    assert (await store.questions.poll(claims, "q1")).state == "open"
    answered = await store.questions.answer(claims.job_id, "yes, go", by="alice")
    assert (answered.state, answered.answer, answered.answered_by) == (
        "answered",
        "yes, go",
        "alice",
    )
    polled = await store.questions.poll(claims, "q1")
    assert polled.state == "answered" and polled.reply() == "yes, go"
    assert await store.questions.waiting_for([claims.job_id]) == {}

    assert await _types(store, claims) == [
        (
            "job.question",
            {
                "question_id": "q1",
                "question": "Deploy to prod?",
                "options": ["yes", "no"],
                "timeout": 60.0,
                "expires_at": asked.expires_at.isoformat(),
            },
        ),
        (
            "job.answer",
            {"question_id": "q1", "state": "answered", "text": "yes, go", "by": "alice"},
        ),
    ]
    # Answered once: a second answer finds nothing to answer.
    with pytest.raises(NotWaiting):
        await store.questions.answer(claims.job_id, "again", by="bob")


async def test_a_question_past_its_timeout_expires_with_no_answer(
    store: Store, runner: Runner
) -> None:
    claims = await _running(store, runner)
    await store.questions.ask(claims, "q-timeout", "Anyone?", timeout=60)
    # Its timeout passes (moved into the past rather than slept through).
    past = now_utc() - timedelta(seconds=1)
    await store.db.write(
        lambda tx: tx.conn.execute(
            sa.update(questions).where(questions.c.id == "q-timeout").values(expires_at=past)
        )
    )
    assert await store.questions.waiting_for([claims.job_id]) == {}
    with pytest.raises(NotWaiting):
        await store.questions.answer(claims.job_id, "too late", by="alice")
    expired = await store.questions.poll(claims, "q-timeout")
    assert expired.state == "expired" and expired.answer is None
    assert expired.reply().startswith("no answer")
    assert (await _types(store, claims))[-1] == (
        "job.answer",
        {"question_id": "q-timeout", "state": "expired", "text": None},
    )


async def test_a_fenced_worker_cannot_ask_or_wait(store: Store, runner: Runner) -> None:
    claims = await _running(store, runner)
    await store.questions.ask(claims, "q-old", "Still there?")
    # The runner registers again (a restart): the job is re-queued at a new epoch.
    again = await store.runners.register(
        name=runner.name,
        key_id=runner.key_id,
        hostname="h",
        providers=["shell"],
        labels=[],
        slots=4,
    )
    assert again.id != runner.id
    with pytest.raises(StaleEpoch):
        await store.questions.ask(claims, "q-stale", "Hello?")
    with pytest.raises(StaleEpoch):
        await store.questions.poll(claims, "q-old")
    # Nothing changed: no new question, and the old one is not shown any more.
    assert await store.questions.waiting_for([claims.job_id]) == {}
    assert [p["question_id"] for t, p in await _types(store, claims)] == ["q-old"]
    with pytest.raises(NotWaiting):
        await store.questions.answer(claims.job_id, "late", by="alice")


async def test_a_job_that_ends_stops_waiting(store: Store, runner: Runner) -> None:
    claims = await _running(store, runner)
    await store.questions.ask(claims, "q-end", "Continue?")
    assert claims.job_id in await store.questions.waiting_for([claims.job_id])
    await store.jobs.complete(claims, Outcome(status="done", result="went on"))
    assert await store.questions.waiting_for([claims.job_id]) == {}
    with pytest.raises(NotWaiting):
        await store.questions.answer(claims.job_id, "yes", by="alice")
    with pytest.raises(JobNotActive):
        await store.questions.poll(claims, "q-end")


async def test_several_questions_are_answered_oldest_first_or_by_id(
    store: Store, runner: Runner
) -> None:
    claims = await _running(store, runner)
    await store.questions.ask(claims, "first", "One?")
    await store.questions.ask(claims, "second", "Two?")
    assert (await store.questions.waiting_for([claims.job_id]))[
        claims.job_id
    ].question_id == "first"
    by_id = await store.questions.answer(claims.job_id, "2", by="a", question_id="second")
    assert by_id.question_id == "second"
    oldest = await store.questions.answer(claims.job_id, "1", by="a")
    assert oldest.question_id == "first"
    with pytest.raises(QuestionNotFound):
        await store.questions.poll(claims, "never-asked")


async def test_one_job_or_several_are_shown_alike(store: Store, runner: Runner) -> None:
    """GET /jobs/{id} asks for one job (a statement built once), a page of
    jobs for several (built per page): both say the same of each job."""
    asking, other = await _running(store, runner), await _running(store, runner)
    quiet = await _running(store, runner)
    await store.questions.ask(asking, "older", "One?")
    await store.questions.ask(asking, "newer", "Two?")
    await store.questions.ask(other, "only", "Three?", timeout=30)
    ids = [asking.job_id, other.job_id, quiet.job_id]
    together = await store.questions.waiting_for(ids)
    alone = {}
    for job_id in ids:
        alone.update(await store.questions.waiting_for([job_id]))
    assert together == alone
    assert {k: v.question_id for k, v in alone.items()} == {
        asking.job_id: "older",
        other.job_id: "only",
    }
    assert alone[other.job_id].expires_at is not None
