"""Quota pauses: a provider that reported a quota failure takes no jobs until
its reset time; meanwhile its jobs go to its configured fallback (followed as
a chain). ``fallback`` is the one place that says where a job for a provider
goes now; ``requeue`` is the one thing a quota failure does."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from corral.jobs import Action, JobState
from corral.models import Job, NewEvent, ProviderPause
from corral.protocol import topics
from corral.store import events as event_log
from corral.store.db import Tx
from corral.store.jobs.policy import RetryPolicy
from corral.store.jobs.state import Row, apply, to_job
from corral.store.prepared import Prepared
from corral.store.schema import jobs, provider_pauses

_PAUSED = Prepared(
    sa.select(provider_pauses.c.provider, provider_pauses.c.until).where(
        provider_pauses.c.until > sa.bindparam("now", type_=provider_pauses.c.until.type)
    )
)


def paused(conn: sa.Connection, now: datetime) -> dict[str, datetime]:
    """Providers paused by a quota (or a budget) now, and until when."""
    return {str(p): until for p, until in _PAUSED(conn, {"now": now})}


def why(conn: sa.Connection, provider: str) -> str:
    """Why ``provider`` is paused: a quota limit, or the budget it used up."""
    reason = conn.execute(
        sa.select(provider_pauses.c.reason).where(provider_pauses.c.provider == provider)
    ).scalar_one_or_none()
    if isinstance(reason, str) and reason.startswith("budget "):
        return reason
    return "a quota limit"


def fallback(
    conn: sa.Connection, provider: str, fallbacks: Mapping[str, str], now: datetime
) -> tuple[str, str | None]:
    """Where a job for ``provider`` goes now: its fallback (followed as a chain)
    while the provider is paused by a quota, else the provider itself; and why,
    when that is not the provider."""
    if provider not in fallbacks:
        return provider, None
    stopped = paused(conn, now)
    seen = [provider]
    while provider in stopped and fallbacks.get(provider) and fallbacks[provider] not in seen:
        provider = fallbacks[provider]
        seen.append(provider)
    if len(seen) == 1:
        return provider, None
    return provider, f"fallback: {' -> '.join(seen)} ({seen[0]} is paused)"


def requeue(
    tx: Tx,
    row: Row,
    values: dict[str, Any],
    *,
    retry_at: datetime | None,
    policy: RetryPolicy,
    now: datetime,
) -> Job:
    """After a quota failure of the job in ``row``: pause its provider until
    ``retry_at`` (else for ``quota_backoff``), queue the job again as the same
    attempt, and move the provider's queued jobs, this one with them, to its
    fallback."""
    until = retry_at or now + timedelta(seconds=policy.quota_backoff)
    until = max(until, now + timedelta(seconds=1))
    pause(tx, row.provider, until, values["error"])
    job = apply(
        tx,
        row,
        Action.LOSE,
        now=now,
        values={**values, "available_at": now, "attempt": row.attempt},
        note={"paused_until": until.isoformat()},
    )
    return reroute(tx, row.provider, policy.fallbacks, now).get(job.id, job)


def pause(tx: Tx, provider: str, until: datetime, reason: str) -> None:
    """Pause ``provider`` until ``until``; a later pause already there (a
    budget's, to the end of its period) stays."""
    values = {"until": until, "reason": reason}
    updated = tx.conn.execute(
        sa.update(provider_pauses)
        .where(provider_pauses.c.provider == provider)
        .values(
            until=sa.case((provider_pauses.c.until > until, provider_pauses.c.until), else_=until),
            reason=sa.case(
                (provider_pauses.c.until > until, provider_pauses.c.reason), else_=reason
            ),
        )
    ).rowcount
    if not updated:
        tx.conn.execute(sa.insert(provider_pauses).values(provider=provider, **values))


def reroute(tx: Tx, provider: str, fallbacks: Mapping[str, str], now: datetime) -> dict[str, Job]:
    """Move the queued jobs of ``provider`` to where ``fallback`` sends them now."""
    target, why = fallback(tx.conn, provider, fallbacks, now)
    if why is None:
        return {}
    moved = tx.conn.execute(
        sa.update(jobs)
        .where(jobs.c.provider == provider, jobs.c.state == JobState.QUEUED.value)
        .values(provider=target, route_reason=why, updated_at=now)
        .returning(*jobs.c)
    ).all()
    for row in moved:
        event_log.append(
            tx,
            row.session_id,
            [
                NewEvent(
                    type="job.routed",
                    payload={"job_id": row.id, "provider": target, "from": provider, "reason": why},
                )
            ],
            job_id=row.id,
            epoch=row.epoch,
            now=now,
            dedup=False,
        )
        tx.notify(topics.DISPATCH, row.id)
    return {row.id: to_job(row) for row in moved}


def pauses(conn: sa.Connection, fallbacks: Mapping[str, str], now: datetime) -> list[ProviderPause]:
    """Providers paused by a quota limit, now."""
    rows = conn.execute(
        sa.select(provider_pauses)
        .where(provider_pauses.c.until > now)
        .order_by(provider_pauses.c.provider)
    ).all()
    return [
        ProviderPause(
            provider=r.provider, until=r.until, reason=r.reason, fallback=fallbacks.get(r.provider)
        )
        for r in rows
    ]


def unpause(tx: Tx, provider: str) -> bool:
    gone = tx.conn.execute(
        sa.delete(provider_pauses).where(provider_pauses.c.provider == provider)
    ).rowcount
    tx.notify(topics.DISPATCH, provider)
    return bool(gone)
