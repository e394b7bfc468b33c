"""Usage totals for ``GET /usage``: the jobs that ended in a time range,
summed by the database in one grouped query (cost, tokens, jobs, run time)
over ``ix_jobs_finished_at_provider``; one row per group comes back.

Grouping by label counts a job once under each of its labels (and a job with
none under no label, ``null``). Days are UTC dates."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from corral.store.jobs.budgets import label_values
from corral.store.jobs.stats import _epoch
from corral.store.schema import jobs

GROUPS = ("provider", "model", "label", "source", "day")


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
    each = label_values(jobs.c.labels).table_valued("value").alias("lv")
    job_model = sa.func.coalesce(jobs.c.model, jobs.c.usage["model"].as_string())
    if dialect == "sqlite":
        day = sa.func.date(jobs.c.finished_at)
    else:
        day = sa.func.to_char(sa.func.timezone("UTC", jobs.c.finished_at), "YYYY-MM-DD")
    keys = {
        "provider": jobs.c.provider,
        "model": job_model,
        "label": each.c.value,
        "source": jobs.c.source,
        "day": day,
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
    if provider is not None:
        stmt = stmt.where(jobs.c.provider == provider)
    if model is not None:
        stmt = stmt.where(job_model == model)
    if source is not None:
        stmt = stmt.where(jobs.c.source == source)
    if label is not None:
        stmt = stmt.where(
            sa.cast(jobs.c.labels, sa.Text).contains(json.dumps(label), autoescape=True)
        )
    if chosen:
        stmt = stmt.group_by(*chosen).order_by(*chosen)
    out = []
    for row in conn.execute(stmt):
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
