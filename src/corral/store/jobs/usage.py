"""Usage totals for ``GET /usage``: the jobs that ended in a time range,
summed per group (cost, tokens, jobs, run time).

The whole hours of the range come from the rollup (``usage_hours``, or
``usage_hour_labels`` when grouping by label), which triggers on ``jobs``
keep in the transaction of every change to a finished job (migration 0023):
its rows are a few per hour and key, whatever the table holds. The partial
hours at the edges (a range not on the hour) are summed from the jobs that
ended in them. One statement merges the parts, so the database groups,
orders and sums them as it always did.

Grouping by label counts a job once under each of its labels (and a job with
none under no label, ``null``); the label filter keeps the jobs carrying that
label. Days are UTC dates."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import GenericFunction

from corral.store.jobs.stats import _epoch
from corral.store.schema import jobs, usage_hour_labels, usage_hours

GROUPS = ("provider", "model", "label", "source", "day")


class label_values(GenericFunction[Any]):
    """The elements of a JSON list of strings as rows with a ``value`` column
    (SQLite ``json_each``, PostgreSQL ``jsonb_array_elements_text``)."""

    name = "label_values"
    inherit_cache = True


@compiles(label_values, "sqlite")
def _sqlite_labels(element: label_values, compiler: SQLCompiler, **kw: Any) -> str:
    return f"json_each({compiler.process(element.clauses, **kw)})"


@compiles(label_values, "postgresql")
def _pg_labels(element: label_values, compiler: SQLCompiler, **kw: Any) -> str:
    return f"jsonb_array_elements_text({compiler.process(element.clauses, **kw)})"


_FIGURES = ("jobs", "cost", "priced", "input_tokens", "output_tokens", "run_time")
_HOUR = timedelta(hours=1)


def usage(
    conn: sa.Connection,
    *,
    start: datetime,
    end: datetime,
    group_by: Sequence[str],
    provider: str | None,
    model: str | None,
    label: str | None,
    source: str | None,
    dialect: str,
) -> list[dict[str, Any]]:
    """The sums of each group: whole hours from the rollup, the edges from ``jobs``."""
    filters = {"provider": provider, "model": model, "label": label, "source": source}
    start, end = start.astimezone(UTC), end.astimezone(UTC)  # UTC hours, whatever the zone
    first = _floor(start) if _floor(start) == start else _floor(start) + _HOUR
    last = _floor(end)
    if first < last:
        parts = [_rollup(first, last, group_by, filters, dialect)]
        if start < first:
            parts.append(_jobs(start, first, group_by, filters, dialect, member=True))
        if last < end:
            parts.append(_jobs(last, end, group_by, filters, dialect, member=True))
    else:  # less than two hours: the jobs themselves
        parts = [_jobs(start, end, group_by, filters, dialect, member=True)]
    merged = (parts[0] if len(parts) == 1 else sa.union_all(*parts)).subquery("parts")
    keys = [merged.c[g] for g in group_by]
    stmt = sa.select(*keys, *(sa.func.sum(merged.c[f]).label(f) for f in _FIGURES))
    if keys:
        stmt = stmt.group_by(*keys).order_by(*keys)
    return _rows(conn.execute(stmt), group_by)


def direct(
    conn: sa.Connection,
    *,
    start: datetime,
    end: datetime,
    group_by: Sequence[str],
    provider: str | None,
    model: str | None,
    label: str | None,
    source: str | None,
    dialect: str,
) -> list[dict[str, Any]]:
    """The same sums straight from ``jobs`` (one grouped query over every job
    that ended in the range), as ``GET /usage`` computed them before the
    rollup: the reference the tests hold the rollup to."""
    filters = {"provider": provider, "model": model, "label": label, "source": source}
    stmt = _jobs(start, end, group_by, filters, dialect, member=False)
    if group_by:
        stmt = stmt.order_by(*(sa.literal_column(g) for g in group_by))
    return _rows(conn.execute(stmt), group_by)


def _floor(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def _day(col: Any, dialect: str) -> Any:
    if dialect == "sqlite":
        return sa.func.date(col)
    return sa.func.to_char(sa.func.timezone("UTC", col), "YYYY-MM-DD")


def _jobs(
    start: datetime,
    end: datetime,
    group_by: Sequence[str],
    filters: dict[str, str | None],
    dialect: str,
    *,
    member: bool,
) -> sa.Select[Any]:
    """The sums per group of the jobs that ended in ``[start, end)``. The label
    filter: the label is one of the job's (``member``), or (the reference's
    original form) its JSON string occurs in the job's labels' text."""
    each = label_values(jobs.c.labels).table_valued("value").alias("lv")
    job_model = sa.func.coalesce(jobs.c.model, jobs.c.usage["model"].as_string())
    keys = {
        "provider": jobs.c.provider,
        "model": job_model,
        "label": each.c.value,
        "source": jobs.c.source,
        "day": _day(jobs.c.finished_at, dialect),
    }
    chosen = [keys[g].label(g) for g in group_by]
    run = _epoch(jobs.c.finished_at, dialect) - _epoch(jobs.c.started_at, dialect)
    stmt = sa.select(
        *chosen,
        sa.func.count().label("jobs"),
        sa.func.sum(jobs.c.cost).label("cost"),
        sa.func.count(jobs.c.cost).label("priced"),
        sa.func.sum(jobs.c.input_tokens).label("input_tokens"),
        sa.func.sum(jobs.c.output_tokens).label("output_tokens"),
        sa.func.sum(run).label("run_time"),
    ).where(jobs.c.finished_at >= start, jobs.c.finished_at < end)
    if "label" in group_by:
        stmt = stmt.select_from(jobs.outerjoin(each, sa.true()))
    if filters["provider"] is not None:
        stmt = stmt.where(jobs.c.provider == filters["provider"])
    if filters["model"] is not None:
        stmt = stmt.where(job_model == filters["model"])
    if filters["source"] is not None:
        stmt = stmt.where(jobs.c.source == filters["source"])
    label = filters["label"]
    if label is not None and member:
        one = label_values(jobs.c.labels).table_valued("value").alias("lf")
        stmt = stmt.where(
            sa.exists(sa.select(sa.literal(1)).select_from(one).where(one.c.value == label))
        )
    elif label is not None:
        stmt = stmt.where(
            sa.cast(jobs.c.labels, sa.Text).contains(json.dumps(label), autoescape=True)
        )
    if chosen:
        stmt = stmt.group_by(*chosen)
    return stmt


def _rollup(
    first: datetime,
    last: datetime,
    group_by: Sequence[str],
    filters: dict[str, str | None],
    dialect: str,
) -> sa.Select[Any]:
    """The sums per group of the rollup's hours in ``[first, last)``."""
    t = usage_hour_labels if "label" in group_by else usage_hours
    keys = {
        "provider": t.c.provider,
        "model": t.c.model,
        "source": t.c.source,
        "day": _day(t.c.hour, dialect),
    }
    if t is usage_hour_labels:
        keys["label"] = t.c.label
    chosen = [keys[g].label(g) for g in group_by]
    stmt = sa.select(*chosen, *(sa.func.sum(t.c[f]).label(f) for f in _FIGURES)).where(
        t.c.hour >= first, t.c.hour < last
    )
    label = filters["label"]
    stmt = stmt.where(t.c.with_label.is_(None) if label is None else t.c.with_label == label)
    for name in ("provider", "model", "source"):
        if filters[name] is not None:
            stmt = stmt.where(t.c[name] == filters[name])
    if chosen:
        stmt = stmt.group_by(*chosen)
    return stmt


