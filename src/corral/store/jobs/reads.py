"""Reading jobs: one by id or idempotency key, a page, counts by state."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ClauseElement, Executable

from corral.jobs import JobState
from corral.models import Job
from corral.store.jobs.state import Row, to_job
from corral.store.schema import job_counts, job_labels, jobs

# Characters of a label kept in job_labels (migration 0019).
LABEL_HEAD = 200

_COUNTS = (
    sa.select(job_counts.c.state, job_counts.c.provider, sa.func.sum(job_counts.c.n))
    .group_by(job_counts.c.state, job_counts.c.provider)
    .having(sa.func.sum(job_counts.c.n) != 0)
)


def by_id(conn: sa.Connection, job_id: str) -> Row | None:
    return conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).one_or_none()


def by_idempotency_key(conn: sa.Connection, key: str) -> Job | None:
    row = conn.execute(sa.select(jobs).where(jobs.c.idempotency_key == key)).one_or_none()
    return None if row is None else to_job(row)


def page_query(
    *,
    states: Sequence[JobState],
    session_id: str | None,
    provider: str | None,
    limit: int,
    after: Job | None,
    label: str | None = None,
    source: str | None = None,
    text: str | None = None,
) -> sa.Select[Any]:
    """The query of ``page``. Each filter has an index ending in
    (created_at, id) (schema.py), so a page walks one index in order and
    stops after ``limit`` rows; several states are one such walk each, merged
    (at most ``limit`` rows per state are sorted). ``text`` is the exception:
    a substring cannot use an index, so it walks the newest jobs first until
    ``limit`` match."""
    created_at, job_id = jobs.c.created_at, jobs.c.id
    where: list[sa.ColumnElement[bool]] = []
    if label is not None:
        created_at, job_id = job_labels.c.created_at, job_labels.c.job_id
        where.append(job_labels.c.label == label[:LABEL_HEAD])
        if len(label) >= LABEL_HEAD:
            # A row holds a long label's head only: the job's own list decides.
            text_of = sa.cast(jobs.c.labels, sa.Text)
            where.append(text_of.contains(json.dumps(label), autoescape=True))
    if session_id is not None:
        where.append(jobs.c.session_id == session_id)
    if provider is not None:
        where.append(jobs.c.provider == provider)
    if source is not None:
        where.append(jobs.c.source == source)
    if text:
        searched = (jobs.c.title, jobs.c.prompt, jobs.c.command)
        where.append(sa.or_(*(c.icontains(text, autoescape=True) for c in searched)))
    if after is not None:
        where.append(
            sa.or_(
                created_at < after.created_at,
                sa.and_(created_at == after.created_at, job_id < after.id),
            )
        )

    def walk(*more: sa.ColumnElement[bool]) -> sa.Select[Any]:
        stmt = sa.select(jobs)
        if label is not None:
            stmt = stmt.join(job_labels, job_labels.c.job_id == jobs.c.id)
        return stmt.where(*where, *more).order_by(created_at.desc(), job_id.desc()).limit(limit)

    names = list(dict.fromkeys(s.value for s in states))
    if len(names) <= 1:
        return walk(*(jobs.c.state == n for n in names))
    merged = sa.union_all(*(walk(jobs.c.state == n).subquery().select() for n in names)).subquery()
    return sa.select(merged).order_by(merged.c.created_at.desc(), merged.c.id.desc()).limit(limit)


def page(conn: sa.Connection, **filters: Any) -> list[Job]:
    """Newest first; ``after``: the last job of the previous page. ``text``
    matches the title, prompt or command (case-insensitive substring)."""
    return [to_job(r) for r in conn.execute(page_query(**filters))]


class Explain(Executable, ClauseElement):
    """``EXPLAIN`` (PostgreSQL) or ``EXPLAIN QUERY PLAN`` (SQLite) of a query,
    with its parameters bound as they would be: what the tests read the plan of."""

    inherit_cache = False

    def __init__(self, stmt: sa.Select[Any]) -> None:
        self.stmt = stmt


@compiles(Explain)
def _explain(element: Explain, compiler: Any, **kw: Any) -> str:
    prefix = "EXPLAIN QUERY PLAN " if compiler.dialect.name == "sqlite" else "EXPLAIN "
    return prefix + str(compiler.process(element.stmt, **kw))


def explain(conn: sa.Connection, stmt: sa.Select[Any]) -> list[str]:
    """The plan's lines (SQLite: the ``detail`` column)."""
    return [str(row[-1]) for row in conn.execute(Explain(stmt))]


def live_by_provider(conn: sa.Connection) -> dict[str, dict[str, int]]:
    """Queued, assigned and running jobs of each provider."""
    out: dict[str, dict[str, int]] = {}
    for state, provider, n in conn.execute(_COUNTS):
        if state in ("queued", "assigned", "running"):
            out.setdefault(str(provider), {})[str(state)] = int(n)
    return out


def counts(conn: sa.Connection) -> dict[str, int]:
    """Jobs by state (from ``job_counts``: a few rows, whatever the table holds)."""
    out: dict[str, int] = {}
    for state, _provider, n in conn.execute(_COUNTS):
        out[str(state)] = out.get(str(state), 0) + int(n)
    return out


def counts_by_provider(conn: sa.Connection) -> dict[tuple[str, str], int]:
    """Jobs by (state, provider)."""
    return {(str(s), str(p)): int(n) for s, p, n in conn.execute(_COUNTS)}


_FOLD = sa.text(
    "WITH gone AS (DELETE FROM job_counts RETURNING state, provider, n) "
    "INSERT INTO job_counts (state, provider, n) "
    "SELECT state, provider, SUM(n) FROM gone GROUP BY state, provider HAVING SUM(n) <> 0"
)


def compact_counts(conn: sa.Connection) -> None:
    """PostgreSQL: fold the +1/-1 rows of ``job_counts`` into one per key. Each
    row is deleted by one transaction only (row locks), and re-added as part of
    its key's sum in that same statement, so concurrent folds lose nothing."""
    if conn.dialect.name == "postgresql":
        conn.execute(_FOLD)
