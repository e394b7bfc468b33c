"""Aggregates over finished jobs for ``GET /stats``: counts, cost and tokens
per time bucket and group, and the percentiles of queue wait and run time.

One grouped query does the buckets (the database sums; only one row per
bucket and group comes back); the percentiles read two numbers per job."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from corral.store.schema import jobs

_UNIX_JULIAN = 2440587.5  # julianday('1970-01-01')


def _epoch(col: Any, dialect: str) -> Any:
    """Seconds since 1970 of a timestamp column, in SQL."""
    if dialect == "sqlite":  # UTC text without a zone
        return (sa.func.julianday(col) - _UNIX_JULIAN) * 86400.0
    return sa.extract("epoch", col)


def _tokens(*names: str) -> Any:
    """The first of ``names`` present in ``usage`` (executors name them differently)."""
    return sa.func.coalesce(*(jobs.c.usage[n].as_integer() for n in names), 0)


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    return round(values[max(0, math.ceil(p / 100 * len(values)) - 1)], 3)


def stats(
    conn: sa.Connection,
    *,
    start: datetime,
    end: datetime,
    bucket: int,
    group_by: str,
    dialect: str,
) -> dict[str, Any]:
    """Jobs that finished in ``[start, end)``, by ``bucket`` seconds and by
    ``group_by`` (``state`` or ``provider``)."""
    finished = _epoch(jobs.c.finished_at, dialect)
    if dialect == "sqlite":
        slot = sa.cast(finished / bucket, sa.Integer)  # positive: truncation is floor
    else:
        slot = sa.cast(sa.func.floor(finished / bucket), sa.BigInteger)
    key = jobs.c.state if group_by == "state" else jobs.c.provider
    where = (jobs.c.finished_at >= start, jobs.c.finished_at < end)
    grouped = (
        sa.select(
            slot.label("slot"),
            key.label("key"),
            sa.func.count().label("n"),
            sa.func.sum(jobs.c.cost).label("cost"),
            sa.func.sum(_tokens("input_tokens", "prompt_tokens")).label("tin"),
            sa.func.sum(_tokens("output_tokens", "completion_tokens")).label("tout"),
        )
        .where(*where)
        .group_by(slot, key)
        .order_by(slot, key)
    )
    series: dict[str, list[dict[str, Any]]] = {}
    for row in conn.execute(grouped):
        series.setdefault(str(row.key), []).append(
            {
                "t": int(row.slot) * bucket,
                "count": int(row.n),
                "cost": float(row.cost) if row.cost is not None else 0.0,
                "input_tokens": int(row.tin or 0),
                "output_tokens": int(row.tout or 0),
            }
        )
    started = _epoch(jobs.c.started_at, dialect)
    spans = sa.select(started - _epoch(jobs.c.created_at, dialect), finished - started).where(
        *where, jobs.c.started_at.is_not(None)
    )
    waits, runs = [], []
    for wait, run in conn.execute(spans):
        waits.append(max(0.0, float(wait)))
        runs.append(max(0.0, float(run)))
    waits.sort()
    runs.sort()
    return {
        "series": [{"key": k, "points": v} for k, v in sorted(series.items())],
        "queue_wait": {f"p{p}": _pct(waits, p) for p in (50, 90, 99)},
        "run_time": {f"p{p}": _pct(runs, p) for p in (50, 90, 99)},
        "jobs": sum(p["count"] for points in series.values() for p in points),
    }
