"""Sessions: conversations whose turns are jobs."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from corral.errors import SessionNotFound
from corral.models import Session, new_id
from corral.store import ids
from corral.store.db import Database, Tx
from corral.store.schema import sessions


def insert(tx: Tx, *, title: str | None, now: datetime, turns: int = 0) -> str:
    session_id = new_id()
    tx.conn.execute(
        sa.insert(sessions).values(
            id=session_id,
            title=title,
            created_at=now,
            updated_at=now,
            epoch=0,
            last_seq=0,
            turns=turns,
        )
    )
    return session_id


def set_handle(tx: Tx, session_id: str, handle: str | None) -> None:
    tx.conn.execute(sa.update(sessions).where(sessions.c.id == session_id).values(handle=handle))


class Sessions:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, title: str | None = None) -> Session:
        now = datetime.now(UTC)
        session_id = await self.db.write(lambda tx: insert(tx, title=title, now=now))
        return await self.get(session_id)

    async def resolve(self, ref: str) -> str:
        """The session id ``ref`` names: a whole id, or a unique prefix of 4+ hex digits."""
        return await ids.resolve(self.db, sessions, ref, "session", SessionNotFound)

    async def get(self, session_id: str) -> Session:
        row = await self.db.read(
            lambda conn: conn.execute(
                sa.select(sessions).where(sessions.c.id == session_id)
            ).one_or_none()
        )
        if row is None:
            raise SessionNotFound(f"no session {session_id}")
        return Session.model_validate(row._mapping)
