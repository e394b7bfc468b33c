"""A job's life once it is queued: what operators and workers do to it, and
what happens when its runner goes away. Each function is one transaction body
(given a ``Tx``); every state change goes through ``state.apply``."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from corral import metrics, pricing
from corral.auth import WorkerClaims
from corral.budgets import Budget
from corral.jobs import ACTIVE, Action, JobState, backoff
from corral.models import Event, Job, NewEvent, Outcome, Runner
from corral.protocol import JournalAnswer, JournalEntry, topics
from corral.store import events as event_log
from corral.store import outbox
from corral.store import sessions as session_store
from corral.store.db import Tx
from corral.store.jobs import budgets as budget_rules
from corral.store.jobs import quota
from corral.store.jobs.policy import RetryPolicy
from corral.store.jobs.state import (
    ACTIVE_STATES,
    Row,
    applied,
    apply,
    fence,
    locked,
    owned,
    to_job,
)
from corral.store.schema import events, jobs, runners, sessions


def cancel(tx: Tx, job_id: str, *, by: str, now: datetime) -> Job:
    row = locked(tx, job_id)
    job = apply(
        tx,
        row,
        Action.CANCEL,
        now=now,
        values={"error": f"cancelled by {by}", "reason": "cancelled"},
    )
    if row.runner_id is not None and JobState(row.state) in ACTIVE:
        tx.notify(topics.runner(row.runner_id), topics.cancel(job_id))
    return job


def retry(tx: Tx, job_id: str, *, now: datetime) -> Job:
    """One more attempt of an ended job, from a clean slate."""
    row = locked(tx, job_id)
    return apply(
        tx,
        row,
        Action.RETRY,
        now=now,
        values={
            "max_attempts": max(row.max_attempts, row.attempt + 1),
            # A scheduled job cancelled before its time keeps its time.
            "available_at": max(now, row.run_at) if row.run_at else now,
            "result": None,
            "error": None,
            "reason": None,
            "failure": None,
            "infra_retries": 0,
            "exit_code": None,
            "finished_at": None,
            "usage": None,
            "cost": None,
            "cost_source": None,
            "input_tokens": None,
            "output_tokens": None,
            "message": None,
            "recovered": None,
        },
        note={"manual": True},
    )


def start(tx: Tx, claims: WorkerClaims, *, started_at: datetime | None, now: datetime) -> Job:
    row = owned(tx, claims)
    if row.state == JobState.RUNNING:
        return to_job(row)
    return apply(tx, row, Action.START, now=now, values={"started_at": started_at or now})


def heartbeat(tx: Tx, claims: WorkerClaims, *, ttl: float, now: datetime) -> Job:
    owned(tx, claims)
    return to_job(
        tx.conn.execute(
            sa.update(jobs)
            .where(jobs.c.id == claims.job_id)
            .values(lease_expires_at=now + timedelta(seconds=ttl))
            .returning(*jobs.c)
        ).one()
    )


def append_events(
    tx: Tx,
    claims: WorkerClaims,
    items: Sequence[NewEvent],
    *,
    now: datetime,
    texts: Sequence[str] | None = None,
) -> tuple[list[Event], list[str]]:
    """A worker's events: stored (a known ``event_id`` is a duplicate, skipped)
    and announced to the job's webhooks. ``texts``: their payloads' JSON."""
    return _events(tx, owned(tx, claims), claims, items, now, texts)


def _events(
    tx: Tx,
    row: Row,
    claims: WorkerClaims,
    items: Sequence[NewEvent],
    now: datetime,
    texts: Sequence[str] | None = None,
) -> tuple[list[Event], list[str]]:
    stored, duplicates = event_log.append(
        tx,
        claims.session_id,
        items,
        job_id=claims.job_id,
        epoch=claims.epoch,
        now=now,
        texts=texts,
    )
    outbox.on_events(tx, row, tx.webhooks, stored, now)
    results = [e.payload for e in stored if e.type == "tool.result"]
    if results:
        tx.after_commit.append(functools.partial(metrics.tool_results, results))
    return stored, duplicates


def set_handle(tx: Tx, claims: WorkerClaims, handle: str | None) -> None:
    owned(tx, claims)
    session_store.set_handle(tx, claims.session_id, handle)


def complete(
    tx: Tx,
    claims: WorkerClaims,
    outcome: Outcome,
    items: Sequence[NewEvent],
    *,
    texts: Sequence[str] | None = None,
    policy: RetryPolicy,
    budgets: Sequence[Budget] = (),
    now: datetime,
    started_at: datetime | None = None,
) -> tuple[Job, list[str]]:
    """End the attempt with the worker's outcome (and its last events). Where
    the job goes depends on the failure class: bad input fails at once, the
    infrastructure and quotas re-queue the same attempt, the agent's own
    failures are retried after a backoff while attempts are left.
    ``started_at``: a start the worker did not report on its own (the job
    ended first) is recorded first, as ``start`` would have. ``texts``: the
    events' payloads' JSON."""
    row = owned(tx, claims)
    if started_at is not None and row.state == JobState.ASSIGNED:
        _, row = applied(tx, row, Action.START, now=now, values={"started_at": started_at})
    duplicates = _events(tx, row, claims, items, now, texts)[1] if items else []
    model = row.model or _model(outcome.usage)
    cost, source = pricing.price(
        outcome.cost, outcome.usage, model, policy.prices.get(row.provider)
    )
    counts = pricing.tokens(outcome.usage)
    values: dict[str, Any] = {
        "result": outcome.result,
        "exit_code": outcome.exit_code,
        "usage": outcome.usage,
        "cost": cost,
        "cost_source": source,
        "input_tokens": counts.input if counts.any else None,
        "output_tokens": counts.output if counts.any else None,
        "message": outcome.message,
    }
    job = _end(tx, row, outcome, values, policy=policy, now=now)
    if job.cost and job.finished_at is not None and budgets:
        budget_rules.spend(tx, locked(tx, job.id), budgets, fallbacks=policy.fallbacks, now=now)
    return job, duplicates


def _end(
    tx: Tx,
    row: Row,
    outcome: Outcome,
    values: dict[str, Any],
    *,
    policy: RetryPolicy,
    now: datetime,
) -> Job:
    """Where the attempt goes by its failure class (``complete``)."""
    if outcome.status == "done":
        values.update(error=None, reason=None, failure=None)
        return apply(tx, row, Action.SUCCEED, now=now, values=values)
    failure = outcome.failure or "agent"
    values.update(
        error=outcome.error or "failed", reason=outcome.reason or "error", failure=failure
    )
    if failure in ("input", "budget"):
        return apply(tx, row, Action.REJECT, now=now, values=values)
    if failure == "infra":
        return _infra(tx, row, now=now, values=values, budget=policy.max_infra_retries)
    if failure == "quota":
        return quota.requeue(tx, row, values, retry_at=outcome.retry_at, policy=policy, now=now)
    if row.attempt < row.max_attempts:
        delay = backoff(row.attempt, base=policy.backoff_base, cap=policy.backoff_max)
        values["available_at"] = now + timedelta(seconds=delay)
    return apply(tx, row, Action.FAIL, now=now, values=values)


def _model(usage: dict[str, Any] | None) -> str | None:
    """The model a chat executor says it used (``usage["model"]``)."""
    model = (usage or {}).get("model")
    return model if isinstance(model, str) and model else None


def unlease(tx: Tx, job_ids: Sequence[str], runner: Runner, *, now: datetime) -> list[Job]:
    """Leases ``runner`` never received (it went away while its lease request
    was answered): queued again at once, the same attempt, with nothing spent;
    the epoch moves on, so the runner's writes are refused if it got them after
    all. A first turn lets go of its session too."""
    back = []
    for job_id in job_ids:
        row = locked(tx, job_id)
        if row.state != JobState.ASSIGNED.value or row.runner_id != runner.id:
            continue
        bumped = fence(tx, row)
        if row.turn == 1:
            tx.conn.execute(
                sa.update(sessions)
                .where(sessions.c.id == row.session_id, sessions.c.host == runner.name)
                .values(host=None)
            )
        error = f"runner {runner.name!r} went away before it received the job"
        values = {"available_at": now, "attempt": row.attempt, "error": error}
        values["reason"] = "lease_undelivered"
        back.append(apply(tx, bumped, Action.LOSE, now=now, values=values))
    return back


def expire(tx: Tx, *, max_infra_retries: int, skip_locked: bool, now: datetime) -> list[Job]:
    """Watchdog: jobs whose lease ran out lose their runner."""
    stmt = (
        sa.select(jobs)
        .where(jobs.c.state.in_(ACTIVE_STATES), jobs.c.lease_expires_at < now)
        .limit(500)
    )
    if skip_locked:
        stmt = stmt.with_for_update(skip_locked=True)
    return [
        lose(
            tx,
            row,
            reason="runner_lost",
            now=now,
            error=f"runner {row.runner_id} stopped heartbeating (lease expired)",
            max_infra_retries=max_infra_retries,
        )
        for row in tx.conn.execute(stmt).all()
    ]


def lose(
    tx: Tx, row: Row, *, reason: str, error: str, now: datetime, max_infra_retries: int
) -> Job:
    """The runner holding ``row`` is gone: bump the epoch so its writes are
    refused, then re-queue the job (same attempt) or, with the infrastructure
    retry budget spent, fail it."""
    return _infra(
        tx,
        fence(tx, row),
        now=now,
        values={"error": error, "reason": reason},
        budget=max_infra_retries,
    )


def _infra(tx: Tx, row: Row, *, now: datetime, values: dict[str, Any], budget: int) -> Job:
    """An infrastructure failure: queued again at once as the same attempt,
    unless the job already used up its infrastructure retries."""
    values = {**values, "failure": "infra"}
    if row.infra_retries >= budget:
        values["error"] = (
            f"{values['error']} (gave up: {row.infra_retries} infrastructure retries spent)"
        )
        return apply(tx, row, Action.REJECT, now=now, values=values)
    values.update(available_at=now, attempt=row.attempt, infra_retries=row.infra_retries + 1)
    return apply(tx, row, Action.LOSE, now=now, values=values)


# The reasons ``lose`` re-queues a job with: its runner went away, maybe after
# the job's process had finished there.
RELEASED = ("runner_lost", "runner_restarted")


def recover(
    tx: Tx,
    key_id: str,
    claims: WorkerClaims,
    entry: JournalEntry,
    *,
    policy: RetryPolicy,
    budgets: Sequence[Budget] = (),
    now: datetime,
) -> JournalAnswer:
    """A runner presents an outcome from its journal: the job ran there (at
    ``claims.epoch``, proven by the worker JWT the server signed) and its
    process ended, but the runner saw no acknowledgement of the report.

    The outcome is applied, as the completion would have been, if the job
    has not started again elsewhere: it is still held at that epoch by that
    runner's registration, or it is queued, released by that runner's loss
    and leased to nobody since (epoch + 1). Otherwise the job keeps what
    happened to it since and the entry is dropped with a ``job.journal_dropped``
    event. The entry's id is the event id of what is recorded about it, so
    presenting it again changes nothing."""

    def answer(result: str, state: str | None = None, detail: str | None = None) -> JournalAnswer:
        return JournalAnswer.model_validate(
            {
                "id": entry.id,
                "job_id": claims.job_id,
                "result": result,
                "state": state,
                "detail": detail,
            }
        )

    ran_on = tx.conn.execute(
        sa.select(runners.c.name, runners.c.key_id).where(runners.c.id == claims.runner_id)
    ).one_or_none()
    if ran_on is None or ran_on.key_id != key_id:
        return answer("dropped", detail="the job was leased to a runner of another key")
    row = tx.conn.execute(
        sa.select(jobs).where(jobs.c.id == claims.job_id).with_for_update()
    ).one_or_none()
    if row is None or row.session_id != claims.session_id:
        return answer("dropped", detail="no such job")
    if tx.conn.execute(sa.select(events.c.seq).where(events.c.event_id == entry.id)).one_or_none():
        return answer("recorded", row.state, "this entry was presented before")
    state = JobState(row.state)
    note: dict[str, Any] = {
        "from_runner": ran_on.name,
        "finished_at": entry.finished_at.isoformat(),
        "reason": "journal",
    }
    if state in ACTIVE and row.epoch == claims.epoch and row.runner_id == claims.runner_id:
        held = claims
        if row.started_at is None:  # its "running" was lost with the runner too
            tx.conn.execute(
                sa.update(jobs)
                .where(jobs.c.id == row.id)
                .values(started_at=entry.started_at or entry.finished_at)
            )
    elif (
        state is JobState.QUEUED
        and row.epoch == claims.epoch + 1
        and row.reason in RELEASED
        and _turn_free(tx, row)
    ):
        row = _restore(tx, row, claims, entry, note=note, now=now)
        held = WorkerClaims(
            job_id=row.id, session_id=row.session_id, epoch=row.epoch, runner_id=claims.runner_id
        )
    elif row.epoch == claims.epoch and state is not JobState.CANCELLED and state not in ACTIVE:
        # The completion of that run was recorded; its acknowledgement was lost.
        return answer("recorded", row.state)
    else:
        why = _moved_on(row, claims)
        stored, _ = event_log.append(
            tx,
            row.session_id,
            [
                NewEvent(
                    event_id=entry.id,
                    type="job.journal_dropped",
                    payload={**note, "why": why, "status": entry.outcome.status},
                )
            ],
            job_id=row.id,
            epoch=row.epoch,
            now=now,
        )
        outbox.on_events(tx, row, tx.webhooks, stored, now)
        return answer("dropped", row.state, why)
    recovered = NewEvent(
        event_id=entry.id,
        type="job.recovered",
        payload={**note, "artifacts": entry.artifacts, "events_omitted": entry.events_omitted},
    )
    job, _ = complete(
        tx, held, entry.outcome, [*entry.events, recovered], policy=policy, budgets=budgets, now=now
    )
    tx.conn.execute(sa.update(jobs).where(jobs.c.id == job.id).values(recovered=note))
    return answer("recovered", job.state.value)


def _turn_free(tx: Tx, row: Row) -> bool:
    """No other turn of the job's session holds its turn lock."""
    active = tx.conn.execute(
        sa.select(sessions.c.active_job_id).where(sessions.c.id == row.session_id)
    ).scalar_one_or_none()
    return active is None or active == row.id


