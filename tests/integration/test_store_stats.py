"""GET /stats' aggregates, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from corral.models import JobCreate
from corral.store import Store
from corral.store.schema import jobs

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


async def _finished(store: Store, provider: str, state: str, at: datetime, **values: Any) -> None:
    job, _ = await store.jobs.create(JobCreate(command="true"))
    stmt = (
        sa.update(jobs)
        .where(jobs.c.id == job.id)
        .values(
            provider=provider,
            state=state,
            created_at=at - timedelta(seconds=12),
            started_at=at - timedelta(seconds=10),
            finished_at=at,
            **values,
        )
    )
    await store.db.write(lambda tx: tx.conn.execute(stmt))


async def test_stats_by_bucket_state_and_provider(store: Store) -> None:
    await _finished(
        store,
        "claude",
        "done",
        T0 + timedelta(minutes=5),
        cost=0.5,
        usage={"input_tokens": 100, "output_tokens": 7},
    )
    await _finished(
        store,
        "gpu",
        "done",
        T0 + timedelta(minutes=50),
        cost=None,
        usage={"prompt_tokens": 40, "completion_tokens": 2},
    )
    await _finished(store, "claude", "failed", T0 + timedelta(hours=1, minutes=1), cost=0.25)
    await _finished(store, "claude", "done", T0 + timedelta(hours=5))  # outside the range
    await store.jobs.create(JobCreate(command="still queued"))  # never finished: not counted

    end = T0 + timedelta(hours=2)
    by_state = await store.jobs.stats(start=T0, end=end, bucket=3600, group_by="state")
    assert by_state["jobs"] == 3
    series = {s["key"]: s["points"] for s in by_state["series"]}
    hour = int(T0.timestamp())
    assert series["done"] == [
        {"t": hour, "count": 2, "cost": 0.5, "input_tokens": 140, "output_tokens": 9}
    ]
    assert series["failed"] == [
        {"t": hour + 3600, "count": 1, "cost": 0.25, "input_tokens": 0, "output_tokens": 0}
    ]
    assert by_state["queue_wait"]["p50"] == 2.0
    assert by_state["run_time"]["p99"] == 10.0

    by_provider = await store.jobs.stats(start=T0, end=end, bucket=86400, group_by="provider")
    totals = {s["key"]: sum(p["count"] for p in s["points"]) for s in by_provider["series"]}
    assert totals == {"claude": 2, "gpu": 1}
    assert [p["t"] for p in by_provider["series"][0]["points"]] == [hour - 10 * 3600]  # the day

    empty = await store.jobs.stats(
        start=end, end=end + timedelta(hours=1), bucket=60, group_by="state"
    )
    assert empty["jobs"] == 0 and empty["series"] == [] and empty["run_time"]["p50"] is None
