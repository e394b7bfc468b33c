"""The schedule loop against a real store, on SQLite and PostgreSQL, with a
stepped clock: each slot one job, also after a restart, a crash between
submit and record, or two loops at once; missed slots skipped with one
event; enable, disable and a changed cron start afresh."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from corral.config import load_settings
from corral.intake.schedules import Scheduler, run_now, set_enabled, slot_key
from corral.models import Event, Job
from corral.server.build import services
from corral.services import Services
from corral.store import Store

T0 = datetime(2030, 1, 1, 12, 0, 0, 300_000, tzinfo=UTC)  # 0.3 s after a minute


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@dataclass
class World:
    svc: Services
    store: Store
    clock: Clock

    def scheduler(self) -> Scheduler:
        return Scheduler(self.svc)

    async def jobs(self) -> list[Job]:
        return sorted(
            [j for j in await self.store.jobs.list(limit=500) if j.source == "schedule"],
            key=lambda j: j.source_ref or "",
        )

    async def events(self, name: str = "every-minute") -> list[Event]:
        state = await self.store.schedules.get(name)
        assert state is not None
        return [
            e
            for e in await self.store.events.list(state.session_id, since=0, internal=True)
            if e.type.startswith("schedule.")
        ]


SCHEDULES: list[dict[str, Any]] = [
    {"name": "every-minute", "cron": "* * * * *", "command": "echo tick", "labels": ["cron"]},
    {
        "name": "no-catch-up",
        "cron": "* * * * *",
        "command": "echo tock",
        "catch_up": "none",
    },
    {"name": "paris", "cron": "0 9 * * *", "timezone": "Europe/Paris", "command": "true"},
    {"name": "unroutable", "cron": "* * * * *", "prompt": "nobody runs prose here"},
]


@pytest.fixture
async def world(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[World]:
    clock = Clock()
    for where in ("corral.store.jobs", "corral.store.schedules", "corral.intake.schedules"):
        monkeypatch.setattr(f"{where}.now_utc", clock)
    store = await Store.open(db_url)
    try:
        settings = load_settings(
            data_dir=tmp_path, database_url=db_url, schedules=SCHEDULES, schedule_grace=30
        )
        yield World(await services(settings, store), store, clock)
    finally:
        await store.close()


def _minute(n: int, seconds: float = 0.0) -> datetime:
    return datetime(2030, 1, 1, 12, n, tzinfo=UTC) + timedelta(seconds=seconds)


def _of(jobs: list[Job], name: str) -> list[Job]:
    return [j for j in jobs if (j.source_ref or "").startswith(f"schedule {name} ")]


async def test_each_slot_fires_one_job_once(world: World) -> None:
    sched = world.scheduler()
    # First sight: the schedule starts now; the minute that began 0.3 s ago
    # is not "missed".
    assert await sched.tick() == 1.0  # nothing due within a second: the longest sleep
    assert await world.jobs() == []
    world.clock.now = _minute(1, 0.02)
    await sched.tick()
    await sched.tick()  # the same instant again: nothing new
    (job,) = _of(await world.jobs(), "every-minute")
    assert job.idempotency_key == slot_key("every-minute", _minute(1))
    assert job.idempotency_key == "schedule:every-minute:2030-01-01T12:01:00+00:00"
    assert (job.command, job.labels, job.source) == ("echo tick", ["cron"], "schedule")
    assert job.title == "every-minute 2030-01-01T12:01:00+00:00"
    state = await world.store.schedules.get("every-minute")
    assert state is not None
    assert (state.last_slot, state.last_job_id, state.fired) == (_minute(1), job.id, 1)
    (fired,) = await world.events()
    assert fired.type == "schedule.fired"
    assert fired.payload == {
        "schedule": "every-minute",
        "slot": "2030-01-01T12:01:00+00:00",
        "job_id": job.id,
        "late": False,
    }
    # The loop sleeps until the next slot (at most a second).
    world.clock.now = _minute(1, 59.5)
    assert await sched.tick() == pytest.approx(0.5)


async def test_a_restarted_loop_does_not_fire_a_slot_again(world: World) -> None:
    await world.scheduler().tick()
    world.clock.now = _minute(1, 0.5)
    await world.scheduler().tick()
    # A new loop (a restart, another replica taking over) at the same instant.
    await world.scheduler().tick()
    assert len(_of(await world.jobs(), "every-minute")) == 1
    assert [e.type for e in await world.events()] == ["schedule.fired"]


async def test_a_crash_between_submit_and_record_makes_no_second_job(world: World) -> None:
    sched = world.scheduler()
    await sched.tick()
    world.clock.now = _minute(1, 0.1)
    conf = world.svc.settings.schedule("every-minute")
    assert conf is not None
    # The loop submitted the slot's job and died before recording the slot.
    first, created = await sched.submit(conf, _minute(1))
    assert created
    await world.scheduler().tick()
    (job,) = _of(await world.jobs(), "every-minute")
    assert job.id == first.id
    state = await world.store.schedules.get("every-minute")
    assert state is not None and state.last_slot == _minute(1) and state.last_job_id == first.id


async def test_two_loops_at_once_fire_each_slot_once(world: World) -> None:
    await world.scheduler().tick()
    for minute in (1, 2, 3):
        world.clock.now = _minute(minute, 0.2)
        await asyncio.gather(*(world.scheduler().tick() for _ in range(3)))
    jobs = _of(await world.jobs(), "every-minute")
    assert [j.idempotency_key for j in jobs] == [
        slot_key("every-minute", _minute(m)) for m in (1, 2, 3)
    ]
    fired = [e for e in await world.events() if e.type == "schedule.fired"]
    assert sorted(e.payload["slot"] for e in fired) == [_minute(m).isoformat() for m in (1, 2, 3)]


async def test_slots_missed_while_down_are_skipped_with_one_event(world: World) -> None:
    await world.scheduler().tick()
    # Down from 12:00:00.3 to 12:10:45: slots 12:01 ... 12:10 passed.
    world.clock.now = _minute(10, 45)
    await world.scheduler().tick()
    jobs = await world.jobs()
    # catch_up = "latest": the latest missed slot runs once, late; the
    # others are skipped, reported by one event.
    (latest,) = _of(jobs, "every-minute")
    assert latest.idempotency_key == slot_key("every-minute", _minute(10))
    skipped, fired = await world.events()
    assert skipped.type == "schedule.skipped"
    assert skipped.payload == {
        "schedule": "every-minute",
        "count": 9,
        "at_least": False,
        "first": _minute(1).isoformat(),
        "last": _minute(9).isoformat(),
        "catch_up": "latest",
        "reason": "missed while corral was not running",
    }
    assert fired.type == "schedule.fired" and fired.payload["late"] is True
    # catch_up = "none": all ten skipped, nothing runs.
    assert _of(jobs, "no-catch-up") == []
    (none,) = await world.events("no-catch-up")
    assert none.type == "schedule.skipped"
    assert (none.payload["count"], none.payload["last"]) == (10, _minute(10).isoformat())
    state = await world.store.schedules.get("no-catch-up")
    assert state is not None and (state.skipped, state.fired) == (10, 0)
    # After that, on time again.
    world.clock.now = _minute(11, 0.1)
    await world.scheduler().tick()
    assert len(_of(await world.jobs(), "no-catch-up")) == 1


async def test_a_slot_a_little_late_is_fired_not_skipped(world: World) -> None:
    await world.scheduler().tick()
    world.clock.now = _minute(1, 29)  # within schedule_grace (30 s)
    await world.scheduler().tick()
    assert len(_of(await world.jobs(), "no-catch-up")) == 1
    (fired,) = await world.events("no-catch-up")
    assert fired.type == "schedule.fired" and fired.payload["late"] is False


async def test_disabled_slots_do_not_fire_and_enabling_starts_from_now(world: World) -> None:
    sched = world.scheduler()
    await sched.tick()
    await set_enabled(world.svc, "every-minute", False, "op")
    world.clock.now = _minute(5, 0.1)
    await sched.tick()
    assert _of(await world.jobs(), "every-minute") == []
    await set_enabled(world.svc, "every-minute", True, "op")
    await sched.tick()  # starts from now: 12:01 ... 12:05 are not "missed"
    world.clock.now = _minute(6, 0.1)
    await sched.tick()
    (job,) = _of(await world.jobs(), "every-minute")
    assert job.idempotency_key == slot_key("every-minute", _minute(6))
    assert [e.type for e in await world.events()] == [
        "schedule.disabled",
        "schedule.enabled",
        "schedule.fired",
    ]
    schedule = await world.store.schedules.get("every-minute")
    assert schedule is not None and schedule.enabled is True


async def test_a_changed_cron_starts_afresh(world: World) -> None:
    await world.scheduler().tick()
    hourly = [dict(SCHEDULES[0], cron="0 * * * *")]
    world.svc.settings = world.svc.settings.model_copy(
        update={"schedules": load_settings(schedules=hourly).schedules}
    )
    world.clock.now = _minute(30)
    await world.scheduler().tick()
    (changed,) = await world.events()
    assert changed.type == "schedule.changed"
    assert changed.payload["cron"] == "0 * * * *"
    assert _of(await world.jobs(), "every-minute") == []


async def test_a_refused_slot_is_recorded_once_not_retried(world: World) -> None:
    await world.scheduler().tick()
    world.clock.now = _minute(1, 0.1)
    await world.scheduler().tick()
    await world.scheduler().tick()
    (failed,) = await world.events("unroutable")
    assert failed.type == "schedule.failed"
    assert failed.payload["slot"] == _minute(1).isoformat()
    assert "no provider for this prompt" in failed.payload["error"]


async def test_run_now_is_outside_the_slots(world: World) -> None:
    job, created = await run_now(world.svc, "paris", "op")
    assert created and job.idempotency_key is None and job.source == "schedule"
    assert job.source_ref == "schedule paris run"
    (ran,) = await world.events("paris")
    assert ran.type == "schedule.run" and ran.payload == {
        "schedule": "paris",
        "job_id": job.id,
        "by": "op",
    }


async def test_a_slot_submitted_before_a_stop_is_fired_not_skipped(world: World) -> None:
    sched = world.scheduler()
    await sched.tick()
    conf = world.svc.settings.schedule("every-minute")
    assert conf is not None
    # The loop submitted 12:01's job and was stopped before recording it;
    # corral comes back at 12:10:45.
    world.clock.now = _minute(1, 0.1)
    orphan, _ = await sched.submit(conf, _minute(1))
    world.clock.now = _minute(10, 45)
    await world.scheduler().tick()
    jobs = _of(await world.jobs(), "every-minute")
    assert [j.idempotency_key for j in jobs] == [
        slot_key("every-minute", _minute(1)),
        slot_key("every-minute", _minute(10)),
    ]
    first, skipped, latest = await world.events()
    assert (first.type, first.payload["job_id"], first.payload["late"]) == (
        "schedule.fired",
        orphan.id,
        False,
    )
    assert skipped.type == "schedule.skipped"
    assert (skipped.payload["count"], skipped.payload["first"], skipped.payload["last"]) == (
        8,
        _minute(2).isoformat(),
        _minute(9).isoformat(),
    )
    assert latest.type == "schedule.fired" and latest.payload["late"] is True
