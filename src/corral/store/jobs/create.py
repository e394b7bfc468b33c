"""Queueing a job: a new session or the next turn of one, on the provider
routing chose (or its quota fallback), with its first events."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from corral import metrics
from corral.auth import WorkerClaims
from corral.errors import SessionNotFound, SubjobTooDeep
from corral.jobs import JobState
from corral.models import Job, JobCreate, NewEvent, new_id
from corral.protocol import topics
from corral.routing import Decision
from corral.store import events as event_log
from corral.store import outbox
from corral.store import sessions as session_store
from corral.store.db import Tx
from corral.store.jobs import quota, turns
from corral.store.jobs.later import queued_later
from corral.store.jobs.policy import RetryPolicy
from corral.store.jobs.state import Row, owned, to_job
from corral.store.prepared import Prepared
from corral.store.schema import jobs, sessions


@dataclass(frozen=True, slots=True)
class Place:
    """Where a job runs: its session and turn, its workspace, its provider."""

    session_id: str
    turn: int
    repo: str | None
    base: str | None
    asked: str  # the provider routing chose
    provider: str  # the one the job is queued for: ``asked`` or its quota fallback
    fallback: str | None  # why ``provider`` is not ``asked``
    last_seq: int  # the session's, its first events' seqs reserved (events.append)
    behind: bool = False  # created behind a live turn of its session (jobs/turns.py)


def create(
    tx: Tx,
    spec: JobCreate,
    route: Decision | None,
    *,
    policy: RetryPolicy,
    now: datetime,
    parent: WorkerClaims | None = None,
    traceparent: str | None = None,
) -> Job:
    """Insert a job (a new session unless ``spec.session_id``) on the provider
    ``route`` chose (without one: as if routing did not exist). With
    ``parent``, a sub-job of the job that worker holds (refused, nothing
    written, if the worker was fenced off)."""
    if parent is not None:
        _check_depth(tx, owned(tx, parent), policy.max_subjob_depth)
    place = _place(tx, spec, route, policy, now)
    row = _insert(tx, spec, route, place, policy, now, parent, traceparent)
    first = [
        *_routed(row, route, place),
        NewEvent(
            type="job.state",
            payload={"job_id": row.id, "from": None, "to": "queued", "attempt": 1},
        ),
    ]
    assert len(first) == _first_events(route, place.fallback)
    event_log.append(
        tx,
        place.session_id,
        first,
        job_id=row.id,
        epoch=0,
        now=now,
        dedup=False,
        reserved=place.last_seq,
    )
    outbox.on_state(tx, row, tx.webhooks, now)
    tx.notify(topics.DISPATCH, row.id)
    tx.notify(topics.JOB_STATES, row.id)
    job = to_job(row)
    tx.after_commit.append(functools.partial(metrics.job_entered, job))
    return job


def _first_events(route: Decision | None, fallback: str | None) -> int:
    """How many events a new job's turn begins with (``_routed``, then its
    ``job.state``): their seqs are reserved with the turn."""
    return 1 + (route is not None) + (fallback is not None)


# A turn in a given session (every follow-up turn): built per call, these two
# were ~0.55 ms of CPU in a job's create, more than SQLite's run of them. The
# turn's number and its first events' seqs in one update of the session,
# which also says whether a turn of it holds its turn lock.
_NEXT_TURN = Prepared(
    sa.update(sessions)
    .where(sessions.c.id == sa.bindparam("s_id"))
    .values(
        turns=sessions.c.turns + 1,
        last_seq=sessions.c.last_seq + sa.bindparam("s_events", type_=sessions.c.last_seq.type),
        updated_at=sa.bindparam("s_now", type_=sessions.c.updated_at.type),
    )
    .returning(sessions.c.turns, sessions.c.last_seq, sessions.c.active_job_id)
)
_FIRST_TURN = Prepared(
    sa.select(jobs.c.repo, jobs.c.base)
    .where(jobs.c.session_id == sa.bindparam("s_id"))
    .order_by(jobs.c.turn)
    .limit(1)
)


def _place(
    tx: Tx, spec: JobCreate, route: Decision | None, policy: RetryPolicy, now: datetime
) -> Place:
    asked = route.provider if route else spec.preferred_ai or "shell"
    provider, why = quota.fallback(tx.conn, asked, policy.fallbacks, now)
    events = _first_events(route, why)
    if spec.session_id is None:
        session_id = session_store.insert(tx, title=spec.title, now=now, turns=1, last_seq=events)
        return Place(session_id, 1, spec.repo, spec.base, asked, provider, why, events)
    params = {"s_id": spec.session_id, "s_now": now, "s_events": events}
    turned = _NEXT_TURN(tx.conn, params).one_or_none()
    if turned is None:
        raise SessionNotFound(f"no session {spec.session_id}")
    turn, last_seq, active_job_id = turned
    behind = turns.created_behind(tx, spec.session_id, turn, active_job_id)
    repo, base = spec.repo, spec.base
    if repo is None:
        # A follow-up turn works in the session's workspace.
        first = _FIRST_TURN(tx.conn, {"s_id": spec.session_id}).one_or_none()
        if first is not None:
            repo, base = first
    return Place(spec.session_id, turn, repo, base, asked, provider, why, last_seq, behind)


# Built once: a statement's construction and cache key cost more CPU than
# SQLite spends running it (jobs/state.py). The columns come with the values.
_INSERT = Prepared(sa.insert(jobs).returning(*jobs.c), per_call_columns=True)


def _insert(
    tx: Tx,
    spec: JobCreate,
    route: Decision | None,
    place: Place,
    policy: RetryPolicy,
    now: datetime,
    parent: WorkerClaims | None,
    traceparent: str | None,
) -> Row:
    model = route.model if route else spec.model
    available_at = max(now, spec.run_at) if spec.run_at else now
    values = dict(
        id=new_id(),
        session_id=place.session_id,
        turn=place.turn,
        state=JobState.QUEUED,
        behind=place.behind,
        later=queued_later(available_at, now),
        provider=place.provider,
        model=model if place.fallback is None else None,
        preferred_ai=spec.preferred_ai,
        needs_local_agent=spec.needs_local_agent,
        allow_delegation=spec.allow_delegation,
        complexity_hint=spec.complexity_hint,
        route_rule=route.rule if route else None,
        route_reason=place.fallback or (route.reason if route else None),
        title=spec.title,
        prompt=spec.prompt,
        command=spec.command,
        repo=place.repo,
        base=place.base,
        **_webhook(spec),
        messages=spec.messages,
        tools=spec.tools,
        options=spec.options,
        think=spec.think,
        priority=spec.priority,
        attempt=1,
        max_attempts=spec.max_attempts or policy.default_max_attempts,
        timeout=spec.timeout,
        max_cost=spec.max_cost,
        labels=spec.labels,
        idempotency_key=spec.idempotency_key,
        source=spec.source,
        source_ref=spec.source_ref,
        parent_job_id=parent.job_id if parent is not None else None,
        mcp_tools=spec.mcp_tools,
        traceparent=traceparent,
        epoch=0,
        created_at=now,
        run_at=spec.run_at,
        available_at=available_at,
        updated_at=now,
    )
    row: Row = _INSERT(tx.conn, values).one()
    return row


def _check_depth(tx: Tx, parent: Row, limit: int) -> None:
    """Refuse a sub-job of ``parent`` deeper than ``limit`` (a job submitted
    from outside is at depth 0; at most ``limit`` parent links are read)."""
    depth, up = 1, parent.parent_job_id
    while up is not None:
        depth += 1
        if depth > limit:
            raise SubjobTooDeep(
                f"job {parent.id} is already {limit} sub-jobs deep (max_subjob_depth): "
                "do the work in this job, or raise max_subjob_depth"
            )
        up = tx.conn.execute(sa.select(jobs.c.parent_job_id).where(jobs.c.id == up)).scalar()


def _webhook(spec: JobCreate) -> dict[str, Any]:
    hook = spec.webhook if not isinstance(spec.webhook, str) else None
    return {
        "webhook_url": hook.url if hook else None,
        "webhook_secret": hook.secret if hook else None,
        "webhook_events": hook.events if hook and hook.events else None,
        "webhook_states": [str(x) for x in hook.states] if hook and hook.states else None,
    }


def _routed(row: Row, route: Decision | None, place: Place) -> list[NewEvent]:
    """The ``job.routed`` events of a new job: routing's decision, then the
    quota fallback that overrode it."""
    routed = []
    if route is not None:
        payload = {
            "job_id": row.id,
            "provider": route.provider,
            "model": route.model,
            "rule": route.rule,
            "reason": route.reason,
            "skipped": list(route.skipped),
        }
        routed.append(NewEvent(type="job.routed", payload=payload))
    if place.fallback is not None:
        payload = {
            "job_id": row.id,
            "provider": place.provider,
            "from": place.asked,
            "reason": place.fallback,
        }
        routed.append(NewEvent(type="job.routed", payload=payload))
    return routed
