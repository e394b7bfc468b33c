"""A job's life once it is queued: what operators and workers do to it, and
what happens when its runner goes away. Each function is one transaction body
(given a ``Tx``); every state change goes through ``state.apply``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from corral.auth import WorkerClaims
from corral.jobs import ACTIVE, Action, JobState, backoff
from corral.models import Event, Job, NewEvent, Outcome, Runner
from corral.protocol import topics
from corral.store import events as event_log
from corral.store import outbox
from corral.store import sessions as session_store
from corral.store.db import Tx
from corral.store.jobs import quota
from corral.store.jobs.policy import RetryPolicy
from corral.store.jobs.state import ACTIVE_STATES, Row, apply, fence, locked, owned, to_job
from corral.store.schema import jobs, sessions


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
            "message": None,
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
    tx: Tx, claims: WorkerClaims, items: Sequence[NewEvent], *, now: datetime
) -> tuple[list[Event], list[str]]:
    """A worker's events: stored (a known ``event_id`` is a duplicate, skipped)
    and announced to the job's webhooks."""
    return _events(tx, owned(tx, claims), claims, items, now)


def _events(
    tx: Tx, row: Row, claims: WorkerClaims, items: Sequence[NewEvent], now: datetime
) -> tuple[list[Event], list[str]]:
    stored, duplicates = event_log.append(
        tx, claims.session_id, items, job_id=claims.job_id, epoch=claims.epoch, now=now
    )
    outbox.on_events(tx, row, tx.webhooks, stored, now)
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
    policy: RetryPolicy,
    now: datetime,
) -> tuple[Job, list[str]]:
    """End the attempt with the worker's outcome (and its last events). Where
    the job goes depends on the failure class: bad input fails at once, the
    infrastructure and quotas re-queue the same attempt, the agent's own
    failures are retried after a backoff while attempts are left."""
    row = owned(tx, claims)
    duplicates = _events(tx, row, claims, items, now)[1] if items else []
    values: dict[str, Any] = {
        "result": outcome.result,
        "exit_code": outcome.exit_code,
        "usage": outcome.usage,
        "cost": outcome.cost,
        "message": outcome.message,
    }
    if outcome.status == "done":
        values.update(error=None, reason=None, failure=None)
        return apply(tx, row, Action.SUCCEED, now=now, values=values), duplicates
    failure = outcome.failure or "agent"
    values.update(
        error=outcome.error or "failed", reason=outcome.reason or "error", failure=failure
    )
    if failure == "input":
        return apply(tx, row, Action.REJECT, now=now, values=values), duplicates
    if failure == "infra":
        return _infra(tx, row, now=now, values=values, budget=policy.max_infra_retries), duplicates
    if failure == "quota":
        job = quota.requeue(tx, row, values, retry_at=outcome.retry_at, policy=policy, now=now)
        return job, duplicates
    if row.attempt < row.max_attempts:
        delay = backoff(row.attempt, base=policy.backoff_base, cap=policy.backoff_max)
        values["available_at"] = now + timedelta(seconds=delay)
    return apply(tx, row, Action.FAIL, now=now, values=values), duplicates


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
