"""Chat channels in the database: which session each conversation is, and
the chat outbox.

A reply row is written in the transaction that ends its turn (``on_state``,
called by ``jobs.state.apply``), so a turn never ends without its reply
being owed, even if the process dies the next instant; the sender
(``corral.sinks.chat``) sends what is due, in order per conversation, and
records each attempt. Rows carry a unique ``key``: a re-delivered inbound
command owes no second answer, a turn no second reply."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from corral.auth import WorkerClaims
from corral.chat import reply_text
from corral.errors import Conflict, Forbidden
from corral.jobs import TERMINAL, JobState
from corral.models import new_id
from corral.protocol import topics
from corral.store import sessions as session_store
from corral.store.db import Database, Tx
from corral.store.outbox import first_pending
from corral.store.schema import chat_outbox, chat_sessions

Row = sa.Row[Any]


@dataclass(frozen=True, slots=True)
class Target:
    """Where a conversation's messages go."""

    channel: str
    conversation: str
    chat_id: str
    user_id: str
    thread_id: str | None = None

    def body(self, kind: str, text: str, job_id: str | None) -> dict[str, Any]:
        """The outbound message (the bridge contract's body)."""
        return {
            "channel_id": self.chat_id,
            "user_id": self.user_id,
            "thread_id": self.thread_id,
            "text": text,
            "job_id": job_id,
            "kind": kind,
        }


@dataclass(frozen=True, slots=True)
class Due:
    seq: int
    id: str
    channel: str
    conversation: str
    kind: str
    body: dict[str, Any]
    attempts: int
    parts_sent: int
    created_at: datetime


def _target(row: Row) -> Target:
    return Target(row.channel, row.conversation, row.chat_id, row.user_id, row.thread_id)


def _latest(conn: sa.Connection, channel: str, conversation: str) -> Row | None:
    return conn.execute(
        sa.select(chat_sessions)
        .where(chat_sessions.c.channel == channel, chat_sessions.c.conversation == conversation)
        .order_by(chat_sessions.c.generation.desc())
        .limit(1)
    ).one_or_none()


def _enqueue(
    tx: Tx,
    target: Target,
    *,
    key: str,
    kind: str,
    text: str,
    session_id: str | None,
    job_id: str | None,
    now: datetime,
) -> bool:
    """Owe ``text`` to the conversation, unless something was owed under ``key`` already."""
    if tx.conn.execute(sa.select(chat_outbox.c.seq).where(chat_outbox.c.key == key)).first():
        return False
    row_id = new_id()
    tx.conn.execute(
        sa.insert(chat_outbox).values(
            id=row_id,
            key=key,
            channel=target.channel,
            conversation=target.conversation,
            session_id=session_id,
            job_id=job_id,
            kind=kind,
            body={"id": row_id, **target.body(kind, text, job_id)},
            state="pending",
            attempts=0,
            parts_sent=0,
            next_attempt_at=now,
            created_at=now,
        )
    )
    tx.notify(topics.CHAT, target.channel)
    return True


def on_state(tx: Tx, row: Row, now: datetime) -> None:
    """Owe the reply of a chat turn that just ended (``row``: the updated job)."""
    if row.source != "chat" or JobState(row.state) not in TERMINAL:
        return
    found = tx.conn.execute(
        sa.select(chat_sessions).where(chat_sessions.c.session_id == row.session_id)
    ).one_or_none()
    if found is None:
        return
    _enqueue(
        tx,
        _target(found),
        key=f"job:{row.id}:{row.attempt}",
        kind="reply",
        text=reply_text(row.state, row.result, row.error),
        session_id=row.session_id,
        job_id=row.id,
        now=now,
    )


