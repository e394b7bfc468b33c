"""Reading jobs: one by id or idempotency key, a page, counts by state."""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa

from corral.jobs import JobState
from corral.models import Job
from corral.store.jobs.state import Row, to_job
from corral.store.schema import jobs

_COUNTS = sa.select(jobs.c.state, sa.func.count()).group_by(jobs.c.state)


def by_id(conn: sa.Connection, job_id: str) -> Row | None:
    return conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).one_or_none()


def by_idempotency_key(conn: sa.Connection, key: str) -> Job | None:
    row = conn.execute(sa.select(jobs).where(jobs.c.idempotency_key == key)).one_or_none()
    return None if row is None else to_job(row)


def page(
    conn: sa.Connection,
    *,
    states: Sequence[JobState],
    session_id: str | None,
    provider: str | None,
    limit: int,
    after: Job | None,
    label: str | None = None,
    source: str | None = None,
    text: str | None = None,
) -> list[Job]:
    """Newest first; ``after``: the last job of the previous page. ``text``
    matches the title, prompt or command (case-insensitive substring)."""
    stmt = sa.select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)
    if states:
        stmt = stmt.where(jobs.c.state.in_([s.value for s in states]))
    if session_id is not None:
        stmt = stmt.where(jobs.c.session_id == session_id)
    if provider is not None:
        stmt = stmt.where(jobs.c.provider == provider)
    if label is not None:
        # Labels are a JSON list of strings: its text holds the label quoted.
        stmt = stmt.where(
            sa.cast(jobs.c.labels, sa.Text).contains(json.dumps(label), autoescape=True)
        )
    if source is not None:
        stmt = stmt.where(jobs.c.source == source)
    if text:
        searched = (jobs.c.title, jobs.c.prompt, jobs.c.command)
        stmt = stmt.where(sa.or_(*(c.icontains(text, autoescape=True) for c in searched)))
    if after is not None:
        stmt = stmt.where(
            sa.or_(
                jobs.c.created_at < after.created_at,
                sa.and_(jobs.c.created_at == after.created_at, jobs.c.id < after.id),
            )
        )
    return [to_job(r) for r in conn.execute(stmt)]


_LIVE_BY_PROVIDER = (
    sa.select(jobs.c.provider, jobs.c.state, sa.func.count())
    .where(jobs.c.state.in_(["queued", "assigned", "running"]))
    .group_by(jobs.c.provider, jobs.c.state)
)


def live_by_provider(conn: sa.Connection) -> dict[str, dict[str, int]]:
    """Queued, assigned and running jobs of each provider."""
    out: dict[str, dict[str, int]] = {}
    for provider, state, n in conn.execute(_LIVE_BY_PROVIDER):
        out.setdefault(str(provider), {})[str(state)] = int(n)
    return out


def counts(conn: sa.Connection) -> dict[str, int]:
    return {str(state): int(n) for state, n in conn.execute(_COUNTS)}
