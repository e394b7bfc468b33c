"""Aggregates for charts and scripts: ``GET /stats``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from corral.api.deps import Reader, Svc
from corral.errors import InvalidInput
from corral.models import Stats

router = APIRouter(tags=["system"])

BUCKETS = {"minute": 60, "hour": 3600, "day": 86400}
MAX_BUCKETS = 10_000


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@router.get("/stats", response_model=Stats, response_model_by_alias=True)
async def get_stats(
    svc: Svc,
    who: Reader,
    start: Annotated[
        datetime | None, Query(alias="from", description="Default: `to` minus 24 hours.")
    ] = None,
    end: Annotated[datetime | None, Query(alias="to", description="Default: now.")] = None,
    bucket: Literal["minute", "hour", "day"] = "hour",
    group_by: Literal["state", "provider"] = "state",
) -> Stats:
    """Jobs finished between `from` and `to`, per `bucket` and per state or provider:
    counts, cost, tokens; queue wait and run time percentiles."""
    end = _utc(end) if end is not None else datetime.now(UTC)
    start = _utc(start) if start is not None else end - timedelta(days=1)
    size = BUCKETS[bucket]
    if start >= end:
        raise InvalidInput("`from` must be before `to`")
    if (end - start).total_seconds() / size > MAX_BUCKETS:
        raise InvalidInput(f"over {MAX_BUCKETS} buckets: use a larger bucket or a shorter range")
    data = await svc.store.jobs.stats(start=start, end=end, bucket=size, group_by=group_by)
    return Stats.model_validate(
        {"from": start, "to": end, "bucket": size, "group_by": group_by, **data}
    )