def _due_query() -> sa.Select[Any]:
    first = first_pending(chat_outbox, chat_outbox.c.channel, chat_outbox.c.conversation)
    return (
        sa.select(chat_outbox)
        .where(
            chat_outbox.c.state == "pending",
            chat_outbox.c.next_attempt_at <= sa.bindparam("now"),
            first,  # in order per conversation
        )
        .order_by(chat_outbox.c.next_attempt_at, chat_outbox.c.seq)
        .limit(sa.bindparam("limit"))
    )


_DUE = _due_query()


def on_question(
    tx: Tx, row: Row, question_id: str, text: str, options: Sequence[str], now: datetime
) -> None:
    """Ask the conversation a chat turn came from (``row``: the job): its
    user's next message there answers (``intake/chat.py``)."""
    if row.source != "chat":
        return
    found = tx.conn.execute(
        sa.select(chat_sessions).where(chat_sessions.c.session_id == row.session_id)
    ).one_or_none()
    if found is None:
        return
    if options:
        text += "\n\n" + " / ".join(options)
    _enqueue(
        tx,
        _target(found),
        key=f"question:{question_id}",
        kind="question",
        text=text,
        session_id=row.session_id,
        job_id=row.id,
        now=now,
    )


class Chats:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def session(
        self, target: Target, *, title: str, now: datetime, started_by: str | None = None
    ) -> tuple[str, bool]:
        """The session of ``target``'s conversation (created on its first
        message). ``started_by``: a /new message: a new session for the
        conversation, once per message however often it is delivered.
        Returns ``(session_id, created)``."""

        def body(tx: Tx) -> tuple[str, bool]:
            if started_by is not None:
                again = tx.conn.execute(
                    sa.select(chat_sessions.c.session_id).where(
                        chat_sessions.c.started_by == started_by
                    )
                ).scalar_one_or_none()
                if again is not None:
                    return again, False
            latest = _latest(tx.conn, target.channel, target.conversation)
            if latest is not None and started_by is None:
                return str(latest.session_id), False
            session_id = session_store.insert(tx, title=title, now=now)
            tx.conn.execute(
                sa.insert(chat_sessions).values(
                    session_id=session_id,
                    channel=target.channel,
                    conversation=target.conversation,
                    generation=0 if latest is None else latest.generation + 1,
                    chat_id=target.chat_id,
                    user_id=target.user_id,
                    thread_id=target.thread_id,
                    started_by=started_by,
                    created_at=now,
                )
            )
            return session_id, True

        try:
            return await self.db.write(body)
        except sa.exc.IntegrityError:  # another replica made it first: it is the one
            return await self.db.write(body)

    async def owed(self, key: str) -> bool:
        """Whether something was owed under ``key`` (sent or not)."""
        return await self.db.read(
            lambda conn: (
                conn.execute(sa.select(chat_outbox.c.seq).where(chat_outbox.c.key == key)).first()
                is not None
            )
        )

    async def current(self, channel: str, conversation: str) -> str | None:
        """The session a conversation is in now (None: it has not started)."""
        row = await self.db.read(lambda conn: _latest(conn, channel, conversation))
        return None if row is None else str(row.session_id)

    async def target(self, session_id: str) -> Target | None:
        """The conversation a session belongs to (None: it is no chat's)."""
        row = await self.db.read(
            lambda conn: conn.execute(
                sa.select(chat_sessions).where(chat_sessions.c.session_id == session_id)
            ).one_or_none()
        )
        return None if row is None else _target(row)

    async def enqueue(
        self,
        target: Target,
        *,
        key: str,
        kind: str,
        text: str,
        now: datetime,
        session_id: str | None = None,
        job_id: str | None = None,
    ) -> bool:
        """Owe a message to a conversation; False if ``key`` was owed before."""
        return await self.db.write(
            lambda tx: _enqueue(
                tx,
                target,
                key=key,
                kind=kind,
                text=text,
                session_id=session_id,
                job_id=job_id,
                now=now,
            )
        )

    async def due(self, now: datetime, limit: int) -> list[Due]:
        rows = await self.db.read(
            lambda conn: conn.execute(_DUE, {"now": now, "limit": limit}).all()
        )
        return [
            Due(
                r.seq,
                r.id,
                r.channel,
                r.conversation,
                r.kind,
                r.body,
                r.attempts,
                r.parts_sent,
                r.created_at,
            )
            for r in rows
        ]

    async def record(
        self,
        seq: int,
        *,
        at: datetime,
        outcome: str,  # delivered, failed, or retry
        error: str | None = None,
        parts_sent: int = 0,
        retry_in: float = 0.0,
    ) -> None:
        """Log one attempt and move the row on."""

        def body(tx: Tx) -> None:
            tx.conn.execute(
                sa.update(chat_outbox)
                .where(chat_outbox.c.seq == seq)
                .values(
                    attempts=chat_outbox.c.attempts + 1,
                    parts_sent=parts_sent,
                    last_error=error,
                    state="pending" if outcome == "retry" else outcome,
                    next_attempt_at=at + timedelta(seconds=retry_in),
                    delivered_at=at if outcome == "delivered" else None,
                )
            )
            if outcome != "retry":
                tx.notify(topics.CHAT, str(seq))  # the next one of its conversation may go

        await self.db.write(body)

    async def send(
        self, claims: WorkerClaims, *, message_id: str, text: str, to: str | None, now: datetime
    ) -> tuple[str, str, bool]:
        """An agent's message to the conversation its turn came from (fenced by
        its worker claims). ``to``: the conversation's chat id (the default)
        or its user's id, for a direct message. Returns ``(outbox id,
        channel, created)``; a ``message_id`` sent before is not sent again."""
        from corral.store.jobs.state import owned  # the jobs store imports this module

        def body(tx: Tx) -> tuple[str, str, bool]:
            row = owned(tx, claims)
            found = tx.conn.execute(
                sa.select(chat_sessions).where(chat_sessions.c.session_id == row.session_id)
            ).one_or_none()
            if found is None:
                raise Conflict(f"job {row.id} is not a turn of a chat conversation: no one to tell")
            target = _target(found)
            if to is not None and to not in (target.chat_id, target.user_id):
                raise Forbidden(
                    f"a job may message only its own conversation (chat {target.chat_id} "
                    f"or user {target.user_id}), not {to!r}"
                )
            if to is not None and to != target.chat_id:  # the user, directly
                target = Target(target.channel, f"{to}/u/{to}", to, target.user_id, thread_id=None)
            key = f"message:{row.id}:{message_id}"
            created = _enqueue(
                tx,
                target,
                key=key,
                kind="message",
                text=text,
                session_id=row.session_id,
                job_id=row.id,
                now=now,
            )
            sent = tx.conn.execute(
                sa.select(chat_outbox.c.id).where(chat_outbox.c.key == key)
            ).scalar_one()
            return str(sent), target.channel, created

        return await self.db.write(body)

    # Last: from here on in the class body, ``list`` names this method, not the builtin.
    async def list(
        self,
        *,
        channel: str | None = None,
        session_id: str | None = None,
        state: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Outbox rows, newest first."""
        stmt = sa.select(chat_outbox).order_by(chat_outbox.c.seq.desc()).limit(limit)
        if channel is not None:
            stmt = stmt.where(chat_outbox.c.channel == channel)
        if session_id is not None:
            stmt = stmt.where(chat_outbox.c.session_id == session_id)
        if state is not None:
            stmt = stmt.where(chat_outbox.c.state == state)
        return await self.db.read(
            lambda conn: [
                {
                    "id": r.id,
                    "channel": r.channel,
                    "session_id": r.session_id,
                    "job_id": r.job_id,
                    "kind": r.kind,
                    "state": r.state,
                    "attempts": r.attempts,
                    "last_error": r.last_error,
                    "created_at": r.created_at,
                    "delivered_at": r.delivered_at,
                    "body": r.body,
                }
                for r in conn.execute(stmt)
            ]
        )
