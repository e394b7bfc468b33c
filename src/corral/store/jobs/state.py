"""The compare-and-set core every concern of the jobs store writes through:
a state change is ``corral.jobs.transition`` applied as ``UPDATE ... WHERE id
AND state AND epoch``, in the same transaction as its ``job.state`` event."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from corral import metrics
from corral.auth import WorkerClaims
from corral.errors import Conflict, JobNotActive, JobNotFound, StaleEpoch
from corral.jobs import ACTIVE, LIVE, TERMINAL, Action, JobState, transition
from corral.models import Job, NewEvent
from corral.protocol import topics
from corral.store import chat as chat_outbox
from corral.store import events as event_log
from corral.store import outbox
from corral.store.db import Tx, fields
from corral.store.jobs.later import queued_later
from corral.store.jobs.turns import free_next
from corral.store.prepared import Prepared
from corral.store.schema import jobs, sessions

Row = sa.Row[Any]
ACTIVE_STATES = [s.value for s in ACTIVE]


def now_utc() -> datetime:
    return datetime.now(UTC)


def to_job(row: Row) -> Job:
    return Job.model_validate(fields(row))


# The hot path's statements are built once, with bind parameters: building a
# statement and its cache key cost SQLAlchemy more CPU than SQLite spends
# running it (py-spy on the job path: construction and cache keys were ~45 %
# of the writer thread, the SQLite calls ~10 %), and run on the driver's
# cursor (store/prepared.py).
_LOCKED = Prepared(sa.select(jobs).where(jobs.c.id == sa.bindparam("w_id")).with_for_update())
# A turn that ends frees its session's turn lock (if it still holds it) and
# reserves the seq of its job.state event, in one update (events.append); the
# session's count of turns says whether a later one may wait (jobs/turns.py).
_TURN_ENDS = Prepared(
    sa.update(sessions)
    .where(sessions.c.id == sa.bindparam("w_session"))
    .values(
        active_job_id=sa.case(
            (sessions.c.active_job_id == sa.bindparam("w_job"), sa.null()),
            else_=sessions.c.active_job_id,
        ),
        last_seq=sessions.c.last_seq + 1,
        updated_at=sa.bindparam("v_now", type_=sessions.c.updated_at.type),
    )
    .returning(sessions.c.last_seq, sessions.c.turns)
)


@functools.lru_cache(maxsize=64)
def _compare_and_set(columns: tuple[str, ...]) -> Prepared:
    """``UPDATE jobs SET <columns> WHERE id AND state AND epoch RETURNING *``,
    one statement per set of columns (a handful occur)."""
    return Prepared(
        sa.update(jobs)
        .where(
            jobs.c.id == sa.bindparam("w_id"),
            # The state compared as an expression no index serves (``state
            # || ''``), so the row is found by its key. Compared as the
            # column, with statistics taken when few jobs were queued or
            # running, PostgreSQL found the row through an index that starts
            # with the state and ends in the id (the lease's), walking every
            # job in that state: every assignment walked the whole queue.
            jobs.c.state.concat(sa.literal_column("''"))
            == sa.bindparam("w_state", type_=jobs.c.state.type),
            jobs.c.epoch == sa.bindparam("w_epoch"),
        )
        .values({c: sa.bindparam("v_" + c, type_=jobs.c[c].type) for c in columns})
        .returning(*jobs.c)
    )


def locked(tx: Tx, job_id: str) -> Row:
    """The job's row, locked until the transaction ends."""
    row: Row | None = _LOCKED(tx.conn, {"w_id": job_id}).one_or_none()
    if row is None:
        raise JobNotFound(f"no job {job_id}")
    return row


def owned(tx: Tx, claims: WorkerClaims) -> Row:
    """The row of the job a worker holds; refused if the worker was fenced off."""
    return holds(locked(tx, claims.job_id), claims)


def holds(row: Row, claims: WorkerClaims) -> Row:
    """``row`` if the worker of ``claims`` still holds that job, else refused."""
    if row.epoch != claims.epoch or row.runner_id != claims.runner_id:
        raise StaleEpoch(
            f"job {row.id} is at epoch {row.epoch}, this worker holds epoch {claims.epoch}"
        )
    if JobState(row.state) not in ACTIVE:
        raise JobNotActive(f"job {row.id} is {row.state}; stop working on it")
    return row