def _restore(
    tx: Tx,
    row: Row,
    claims: WorkerClaims,
    entry: JournalEntry,
    *,
    note: dict[str, Any],
    now: datetime,
) -> Row:
    """Put a released job back as running on the runner that ran it, so its
    outcome is applied as that runner's completion. The release's re-queue was
    not needed after all: it gives back the infrastructure retry it took."""
    started = entry.started_at or entry.finished_at
    apply(
        tx,
        row,
        Action.RECOVER,
        now=now,
        values={
            "runner_id": claims.runner_id,
            "assigned_at": started,
            "started_at": started,
            "infra_retries": max(0, row.infra_retries - 1),
        },
        note=note,
    )
    tx.conn.execute(
        sa.update(sessions).where(sessions.c.id == row.session_id).values(active_job_id=row.id)
    )
    return locked(tx, row.id)


def _moved_on(row: Row, claims: WorkerClaims) -> str:
    """Why a journalled outcome no longer applies to the job in ``row``."""
    state = JobState(row.state)
    if state is JobState.CANCELLED:
        return "the job was cancelled"
    if state in ACTIVE:
        return (
            f"the job was leased again (epoch {row.epoch}, runner {row.runner_id}) "
            "and keeps its new run"
        )
    if state is JobState.QUEUED and row.epoch == claims.epoch + 1:
        return f"the job was queued again ({row.reason}) and is not the runner's to end"
    if row.epoch > claims.epoch + 1 or state is JobState.QUEUED:
        return f"the job ran again since (epoch {row.epoch}) and is {state.value}"
    return f"the job is {state.value} ({row.reason})"
