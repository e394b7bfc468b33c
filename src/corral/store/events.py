"""The session event log: append-only, ``seq`` without gaps per session,
writer-minted ``event_id`` for deduplication. Ephemeral events are published
live but never stored (and carry no seq)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa

from corral.errors import SessionNotFound
from corral.models import Event, NewEvent
from corral.store.db import Database, Tx
from corral.store.schema import events, sessions


async def append(
    tx: Tx,
    session_id: str,
    items: Sequence[NewEvent],
    *,
    job_id: str | None,
    epoch: int,
    now: datetime,
    dedup: bool = True,
) -> tuple[list[Event], list[str]]:
    """Append ``items``; returns (stored events, duplicate event ids)."""
    conn = tx.conn
    # Lock the session row: seq allocation is serialised per session.
    last = (
        await conn.execute(
            sa.select(sessions.c.last_seq).where(sessions.c.id == session_id).with_for_update()
        )
    ).scalar_one_or_none()
    if last is None:
        raise SessionNotFound(f"no session {session_id}")
    existing: set[str] = set()
    if dedup:
        ids = [e.event_id for e in items if not e.ephemeral]
        if ids:
            existing = set(
                (
                    await conn.execute(
                        sa.select(events.c.event_id).where(events.c.event_id.in_(ids))
                    )
                ).scalars()
            )
    duplicates: list[str] = []
    published: list[Event] = []
    rows: list[dict[str, object]] = []
    seq = last
    for item in items:
        if item.ephemeral:
            published.append(
                Event.model_construct(
                    session_id=session_id,
                    seq=None,
                    event_id=item.event_id,
                    job_id=job_id,
                    type=item.type,
                    epoch=epoch,
                    payload=item.payload,
                    ephemeral=True,
                    internal=item.internal,
                    created_at=now,
                )
            )
            continue
        if item.event_id in existing:
            duplicates.append(item.event_id)
            continue
        existing.add(item.event_id)
        seq += 1
        row = {
            "session_id": session_id,
            "seq": seq,
            "event_id": item.event_id,
            "job_id": job_id,
            "type": item.type,
            "epoch": epoch,
            "payload": item.payload,
            "internal": item.internal,
            "created_at": now,
        }
        rows.append(row)
        published.append(Event.model_construct(ephemeral=False, **row))
    if rows:
        await conn.execute(sa.insert(events), rows)
        await conn.execute(
            sa.update(sessions)
            .where(sessions.c.id == session_id)
            .values(last_seq=seq, updated_at=now)
        )
    if published:
        tx.notify(f"session:{session_id}", published)
    return [e for e in published if e.seq is not None], duplicates


def _event(row: sa.Row[tuple[object, ...]]) -> Event:
    return Event.model_validate({**row._mapping, "ephemeral": False})


class Events:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def list(
        self,
        session_id: str,
        *,
        since: int = 0,
        limit: int = 1000,
        job_id: str | None = None,
        internal: bool = False,
    ) -> list[Event]:
        return await list_events(
            self.db, session_id, since=since, limit=limit, job_id=job_id, internal=internal
        )


async def list_events(
    db: Database,
    session_id: str,
    *,
    since: int = 0,
    limit: int = 1000,
    job_id: str | None = None,
    internal: bool = False,
) -> list[Event]:
    stmt = (
        sa.select(events)
        .where(events.c.session_id == session_id, events.c.seq > since)
        .order_by(events.c.seq)
        .limit(limit)
    )
    if job_id is not None:
        stmt = stmt.where(events.c.job_id == job_id)
    if not internal:
        stmt = stmt.where(events.c.internal.is_(False))
    async with db.read() as conn:
        return [_event(r) for r in await conn.execute(stmt)]
