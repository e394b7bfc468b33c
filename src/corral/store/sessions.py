"""Sessions: conversations whose turns are jobs."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from corral.errors import SessionNotFound
from corral.models import Session, new_id
from corral.store.db import Database, Tx
from corral.store.schema import sessions


async def insert(tx: Tx, *, title: str | None, now: datetime) -> str:
    session_id = new_id()
    await tx.conn.execute(
        sa.insert(sessions).values(
            id=session_id,
            title=title,
            created_at=now,
            updated_at=now,
            epoch=0,
            last_seq=0,
            turns=0,
        )
    )
    return session_id


class Sessions:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, title: str | None = None) -> Session:
        async with self.db.write() as tx:
            session_id = await insert(tx, title=title, now=datetime.now(UTC))
        return await self.get(session_id)

    async def get(self, session_id: str) -> Session:
        async with self.db.read() as conn:
            row = (
                await conn.execute(sa.select(sessions).where(sessions.c.id == session_id))
            ).one_or_none()
        if row is None:
            raise SessionNotFound(f"no session {session_id}")
        return Session.model_validate(row._mapping)

    async def set_handle(self, tx: Tx, session_id: str, handle: str | None) -> None:
        await tx.conn.execute(
            sa.update(sessions).where(sessions.c.id == session_id).values(handle=handle)
        )
