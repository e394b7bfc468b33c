"""Reading jobs: one by id or idempotency key, a page, counts by state."""

from __future__ import annotations

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
) -> list[Job]:
    """Newest first; ``after``: the last job of the previous page."""
    stmt = sa.select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)
    if states:
        stmt = stmt.where(jobs.c.state.in_([s.value for s in states]))
    if session_id is not None:
        stmt = stmt.where(jobs.c.session_id == session_id)
    if provider is not None:
        stmt = stmt.where(jobs.c.provider == provider)
    if after is not None:
        stmt = stmt.where(
            sa.or_(
                jobs.c.created_at < after.created_at,
                sa.and_(jobs.c.created_at == after.created_at, jobs.c.id < after.id),
            )
        )
    return [to_job(r) for r in conn.execute(stmt)]


def counts(conn: sa.Connection) -> dict[str, int]:
    return {str(state): int(n) for state, n in conn.execute(_COUNTS)}
