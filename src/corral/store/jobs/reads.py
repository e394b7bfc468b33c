"""Reading jobs: one by id or idempotency key, a page, counts by state."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ClauseElement, Executable

from corral.errors import JobNotFound
from corral.jobs import JobState
from corral.models import Job
from corral.store.db import dicts
from corral.store.jobs.state import Row, to_job
from corral.store.prepared import Prepared
from corral.store.schema import job_counts, job_labels, jobs

# Characters of a label kept in job_labels (migration 0019).
LABEL_HEAD = 200

_COUNTS = (
    sa.select(job_counts.c.state, job_counts.c.provider, sa.func.sum(job_counts.c.n))
    .group_by(job_counts.c.state, job_counts.c.provider)
    .having(sa.func.sum(job_counts.c.n) != 0)
)


# Built once (a job is read by id several times in its life; issue #18).
_BY_ID = Prepared(sa.select(jobs).where(jobs.c.id == sa.bindparam("id")))
_BY_KEY = Prepared(sa.select(jobs).where(jobs.c.idempotency_key == sa.bindparam("key")))


def by_id(conn: sa.Connection, job_id: str) -> Row | None:
    row: Row | None = _BY_ID(conn, {"id": job_id}).one_or_none()
    return row


def by_idempotency_key(conn: sa.Connection, key: str) -> Job | None:
    row = _BY_KEY(conn, {"key": key}).one_or_none()
    return None if row is None else to_job(row)


# Filters a page can have, by name: the order of a shape's key.
_FILTERS = ("session_id", "provider", "source", "label")


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
    """The query of ``page``, its values bound (what the tests read the plan
    of). Each filter has an index ending in (created_at, id) (schema.py), so
    a page walks one index in order and stops after ``limit`` rows; several
    states are one such walk each, merged (at most ``limit`` rows per state
    are sorted). ``text`` is the exception: a substring cannot use an index,
    so it walks the newest jobs first until ``limit`` match."""
    stmt, params = _query(
        states=states,
        session_id=session_id,
        provider=provider,
        limit=limit,
        after=after,
        label=label,
        source=source,
        text=text,
    )
    return stmt.params(params)


def _query(
    *,
    states: Sequence[JobState],
    session_id: str | None,
    provider: str | None,
    limit: int,
    after: Job | None,
    label: str | None,
    source: str | None,
    text: str | None,
) -> tuple[sa.Select[Any], dict[str, Any]]:
    """The statement of a page and its parameters. A page without ``text``
    or a long label reuses the statement built for its shape (which filters,
    how many states, keyset or not): building a statement and its cache key
    cost SQLAlchemy several times what the database spends on the page
    (measured on a merge of two states: ~4 ms to build, 0.6 ms in SQLite)."""
    names = tuple(dict.fromkeys(s.value for s in states))
    given = {"session_id": session_id, "provider": provider, "source": source, "label": label}
    params: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if label is not None:
        params["label"] = label[:LABEL_HEAD]
    params["limit"] = limit
    params.update({f"state_{i}": n for i, n in enumerate(names)})
    if after is not None:
        params["after_at"], params["after_id"] = after.created_at, after.id
    shape = (len(names), tuple(k for k in _FILTERS if k in params), after is not None)
    if text or (label is not None and len(label) >= LABEL_HEAD):
        return _build(*shape, label=label, text=text), params
    return _shape(*shape), params


@functools.lru_cache(maxsize=128)
def _shape(states: int, filters: tuple[str, ...], keyset: bool) -> sa.Select[Any]:
    return _build(states, filters, keyset)


def _build(
    states: int,
    filters: tuple[str, ...],
    keyset: bool,
    *,
    label: str | None = None,
    text: str | None = None,
) -> sa.Select[Any]:
    """A page's statement: its values are bind parameters named as in
    ``_query``, but for ``text`` and a long ``label``, which are built in."""
    created_at, job_id = jobs.c.created_at, jobs.c.id
    where: list[sa.ColumnElement[bool]] = []
    labelled = "label" in filters
    if labelled:
        created_at, job_id = job_labels.c.created_at, job_labels.c.job_id
        # A row holds a long label's head only: the job's own list decides.
        where.append(job_labels.c.label == sa.bindparam("label", type_=job_labels.c.label.type))
        if label is not None and len(label) >= LABEL_HEAD:
            text_of = sa.cast(jobs.c.labels, sa.Text)
            where.append(text_of.contains(json.dumps(label), autoescape=True))
    for name in ("session_id", "provider", "source"):
        if name in filters:
            where.append(jobs.c[name] == sa.bindparam(name, type_=jobs.c[name].type))
    if text:
        searched = (jobs.c.title, jobs.c.prompt, jobs.c.command)
        where.append(sa.or_(*(c.icontains(text, autoescape=True) for c in searched)))
    if keyset:
        at = sa.bindparam("after_at", type_=jobs.c.created_at.type)
        where.append(
            sa.or_(
                created_at < at,
                sa.and_(created_at == at, job_id < sa.bindparam("after_id", type_=sa.String)),
            )
        )
    limit = sa.bindparam("limit", type_=sa.Integer)

    def walk(*more: sa.ColumnElement[bool]) -> sa.Select[Any]:
        stmt = sa.select(jobs)
        if labelled:
            stmt = stmt.join(job_labels, job_labels.c.job_id == jobs.c.id)
        return stmt.where(*where, *more).order_by(created_at.desc(), job_id.desc()).limit(limit)

    state = jobs.c.state
    walks = [walk(state == sa.bindparam(f"state_{i}", type_=state.type)) for i in range(states)]
    if states <= 1:
        return walks[0] if walks else walk()
    merged = sa.union_all(*(w.subquery().select() for w in walks)).subquery()
    return sa.select(merged).order_by(merged.c.created_at.desc(), merged.c.id.desc()).limit(limit)


def page(
    conn: sa.Connection, *, states: Sequence[JobState], before: str | None = None, **filters: Any
) -> list[Job]:
    """Newest first; ``before``: the id of the last job of the previous
    page (read in the same hop). ``text`` matches the title, prompt or
    command (case-insensitive substring)."""
    after = None
    if before is not None:
        row = by_id(conn, before)
        if row is None:
            raise JobNotFound(f"no job {before}")
        after = to_job(row)
    stmt, params = _query(states=states, after=after, **filters)
    return [Job.model_validate(d) for d in dicts(conn.execute(stmt, params))]


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