def apply(
    tx: Tx,
    row: Row,
    action: Action,
    *,
    now: datetime,
    values: dict[str, Any] | None = None,
    note: dict[str, Any] | None = None,
    reserved: int | None = None,
) -> Job:
    """Apply ``action`` to the job in ``row`` (compare-and-set) and log it.
    ``reserved``: the seq of its ``job.state`` event, when the caller's own
    update of the session advanced ``last_seq`` to it (``events.append``)."""
    return applied(tx, row, action, now=now, values=values, note=note, reserved=reserved)[0]


def applied(
    tx: Tx,
    row: Row,
    action: Action,
    *,
    now: datetime,
    values: dict[str, Any] | None = None,
    note: dict[str, Any] | None = None,
    reserved: int | None = None,
) -> tuple[Job, Row]:
    """``apply``, with the job's row as it is now (locked: a caller that goes
    on with the job needs no second read)."""
    old = JobState(row.state)
    new = transition(old, action, attempt=row.attempt, max_attempts=row.max_attempts)
    changes: dict[str, Any] = {"state": new, "updated_at": now, **(values or {})}
    if new is JobState.QUEUED and old is not JobState.QUEUED:
        changes.setdefault("attempt", row.attempt + 1)
        changes.update(runner_id=None, assigned_at=None, started_at=None, lease_expires_at=None)
    if new in TERMINAL:
        changes.setdefault("finished_at", now)
        changes["lease_expires_at"] = None
    if new is JobState.QUEUED and old in TERMINAL:
        changes["behind"] = False  # a retry: jobs/turns.py
    if "available_at" in changes:  # queued with its time ahead, or not: jobs/later.py
        changes["later"] = queued_later(changes["available_at"], now)
    params = {"v_" + c: v for c, v in changes.items()}
    params.update(w_id=row.id, w_state=old, w_epoch=row.epoch)
    updated = _compare_and_set(tuple(sorted(changes)))(tx.conn, params).one_or_none()
    if updated is None:
        raise Conflict(f"job {row.id} changed concurrently; try again")
    more_turns = True  # whether the session may have turns after this one
    if old in ACTIVE and new not in ACTIVE:
        assert reserved is None
        params = {"w_session": row.session_id, "w_job": row.id, "v_now": now}
        reserved, turns = _TURN_ENDS(tx.conn, params).one()
        more_turns = turns > row.turn
    job = to_job(updated)
    payload: dict[str, Any] = {
        "job_id": job.id,
        "from": old.value,
        "to": new.value,
        "attempt": job.attempt,
    }
    if new in (JobState.FAILED, JobState.QUEUED, JobState.CANCELLED) and job.error:
        payload["error"] = job.error
        payload["reason"] = job.reason
    payload.update(note or {})
    event_log.append(
        tx,
        job.session_id,
        [NewEvent(type="job.state", payload=payload)],
        job_id=job.id,
        epoch=job.epoch,
        now=now,
        dedup=False,
        reserved=reserved,
    )
    if more_turns and old in LIVE and new not in LIVE:
        # After the session row's update (above, or the event's seq):
        # jobs/turns.py on why.
        free_next(tx, row.session_id, row.turn)
    outbox.on_state(tx, updated, tx.webhooks, now)
    chat_outbox.on_state(tx, updated, now)
    tx.notify(topics.JOB_STATES, job.id)
    tx.after_commit.append(functools.partial(metrics.job_entered, job))
    if new is JobState.QUEUED:
        tx.notify(topics.DISPATCH, job.id)
    if new in TERMINAL:
        tx.notify(topics.JOBS, job.id)  # sinks (queue folder, ...) wait on this
    return job, updated


def fence(tx: Tx, row: Row) -> Row:
    """Bump the session's epoch and the job's with it: writes carrying the
    old one (its runner's) are refused from now on."""
    epoch = tx.conn.execute(
        sa.update(sessions)
        .where(sessions.c.id == row.session_id)
        .values(epoch=sessions.c.epoch + 1)
        .returning(sessions.c.epoch)
    ).scalar_one()
    return tx.conn.execute(
        sa.update(jobs)
        .where(jobs.c.id == row.id, jobs.c.epoch == row.epoch)
        .values(epoch=epoch)
        .returning(*jobs.c)
    ).one()
