"""Spend: ``GET /usage`` (sums of cost, tokens, jobs and run time per group)
and ``GET /budgets`` (each budget's spend against its limit)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query

from corral.api.deps import Reader, Svc
from corral.errors import InvalidInput
from corral.models import BudgetStatus, UsageReport
from corral.store.jobs.usage import GROUPS

router = APIRouter(tags=["system"])


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@router.get("/usage", response_model=UsageReport, response_model_by_alias=True)
async def get_usage(
    svc: Svc,
    who: Reader,
    start: Annotated[
        datetime | None, Query(alias="from", description="Default: `to` minus 30 days.")
    ] = None,
    end: Annotated[datetime | None, Query(alias="to", description="Default: now.")] = None,
    group_by: Annotated[
        str,
        Query(description="Comma-separated: provider, model, label, source, day (or empty)."),
    ] = "provider",
    provider: Annotated[str | None, Query(max_length=64)] = None,
    model: Annotated[str | None, Query(max_length=200)] = None,
    label: Annotated[str | None, Query(max_length=200)] = None,
    source: Annotated[str | None, Query(max_length=16)] = None,
) -> UsageReport:
    """Jobs that ended between `from` and `to`: cost, tokens, job count and run time,
    summed per group. A job with several labels counts under each when grouped by label."""
    end = _utc(end) if end is not None else datetime.now(UTC)
    start = _utc(start) if start is not None else end - timedelta(days=30)
    if start >= end:
        raise InvalidInput("`from` must be before `to`")
    groups = [g.strip() for g in group_by.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise InvalidInput(f"group_by: unknown {', '.join(unknown)} (take {', '.join(GROUPS)})")
    if len(set(groups)) != len(groups):
        raise InvalidInput("group_by: a name given twice")
    filters = {"provider": provider, "model": model, "label": label, "source": source}
    rows = await svc.store.jobs.usage(start=start, end=end, group_by=groups, **filters)
    if "label" in groups:  # a job counts under each of its labels: sum them apart
        total = await svc.store.jobs.usage(start=start, end=end, group_by=[], **filters)
    else:  # the groups split the jobs: their sums are the total
        total = [_sum(rows)] if rows else []
    empty = _sum([])
    return UsageReport.model_validate(
        {
            "from": start,
            "to": end,
            "group_by": groups,
            "rows": rows,
            "total": total[0] if total else empty,
        }
    )


@router.get("/budgets", response_model=list[BudgetStatus])
async def get_budgets(svc: Svc, who: Reader) -> list[BudgetStatus]:
    """Each `[[budgets]]` entry: its spend in the current period against its limit, and
    the pause it holds its scope with."""
    return [BudgetStatus.model_validate(b) for b in await svc.store.jobs.budgets()]


def _sum(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"key": {}}
    for name in ("jobs", "cost", "unpriced", "input_tokens", "output_tokens", "run_time"):
        out[name] = sum(r[name] for r in rows)
    out["cost"] = round(out["cost"], 6)
    out["run_time"] = round(out["run_time"], 3)
    return out
