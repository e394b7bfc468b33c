"""Sessions: conversations whose turns are jobs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from corral.errors import SessionNotFound
from corral.models import Session, new_id
from corral.store import ids
from corral.store.db import Database, Tx, fields
from corral.store.prepared import Prepared
from corral.store.schema import jobs, sessions

# Built once (one per job submitted without a session; issue #18).
_INSERT = Prepared(sa.insert(sessions), per_call_columns=True)


def insert(tx: Tx, *, title: str | None, now: datetime, turns: int = 0, last_seq: int = 0) -> str:
    """A new session; ``last_seq``: seqs its creator reserved for its first
    events (``events.append``)."""
    session_id = new_id()
    _INSERT(
        tx.conn,
        {
            "id": session_id,
            "title": title,
            "created_at": now,
            "updated_at": now,
            "epoch": 0,
            "last_seq": last_seq,
            "turns": turns,
        },
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
        return Session.model_validate(fields(row))

    async def page(self, *, limit: int = 50, before: str | None = None) -> list[SessionRow]:
        """Newest first, each with its last turn; ``before`` is the id of the
        last session of the previous page (one index walk at any size)."""
        after = None if before is None else await self.get(before)
        stmt = page_query(limit, after)

        def body(conn: sa.Connection) -> list[SessionRow]:
            out = []
            for row in conn.execute(stmt):
                m = row._mapping
                session = Session.model_validate({c.name: m[c] for c in sessions.c})
                what = m["job_title"] or m["command"] or m["prompt"] or ""
                out.append(SessionRow(session, m["job_id"], m["state"], m["provider"], what[:200]))
            return out

        return await self.db.read(body)


def page_query(limit: int, after: Session | None) -> sa.Select[Any]:
    """A page of sessions, newest first, joined to their last turn's job."""
    last = jobs.alias("last")
    its_last_turn = sa.and_(last.c.session_id == sessions.c.id, last.c.turn == sessions.c.turns)
    stmt = (
        sa.select(sessions, last.c.id.label("job_id"), last.c.state, last.c.provider)
        .add_columns(last.c.title.label("job_title"), last.c.prompt, last.c.command)
        .select_from(sessions.outerjoin(last, its_last_turn))
        .order_by(sessions.c.created_at.desc(), sessions.c.id.desc())
        .limit(limit)
    )
    if after is not None:
        stmt = stmt.where(
            sa.or_(
                sessions.c.created_at < after.created_at,
                sa.and_(sessions.c.created_at == after.created_at, sessions.c.id < after.id),
            )
        )
    return stmt


@dataclass(frozen=True)
class SessionRow:
    """A session in a list: the session, and its last turn's job (if any)."""

    session: Session
    job_id: str | None
    state: str | None
    provider: str | None
    what: str  # the last turn's title, command or prompt (its head)