def _rows(result: sa.Result[Any], group_by: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for row in result:
        if not row.jobs:
            continue
        m = row._mapping
        out.append(
            {
                "key": {g: (None if m[g] is None else str(m[g])) for g in group_by},
                "jobs": int(row.jobs),
                "cost": round(float(row.cost or 0.0), 6),
                "unpriced": int(row.jobs) - int(row.priced),
                "input_tokens": int(row.input_tokens or 0),
                "output_tokens": int(row.output_tokens or 0),
                "run_time": round(float(row.run_time or 0.0), 3),
            }
        )
    return out


# PostgreSQL appends a row per change (``fresh``); a fold sums each key's
# rows into one (SQLite's triggers change the rows in place: nothing to fold).
# One statement deletes the rows of every key with fresh rows and re-adds
# their sums, so rows a concurrent writer adds meanwhile wait for the next
# fold and a concurrent fold never counts a row twice (each row is deleted
# once, by one transaction).
_KEYS = {  # in the order of their index
    "usage_hours": ("with_label", "hour", "provider", "source", "model"),
    "usage_hour_labels": ("with_label", "hour", "provider", "source", "model", "label"),
}


def _fold_sql(table: str) -> sa.TextClause:
    keys = _KEYS[table]
    names = ", ".join(keys)
    same = " AND ".join(
        f"u.{k} {'IS NOT DISTINCT FROM' if k in ('model', 'label', 'with_label') else '='} k.{k}"
        for k in keys
    )
    sums = ", ".join(f"SUM({f})" for f in _FIGURES)
    return sa.text(
        f"WITH k AS (SELECT DISTINCT {names} FROM {table} WHERE fresh = 1), "
        f"gone AS (DELETE FROM {table} AS u USING k WHERE {same} RETURNING u.*) "
        f"INSERT INTO {table} ({names}, {', '.join(_FIGURES)}, fresh) "
        f"SELECT {names}, {sums}, 0 FROM gone GROUP BY {names} HAVING SUM(jobs) <> 0 "
        f"ORDER BY {names}"
    )


_FOLDS = [_fold_sql(table) for table in _KEYS]
_ANY_FRESH = sa.select(
    sa.or_(
        sa.exists().where(usage_hours.c.fresh == 1),
        sa.exists().where(usage_hour_labels.c.fresh == 1),
    )
)


def unfolded(conn: sa.Connection) -> bool:
    """The rollup holds rows to fold (PostgreSQL)."""
    return bool(conn.execute(_ANY_FRESH).scalar())


def fold(conn: sa.Connection) -> None:
    """Sum each key's rows of the rollup into one (PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        for stmt in _FOLDS:
            conn.execute(stmt)
