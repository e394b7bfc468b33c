"""Issues taken in from trackers: which session and turn each became, and
what was written back (the sink's progress: the last turn reported, the
label on the issue, the pull request)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel

from corral.jobs import TERMINAL
from corral.store.db import Database, Tx, fields
from corral.store.jobs import now_utc
from corral.store.schema import jobs, tracker_items


class TrackerItem(BaseModel):
    tracker: str
    repo: str
    number: int
    url: str
    title: str
    session_id: str
    job_id: str
    state: str
    reported_job_id: str | None = None
    label: str | None = None
    pull_url: str | None = None
    created_at: datetime
    updated_at: datetime


def _where(tracker: str, repo: str, number: int) -> Any:
    c = tracker_items.c
    return sa.and_(c.tracker == tracker, c.repo == repo, c.number == number)


class Trackers:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(
        self,
        *,
        tracker: str,
        repo: str,
        number: int,
        url: str,
        title: str,
        session_id: str,
        job_id: str,
        state: str = "open",
    ) -> TrackerItem:
        """The issue became (or has) the session; ``job_id`` is its latest turn
        when it is newer than the one recorded."""
        now = now_utc()

        def body(tx: Tx) -> TrackerItem:
            where = _where(tracker, repo, number)
            row = tx.conn.execute(sa.select(tracker_items).where(where)).first()
            if row is None:
                tx.conn.execute(
                    sa.insert(tracker_items).values(
                        tracker=tracker,
                        repo=repo,
                        number=number,
                        url=url,
                        title=title[:500],
                        session_id=session_id,
                        job_id=job_id,
                        state=state,
                        created_at=now,
                        updated_at=now,
                    )
                )
            elif row.job_id != job_id and _turn(tx, job_id) > _turn(tx, row.job_id):
                tx.conn.execute(
                    sa.update(tracker_items).where(where).values(job_id=job_id, updated_at=now)
                )
            found = tx.conn.execute(sa.select(tracker_items).where(where)).one()
            return TrackerItem.model_validate(found._mapping)

        try:
            return await self.db.write(body)
        except sa.exc.IntegrityError:  # another replica recorded it first
            return await self.db.write(body)

    async def get(self, tracker: str, repo: str, number: int) -> TrackerItem | None:
        stmt = sa.select(tracker_items).where(_where(tracker, repo, number))
        row = await self.db.read(lambda conn: conn.execute(stmt).first())
        return None if row is None else TrackerItem.model_validate(fields(row))

    async def by_session(self, session_id: str) -> TrackerItem | None:
        stmt = sa.select(tracker_items).where(tracker_items.c.session_id == session_id)
        row = await self.db.read(lambda conn: conn.execute(stmt).first())
        return None if row is None else TrackerItem.model_validate(fields(row))

    async def by_pull(self, tracker: str, repo: str, number: int) -> TrackerItem | None:
        """The item whose pull request is number ``number`` of ``repo``."""
        c = tracker_items.c
        stmt = sa.select(tracker_items).where(
            c.tracker == tracker,
            c.repo == repo,
            sa.or_(c.pull_url.like(f"%/pull/{number}"), c.pull_url.like(f"%/pulls/{number}")),
        )
        row = await self.db.read(lambda conn: conn.execute(stmt).first())
        return None if row is None else TrackerItem.model_validate(fields(row))

    async def update(self, item: TrackerItem, **values: Any) -> None:
        stmt = (
            sa.update(tracker_items)
            .where(_where(item.tracker, item.repo, item.number))
            .values(**values, updated_at=now_utc())
        )
        await self.db.write(lambda tx: tx.conn.execute(stmt))

    async def unreported(self, limit: int = 100) -> list[TrackerItem]:
        """The sink's work: items whose latest turn is still going (its label
        may lag: only ends are announced on the bus) or ended and was not
        reported yet (after a restart, a failed write-back)."""
        c = tracker_items.c
        ended = jobs.c.state.in_([s.value for s in TERMINAL])
        stmt = (
            sa.select(tracker_items)
            .join(jobs, jobs.c.id == c.job_id)
            .where(
                sa.or_(
                    sa.not_(ended),
                    sa.or_(c.reported_job_id.is_(None), c.reported_job_id != c.job_id),
                    c.label.is_(None),
                )
            )
            .order_by(c.updated_at)
            .limit(limit)
        )
        rows = await self.db.read(lambda conn: conn.execute(stmt).all())
        return [TrackerItem.model_validate(fields(r)) for r in rows]

    async def counts(self, tracker: str) -> dict[str, int]:
        """Items of ``tracker`` by the state of their latest turn."""
        c = tracker_items.c
        stmt = (
            sa.select(jobs.c.state, sa.func.count())
            .select_from(tracker_items.join(jobs, jobs.c.id == c.job_id))
            .where(c.tracker == tracker)
            .group_by(jobs.c.state)
        )
        rows = await self.db.read(lambda conn: conn.execute(stmt).all())
        return {str(state): int(n) for state, n in rows}

    # Last: from here on in the class body, ``list`` names this method.
    async def list(self, tracker: str, *, limit: int = 50) -> list[TrackerItem]:
        stmt = (
            sa.select(tracker_items)
            .where(tracker_items.c.tracker == tracker)
            .order_by(tracker_items.c.updated_at.desc())
            .limit(limit)
        )
        rows = await self.db.read(lambda conn: conn.execute(stmt).all())
        return [TrackerItem.model_validate(fields(r)) for r in rows]


def _turn(tx: Tx, job_id: str) -> int:
    turn = tx.conn.execute(sa.select(jobs.c.turn).where(jobs.c.id == job_id)).scalar()
    return int(turn or 0)
