"""The session event log: append-only, ``seq`` without gaps per session,
writer-minted ``event_id`` for deduplication. Ephemeral events are published
live but never stored (and carry no seq)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from corral.errors import SessionNotFound
from corral.models import Event, NewEvent
from corral.protocol import topics
from corral.store.db import Database, Tx
from corral.store.schema import events, sessions


def append(
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
    existing: set[str] = set()
    if dedup:
        # Lock the session row first, so that two writers re-sending the same
        # event_id cannot both miss it below.
        found = conn.execute(
            sa.select(sessions.c.id).where(sessions.c.id == session_id).with_for_update()
        ).scalar_one_or_none()
        if found is None:
            raise SessionNotFound(f"no session {session_id}")
        ids = [e.event_id for e in items if not e.ephemeral]
        if ids:
            existing = set(
                conn.execute(
                    sa.select(events.c.event_id).where(events.c.event_id.in_(ids))
                ).scalars()
            )
    duplicates: list[str] = []
    fresh: list[NewEvent] = []
    for item in items:
        if item.ephemeral:
            continue
        if item.event_id in existing:
            duplicates.append(item.event_id)
        else:
            existing.add(item.event_id)
            fresh.append(item)
    seq = 0
    if fresh:
        # Allocate the seqs; on PostgreSQL this also holds the row lock to commit.
        last = conn.execute(
            sa.update(sessions)
            .where(sessions.c.id == session_id)
            .values(last_seq=sessions.c.last_seq + len(fresh), updated_at=now)
            .returning(sessions.c.last_seq)
        ).scalar_one_or_none()
        if last is None:
            raise SessionNotFound(f"no session {session_id}")
        seq = last - len(fresh)
    keep = {id(item) for item in fresh}
    published: list[Event] = []
    rows: list[dict[str, Any]] = []
    for item in items:
        if item.ephemeral:
            published.append(
                Event(
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
        if id(item) not in keep:
            continue
        seq += 1
        row: dict[str, Any] = {
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
        published.append(Event(ephemeral=False, **row))
    if rows:
        conn.execute(sa.insert(events), rows)
    if published:
        tx.notify(topics.session(session_id), published)
    return [e for e in published if e.seq is not None], duplicates


class Events:
    def __init__(self, db: Database) -> None:
        self.db = db

    # Last: from here on in the class body, ``list`` names this method, not the builtin.
    async def list(
        self,
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
        return await self.db.read(
            lambda conn: [Event(ephemeral=False, **r._mapping) for r in conn.execute(stmt)]
        )
