"""Cron schedules in the database: where each one is. The configuration
says what a schedule is; its row says what the schedule loop has done with
it (the last slot handled, counts, the last job) and what an operator asked
(``enabled``). Each schedule has a session of its own whose event log
records what happened to it: ``schedule.fired``, ``schedule.skipped``,
``schedule.failed`` (a slot whose job was refused), ``schedule.run``,
``schedule.enabled`` / ``schedule.disabled``,
``schedule.changed``.

Slots are handled with a compare-and-set on ``last_slot``: two loops that
planned from the same state cannot both record a slot."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel

from corral.models import NewEvent
from corral.store import events as event_log
from corral.store import sessions as session_store
from corral.store.db import Database, Tx, dicts, fields
from corral.store.jobs import now_utc
from corral.store.schema import schedules


class ScheduleState(BaseModel):
    """A schedule's row."""

    name: str
    cron: str
    timezone: str
    enabled: bool | None
    active: bool
    last_slot: datetime | None
    last_job_id: str | None
    last_fired_at: datetime | None
    fired: int
    skipped: int
    session_id: str
    updated_at: datetime


def _row(conn: sa.Connection, name: str) -> ScheduleState | None:
    row = conn.execute(sa.select(schedules).where(schedules.c.name == name)).one_or_none()
    return None if row is None else ScheduleState.model_validate(fields(row))


def _log(tx: Tx, state: ScheduleState, items: Sequence[NewEvent], now: datetime) -> None:
    event_log.append(tx, state.session_id, items, job_id=None, epoch=0, now=now, dedup=False)


def _event(kind: str, name: str, **payload: Any) -> NewEvent:
    return NewEvent(type=f"schedule.{kind}", payload={"schedule": name, **payload})


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


class Schedules:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def list(self) -> list[ScheduleState]:
        def body(conn: sa.Connection) -> list[ScheduleState]:
            rows = conn.execute(sa.select(schedules).order_by(schedules.c.name))
            return [ScheduleState.model_validate(d) for d in dicts(rows)]

        return await self.db.read(body)

    async def get(self, name: str) -> ScheduleState | None:
        return await self.db.read(lambda conn: _row(conn, name))

    async def sync(self, name: str, cron: str, timezone: str) -> ScheduleState:
        """The row of schedule ``name`` (made, with its session, on first
        sight). A cron or zone other than the row's starts it afresh: its
        past slots are not missed ones."""
        now = now_utc()

        def body(tx: Tx) -> ScheduleState:
            state = _row(tx.conn, name)
            if state is None:
                session_id = session_store.insert(tx, title=f"schedule {name}", now=now)
                tx.conn.execute(
                    sa.insert(schedules).values(
                        name=name,
                        cron=cron,
                        timezone=timezone,
                        enabled=None,
                        active=False,
                        fired=0,
                        skipped=0,
                        session_id=session_id,
                        updated_at=now,
                    )
                )
            elif (state.cron, state.timezone) != (cron, timezone):
                tx.conn.execute(
                    sa.update(schedules)
                    .where(schedules.c.name == name)
                    .values(cron=cron, timezone=timezone, last_slot=now, updated_at=now)
                )
                change = {"cron": cron, "timezone": timezone, "was": [state.cron, state.timezone]}
                _log(tx, state, [_event("changed", name, **change)], now)
            found = _row(tx.conn, name)
            assert found is not None
            return found

        return await self.db.write(body)

    async def activate(self, name: str, active: bool) -> ScheduleState:
        """Record that the loop fires schedule ``name`` (from now: slots
        passed while it was not active are not missed ones) or not."""
        now = now_utc()

        def body(tx: Tx) -> ScheduleState:
            values: dict[str, Any] = {"active": active, "updated_at": now}
            if active:
                values["last_slot"] = now
            tx.conn.execute(sa.update(schedules).where(schedules.c.name == name).values(values))
            found = _row(tx.conn, name)
            assert found is not None
            return found

        return await self.db.write(body)

    async def handled(
        self,
        name: str,
        *,
        expected: datetime | None,
        last: datetime,
        fired: datetime | None,
        job_id: str | None,
        error: str | None = None,
        late: bool = False,
        skipped: dict[str, Any] | None = None,
    ) -> bool:
        """Record the slots up to ``last`` as handled (``fired`` by job
        ``job_id``, or refused with ``error``; ``skipped`` as described), if
        the row still says ``expected``; False if another loop got there first."""
        now = now_utc()

        def body(tx: Tx) -> bool:
            values: dict[str, Any] = {"last_slot": last, "updated_at": now}
            if job_id is not None:
                values |= {
                    "last_job_id": job_id,
                    "last_fired_at": now,
                    "fired": schedules.c.fired + 1,
                }
            if skipped is not None:
                values["skipped"] = schedules.c.skipped + int(skipped["count"])
            same = (
                schedules.c.last_slot.is_(None)
                if expected is None
                else schedules.c.last_slot == expected
            )
            done = tx.conn.execute(
                sa.update(schedules).where(schedules.c.name == name, same).values(values)
            ).rowcount
            if not done:
                return False
            state = _row(tx.conn, name)
            assert state is not None
            items = []
            if skipped is not None:
                items.append(_event("skipped", name, **skipped))
            if fired is not None and job_id is not None:
                items.append(_event("fired", name, slot=_iso(fired), job_id=job_id, late=late))
            elif fired is not None:
                items.append(_event("failed", name, slot=_iso(fired), error=error))
            if items:
                _log(tx, state, items, now)
            return True

        return await self.db.write(body)

    async def ran(self, name: str, job_id: str, by: str) -> None:
        """Record a run outside the slots (``corral schedules run``)."""
        now = now_utc()

        def body(tx: Tx) -> None:
            tx.conn.execute(
                sa.update(schedules)
                .where(schedules.c.name == name)
                .values(last_job_id=job_id, updated_at=now)
            )
            state = _row(tx.conn, name)
            assert state is not None
            _log(tx, state, [_event("run", name, job_id=job_id, by=by)], now)

        await self.db.write(body)

    async def set_enabled(self, name: str, enabled: bool, by: str) -> ScheduleState:
        """An operator's word on whether schedule ``name`` fires; it wins
        over the configuration's ``enabled``."""
        now = now_utc()

        def body(tx: Tx) -> ScheduleState:
            tx.conn.execute(
                sa.update(schedules)
                .where(schedules.c.name == name)
                .values(enabled=enabled, updated_at=now)
            )
            state = _row(tx.conn, name)
            assert state is not None
            kind = "enabled" if enabled else "disabled"
            _log(tx, state, [_event(kind, name, by=by)], now)
            return state

        return await self.db.write(body)
