"""Dispatch: which queued jobs a runner gets (the lease), and why a queued
job waits. Both come from the same rules (``rules.RULES``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from corral.jobs import Action, JobState
from corral.models import Job, NewEvent, Runner, Session
from corral.store import events as event_log
from corral.store.db import Tx
from corral.store.jobs import rules
from corral.store.jobs.board import Board
from corral.store.jobs.policy import Caps
from corral.store.jobs.state import apply
from corral.store.prepared import Prepared
from corral.store.schema import jobs, runners, sessions

_PG_LEASE_LOCK = 0x636F7272616D


@dataclass(frozen=True, slots=True)
class Lease:
    job: Job
    session: Session


def _candidates() -> sa.Select[Any]:
    """Queued jobs of one provider a runner may take, most urgent first,
    meeting every row rule. Walks
    ix_jobs_state_behind_later_provider_priority_created_at_id in order and stops at
    the limit: the queued jobs of other providers are not walked (with one
    index over all providers, a lease walked past every job queued for a
    provider it does not serve: 10-14 ms a lease behind 5,000 of them on
    SQLite, ~0.6 ms with none; issue #18), nor the turns held behind an
    earlier turn of their session (jobs/turns.py), nor the jobs whose time
    has not come (jobs/later.py). Whole rows: the assignment's
    compare-and-set starts from them. Built once: constructing it per call
    costs more than running it."""
    return (
        sa.select(jobs, rules.HOST)
        .where(
            jobs.c.state == JobState.QUEUED.value,
            jobs.c.behind == sa.false(),
            jobs.c.later == sa.false(),
            jobs.c.provider == sa.bindparam("provider", type_=jobs.c.provider.type),
            *(rule.where for rule in rules.ROW_RULES),
        )
        .order_by(jobs.c.priority, jobs.c.created_at, jobs.c.id)
        .limit(sa.bindparam("room"))
    )


_CANDIDATES = Prepared(_candidates())
_CANDIDATES_LOCKED = Prepared(_candidates().with_for_update(skip_locked=True))


def lease(
    tx: Tx,
    runner: Runner,
    max_jobs: int,
    ttl: float,
    *,
    caps: Caps,
    skip_locked: bool,
    now: datetime,
) -> list[Lease]:
    """Assign up to ``max_jobs`` queued jobs to ``runner``: lowest priority
    value first, then oldest; one active turn per session, turns in order."""
    conn = tx.conn
    if caps.any and skip_locked:
        # Caps count jobs across runners: lease one runner at a time.
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_LEASE_LOCK)))
    # A statement of its own, before the facts: on PostgreSQL it locks the
    # runner's row, so a second lease for the same runner waits here and then
    # counts (in a later statement, a later snapshot) the jobs the first one
    # gave it. Folded into the facts' statement (a data-modifying WITH) it
    # saved a round trip but counted from the snapshot taken before the wait.
    seen = _SEEN(conn, {"w_id": runner.id, "v_now": now}).rowcount
    if not seen:
        return []  # stopped or replaced since the request began: nothing for it
    board = Board(conn, caps, now, runner=runner, max_jobs=max_jobs, ttl=ttl)
    board.read_lease_facts()
    room = rules.room(board)
    eligible = rules.providers(board) if room > 0 else []
    stmt = _CANDIDATES_LOCKED if skip_locked else _CANDIDATES
    leased: list[Lease] = []
    while len(leased) < room and eligible:
        params = {"room": room - len(leased), **rules.params(board)}
        filled = False
        for row in _queued(conn, stmt, eligible, params):
            if not rules.admits(board, row):
                filled = True  # a cap filled during this lease: look again without it
                continue
            local = row.provider in caps.local
            taken = _assign(tx, row, runner, now, ttl, local=local, host=row.host)
            if taken is not None:
                leased.append(taken)
                board.take(row.provider, row.repo)
        if not filled:
            break
        eligible = rules.providers(board)
    return leased


def _queued(
    conn: sa.Connection, stmt: Prepared, providers: list[str], params: dict[str, Any]
) -> list[Any]:
    """The first ``params["room"]`` candidates over ``providers``, most urgent
    first: each provider's first ones (one ordered index walk each), merged.
    On PostgreSQL each walk locks what it returns (``FOR UPDATE SKIP
    LOCKED``): with several providers, up to ``room`` rows a provider until
    the lease commits, a few of them not taken."""
    if len(providers) == 1:
        return stmt(conn, {**params, "provider": providers[0]}).all()
    rows = [row for p in providers for row in stmt(conn, {**params, "provider": p}).all()]
    rows.sort(key=lambda row: (row.priority, row.created_at, row.id))
    return rows[: params["room"]]


# Built once (see jobs/state.py on why the hot path's statements are).
_SEEN = Prepared(
    sa.update(runners)
    .where(runners.c.id == sa.bindparam("w_id"), runners.c.status == "active")
    .values(last_seen_at=sa.bindparam("v_now", type_=runners.c.last_seen_at.type))
)


def _turn_lock(local: bool) -> Prepared:
    values: dict[str, Any] = {
        "active_job_id": sa.bindparam("v_job", type_=sessions.c.active_job_id.type),
        "epoch": sessions.c.epoch + 1,
        # The seq of the "assigned" event, reserved here (events.append).
        "last_seq": sessions.c.last_seq + 1,
        "updated_at": sa.bindparam("v_now", type_=sessions.c.updated_at.type),
    }
    if local:
        values["host"] = sa.bindparam("v_host", type_=sessions.c.host.type)
    return Prepared(
        sa.update(sessions)
        .where(sessions.c.id == sa.bindparam("w_id"), sessions.c.active_job_id.is_(None))
        .values(values)
        .returning(*sessions.c)
    )


_TURN_LOCK = {False: _turn_lock(False), True: _turn_lock(True)}


def _assign(
    tx: Tx,
    row: sa.Row[Any],
    runner: Runner,
    now: datetime,
    ttl: float,
    *,
    local: bool = False,
    host: str | None = None,
) -> Lease | None:
    """Take the session's turn lock (bumping its epoch) and assign the job
    of ``row`` (a candidate's) at that epoch: one compare-and-set.
    ``local``: the turn runs where its workspace is; this runner now holds
    the session. ``host``: the runner that held it until now."""
    job_id, session_id = row.id, row.session_id
    params = {"w_id": session_id, "v_job": job_id, "v_now": now}
    if local:
        params["v_host"] = runner.name
    srow = _TURN_LOCK[local](tx.conn, params).one_or_none()
    if srow is None:
        return None
    job = apply(
        tx,
        row,
        Action.ASSIGN,
        now=now,
        values={
            "epoch": srow.epoch,
            "runner_id": runner.id,
            "assigned_at": now,
            "lease_expires_at": now + timedelta(seconds=ttl),
        },
        note={"runner_id": runner.id},
        reserved=srow.last_seq,
    )
    session = dict(srow._mapping)
    if local and host is not None and host != runner.name:
        # Its runner is gone: this one starts the conversation afresh, in a
        # new workspace (the old handle means nothing here).
        note = (
            f"the session's runner {host!r} is gone: this turn runs on {runner.name!r} "
            "in a new workspace and starts a new conversation"
        )
        event_log.append(
            tx,
            session_id,
            [
                NewEvent(
                    type="session.moved", payload={"from": host, "to": runner.name, "note": note}
                )
            ],
            job_id=job_id,
            epoch=job.epoch,
            now=now,
            dedup=False,
        )
        session.update(last_seq=srow.last_seq + 1, handle=None)
    return Lease(job, Session.model_validate(session))


def waiting(conn: sa.Connection, job: Job, *, caps: Caps, now: datetime) -> str | None:
    """Why a queued job is not running yet (None unless it is queued): the
    first dispatch rule that holds it, seen from no runner in particular."""
    if job.state is not JobState.QUEUED:
        return None
    return rules.waiting(Board(conn, caps, now), job)
