"""Questions a worker asks a person (``ask_human``), and their answers.

A question is **open** while it is unanswered, its timeout has not passed,
and its job is still active at the epoch that asked it: a job that ends, or
whose runner is fenced off, stops waiting without anyone having to close the
question (``OPEN`` says so once, for the reads and the answer alike).

Asking appends a ``job.question`` event, answering (or timing out) a
``job.answer`` event, in the same transaction, announced to the job's
webhooks that asked for those event types."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from corral import redact
from corral.auth import WorkerClaims
from corral.errors import Conflict, NotWaiting, QuestionNotFound
from corral.models import NewEvent, Question, WaitingFor
from corral.store import chat as chat_outbox
from corral.store import events as event_log
from corral.store import outbox
from corral.store.db import Database, Tx
from corral.store.jobs.state import ACTIVE_STATES, Row, holds, locked, now_utc
from corral.store.prepared import Prepared
from corral.store.schema import jobs, questions

QUESTION_EVENT = "job.question"
ANSWER_EVENT = "job.answer"


def _open(now: datetime | sa.BindParameter[datetime]) -> sa.ColumnElement[bool]:
    """A question is open (over ``questions`` joined to its job)."""
    return sa.and_(
        questions.c.state == "open",
        sa.or_(questions.c.expires_at.is_(None), questions.c.expires_at > now),
        jobs.c.state.in_(ACTIVE_STATES),
        jobs.c.epoch == questions.c.epoch,
    )


_WITH_JOB = questions.join(jobs, jobs.c.id == questions.c.job_id)
_OLDEST_FIRST = (questions.c.asked_at, questions.c.id)
# One job's open questions, oldest first: what GET /jobs/{id} asks for an
# active job, at every poll of a client waiting for it. Built once (issue
# #18): building and compiling the statement per call cost ~2x running it.
_WAITING_FOR_ONE = Prepared(
    sa.select(questions)
    .select_from(_WITH_JOB)
    .where(
        questions.c.job_id == sa.bindparam("job_id"),
        _open(sa.bindparam("now", type_=questions.c.expires_at.type)),
    )
    .order_by(*_OLDEST_FIRST)
    .limit(1)
)


def _question(row: Row) -> Question:
    return Question.model_validate(dict(row._mapping, question_id=row.id))


def _waiting_for(row: Row) -> WaitingFor:
    return WaitingFor.model_validate(dict(row._mapping, question_id=row.id))


def _announce(
    tx: Tx, job: Row, epoch: int, type: str, payload: dict[str, Any], now: datetime
) -> None:
    stored, _ = event_log.append(
        tx,
        job.session_id,
        [NewEvent(type=type, payload=payload)],
        job_id=job.id,
        epoch=epoch,
        now=now,
        dedup=False,
    )
    outbox.on_events(tx, job, tx.webhooks, stored, now)


def ask(
    tx: Tx,
    claims: WorkerClaims,
    question_id: str,
    text: str,
    options: Sequence[str],
    timeout: float | None,
    *,
    now: datetime,
) -> Question:
    """Record the worker's question (the same ``question_id`` again: the
    question already recorded, so a retried request asks once)."""
    job = holds(locked(tx, claims.job_id), claims)
    known = tx.conn.execute(sa.select(questions).where(questions.c.id == question_id)).one_or_none()
    if known is not None:
        if known.job_id != job.id:
            raise Conflict(f"question id {question_id} is taken; mint another")
        return _question(known)
    expires_at = None if timeout is None else now + timedelta(seconds=timeout)
    row = tx.conn.execute(
        sa.insert(questions)
        .values(
            id=question_id,
            job_id=job.id,
            epoch=job.epoch,
            question=text,
            options=list(options),
            state="open",
            asked_at=now,
            expires_at=expires_at,
        )
        .returning(*questions.c)
    ).one()
    payload: dict[str, Any] = {"question_id": question_id, "question": text, "options": options}
    if timeout is not None:
        payload["timeout"] = timeout
        payload["expires_at"] = expires_at.isoformat() if expires_at else None
    _announce(tx, job, job.epoch, QUESTION_EVENT, payload, now)
    chat_outbox.on_question(tx, job, question_id, text, options, now)
    return _question(row)


def answer(
    tx: Tx, job_id: str, text: str, question_id: str | None, *, by: str, now: datetime
) -> Question:
    """Answer the job's open question (``question_id``, else the oldest open
    one); ``NotWaiting`` if there is none."""
    job = locked(tx, job_id)
    stmt = (
        sa.select(questions).select_from(_WITH_JOB).where(questions.c.job_id == job_id, _open(now))
    )
    if question_id is not None:
        stmt = stmt.where(questions.c.id == question_id)
    row = tx.conn.execute(stmt.order_by(*_OLDEST_FIRST).limit(1)).one_or_none()
    if row is None:
        which = f"question {question_id}" if question_id else "a question"
        raise NotWaiting(f"job {job_id} is {job.state} and waits for no answer to {which}")
    answered = tx.conn.execute(
        sa.update(questions)
        .where(questions.c.id == row.id, questions.c.state == "open")
        .values(state="answered", answer=text, answered_by=by, answered_at=now)
        .returning(*questions.c)
    ).one()
    payload = {"question_id": row.id, "state": "answered", "text": text, "by": by}
    _announce(tx, job, row.epoch, ANSWER_EVENT, payload, now)
    return _question(answered)


def expire(tx: Tx, question_id: str, *, now: datetime) -> None:
    """Close a question whose timeout passed with no answer."""
    row = tx.conn.execute(
        sa.update(questions)
        .where(
            questions.c.id == question_id,
            questions.c.state == "open",
            questions.c.expires_at <= now,
        )
        .values(state="expired")
        .returning(*questions.c)
    ).one_or_none()
    if row is not None:
        job = locked(tx, row.job_id)
        payload = {"question_id": row.id, "state": "expired", "text": None}
        _announce(tx, job, row.epoch, ANSWER_EVENT, payload, now)


class Questions:
    """The questions repository: ``store.questions.ask(...)``, ``.answer``..."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def ask(
        self,
        claims: WorkerClaims,
        question_id: str,
        text: str,
        options: Sequence[str] = (),
        timeout: float | None = None,
    ) -> Question:
        """A worker asks (known secrets redacted: the agent wrote the text)."""
        now = now_utc()
        text, options = redact.text(text), [redact.text(o) for o in options]
        return await self.db.write(
            lambda tx: ask(tx, claims, question_id, text, options, timeout, now=now)
        )

    async def answer(
        self, job_id: str, text: str, *, by: str, question_id: str | None = None
    ) -> Question:
        now = now_utc()
        return await self.db.write(lambda tx: answer(tx, job_id, text, question_id, by=by, now=now))

    async def poll(self, claims: WorkerClaims, question_id: str) -> Question:
        """The worker's question as it is now; refused (409) once the worker no
        longer holds its job. A question past its timeout is closed here."""

        def read(conn: sa.Connection) -> tuple[Row, Row | None]:
            job = conn.execute(sa.select(jobs).where(jobs.c.id == claims.job_id)).one_or_none()
            if job is None:
                raise QuestionNotFound(f"no question {question_id}")
            row = conn.execute(
                sa.select(questions).where(
                    questions.c.id == question_id, questions.c.job_id == claims.job_id
                )
            ).one_or_none()
            return job, row

        job, row = await self.db.read(read)
        holds(job, claims)
        if row is None:
            raise QuestionNotFound(f"job {claims.job_id} asked no question {question_id}")
        now = now_utc()
        if row.state == "open" and row.expires_at is not None and row.expires_at <= now:
            await self.db.write(lambda tx: expire(tx, question_id, now=now))
            row = await self.db.read(
                lambda conn: conn.execute(
                    sa.select(questions).where(questions.c.id == question_id)
                ).one()
            )
        return _question(row)

    async def pending(self, limit: int = 200) -> list[tuple[str, WaitingFor]]:
        """Every open question, oldest first, with its job's id (the
        dashboard's "Needs you" list)."""
        now = now_utc()
        stmt = (
            sa.select(questions)
            .select_from(_WITH_JOB)
            .where(_open(now))
            .order_by(*_OLDEST_FIRST)
            .limit(limit)
        )
        return await self.db.read(
            lambda conn: [(str(r.job_id), _waiting_for(r)) for r in conn.execute(stmt)]
        )

    async def waiting_for(self, job_ids: Sequence[str]) -> dict[str, WaitingFor]:
        """The open question of each job that has one (the oldest, if several)."""
        if not job_ids:
            return {}
        now = now_utc()
        if len(job_ids) == 1:
            params = {"job_id": job_ids[0], "now": now}

            def one(conn: sa.Connection) -> dict[str, WaitingFor]:
                row = _WAITING_FOR_ONE(conn, params).first()
                return {} if row is None else {row.job_id: _waiting_for(row)}

            return await self.db.read(one)
        stmt = (
            sa.select(questions)
            .select_from(_WITH_JOB)
            .where(questions.c.job_id.in_(list(job_ids)), _open(now))
            .order_by(*_OLDEST_FIRST)
        )

        def read(conn: sa.Connection) -> dict[str, WaitingFor]:
            found: dict[str, WaitingFor] = {}
            for row in conn.execute(stmt):
                found.setdefault(row.job_id, _waiting_for(row))
            return found

        return await self.db.read(read)
