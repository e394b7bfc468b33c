"""Jobs in the database. Every state change goes through ``jobs.transition``
and is applied as a compare-and-set update (``WHERE id AND state AND epoch``)
in the same transaction as its ``job.state`` event."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from corral.auth import WorkerClaims
from corral.errors import Conflict, JobNotActive, JobNotFound, SessionNotFound, StaleEpoch
from corral.jobs import ACTIVE, TERMINAL, Action, JobState, backoff, transition
from corral.models import Event, Job, JobCreate, NewEvent, Outcome, Runner, Session, new_id
from corral.store import events as event_log
from corral.store import sessions as session_store
from corral.store.db import Database, Tx
from corral.store.schema import jobs, runners, sessions

Row = sa.Row[Any]


def now_utc() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Lease:
    job: Job
    session: Session


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    default_max_attempts: int = 1
    backoff_base: float = 2.0
    backoff_max: float = 300.0


def _job(row: Row) -> Job:
    return Job.model_validate(row._mapping)


async def _locked(tx: Tx, job_id: str) -> Row:
    row = (
        await tx.conn.execute(sa.select(jobs).where(jobs.c.id == job_id).with_for_update())
    ).one_or_none()
    if row is None:
        raise JobNotFound(f"no job {job_id}")
    return row


async def apply(
    tx: Tx,
    row: Row,
    action: Action,
    *,
    now: datetime,
    values: dict[str, Any] | None = None,
    note: dict[str, Any] | None = None,
) -> Job:
    """Apply ``action`` to the job in ``row`` (compare-and-set) and log it."""
    old = JobState(row.state)
    new = transition(old, action, attempt=row.attempt, max_attempts=row.max_attempts)
    changes: dict[str, Any] = {"state": new, "updated_at": now, **(values or {})}
    if new is JobState.QUEUED and old is not JobState.QUEUED:
        changes.setdefault("attempt", row.attempt + 1)
        changes.update(runner_id=None, assigned_at=None, started_at=None, lease_expires_at=None)
    if new in TERMINAL:
        changes.setdefault("finished_at", now)
        changes["lease_expires_at"] = None
    updated = (
        await tx.conn.execute(
            sa.update(jobs)
            .where(jobs.c.id == row.id, jobs.c.state == old, jobs.c.epoch == row.epoch)
            .values(**changes)
            .returning(*jobs.c)
        )
    ).one_or_none()
    if updated is None:
        raise Conflict(f"job {row.id} changed concurrently; try again")
    if old in ACTIVE and new not in ACTIVE:
        await tx.conn.execute(
            sa.update(sessions)
            .where(sessions.c.id == row.session_id, sessions.c.active_job_id == row.id)
            .values(active_job_id=None)
        )
    job = _job(updated)
    payload: dict[str, Any] = {
        "job_id": job.id,
        "from": old.value,
        "to": new.value,
        "attempt": job.attempt,
    }
    if new in (JobState.FAILED, JobState.QUEUED, JobState.CANCELLED) and job.error:
        payload["error"] = job.error
        payload["reason"] = job.reason
    payload.update(note or {})
    await event_log.append(
        tx,
        job.session_id,
        [NewEvent(type="job.state", payload=payload)],
        job_id=job.id,
        epoch=job.epoch,
        now=now,
        dedup=False,
    )
    if new is JobState.QUEUED:
        tx.notify("dispatch", job.id)
    return job


async def lose(tx: Tx, row: Row, *, reason: str, error: str, now: datetime) -> Job:
    """The runner holding ``row`` is gone: bump the epoch so its writes are
    refused, then retry (attempts left) or fail the job."""
    epoch = (
        await tx.conn.execute(
            sa.update(sessions)
            .where(sessions.c.id == row.session_id)
            .values(epoch=sessions.c.epoch + 1)
            .returning(sessions.c.epoch)
        )
    ).scalar_one()
    bumped = (
        await tx.conn.execute(
            sa.update(jobs)
            .where(jobs.c.id == row.id, jobs.c.epoch == row.epoch)
            .values(epoch=epoch)
            .returning(*jobs.c)
        )
    ).one()
    return await apply(
        tx,
        bumped,
        Action.LOSE,
        now=now,
        values={"error": error, "reason": reason, "available_at": now},
    )


class Jobs:
    def __init__(self, db: Database, policy: RetryPolicy | None = None) -> None:
        self.db = db
        self.policy = policy or RetryPolicy()

    async def create(self, spec: JobCreate) -> tuple[Job, bool]:
        """Insert a job (a new session unless ``spec.session_id``). Returns
        ``(job, created)``; an existing idempotency key returns that job."""
        if spec.idempotency_key is not None:
            existing = await self._by_key(spec.idempotency_key)
            if existing is not None:
                return existing, False
        now = now_utc()
        try:
            async with self.db.write() as tx:
                if spec.session_id is not None:
                    turn = (
                        await tx.conn.execute(
                            sa.update(sessions)
                            .where(sessions.c.id == spec.session_id)
                            .values(turns=sessions.c.turns + 1, updated_at=now)
                            .returning(sessions.c.turns)
                        )
                    ).scalar_one_or_none()
                    if turn is None:
                        raise SessionNotFound(f"no session {spec.session_id}")
                    session_id = spec.session_id
                else:
                    session_id = await session_store.insert(tx, title=spec.title, now=now)
                    await tx.conn.execute(
                        sa.update(sessions).where(sessions.c.id == session_id).values(turns=1)
                    )
                    turn = 1
                job_id = new_id()
                row = (
                    await tx.conn.execute(
                        sa.insert(jobs)
                        .values(
                            id=job_id,
                            session_id=session_id,
                            turn=turn,
                            state=JobState.QUEUED,
                            provider=spec.provider,
                            title=spec.title,
                            prompt=spec.prompt,
                            command=spec.command,
                            priority=spec.priority,
                            attempt=1,
                            max_attempts=spec.max_attempts or self.policy.default_max_attempts,
                            timeout=spec.timeout,
                            labels=spec.labels,
                            idempotency_key=spec.idempotency_key,
                            source=spec.source,
                            source_ref=spec.source_ref,
                            epoch=0,
                            created_at=now,
                            available_at=now,
                            updated_at=now,
                        )
                        .returning(*jobs.c)
                    )
                ).one()
                job = _job(row)
                await event_log.append(
                    tx,
                    session_id,
                    [
                        NewEvent(
                            type="job.state",
                            payload={
                                "job_id": job_id,
                                "from": None,
                                "to": "queued",
                                "attempt": 1,
                            },
                        )
                    ],
                    job_id=job_id,
                    epoch=0,
                    now=now,
                    dedup=False,
                )
                tx.notify("dispatch", job_id)
        except sa.exc.IntegrityError:
            if spec.idempotency_key is None:
                raise
            # A concurrent submit with the same key won the race.
            existing = await self._by_key(spec.idempotency_key)
            if existing is None:
                raise
            return existing, False
        return job, True

    async def _by_key(self, key: str) -> Job | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(sa.select(jobs).where(jobs.c.idempotency_key == key))
            ).one_or_none()
        return None if row is None else _job(row)

    async def get(self, job_id: str) -> Job:
        async with self.db.read() as conn:
            row = (await conn.execute(sa.select(jobs).where(jobs.c.id == job_id))).one_or_none()
        if row is None:
            raise JobNotFound(f"no job {job_id}")
        return _job(row)

    async def list(
        self,
        *,
        states: Sequence[JobState] = (),
        session_id: str | None = None,
        provider: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> builtins.list[Job]:
        """Newest first; ``before`` is the id of the last job of the previous page."""
        stmt = sa.select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)
        if states:
            stmt = stmt.where(jobs.c.state.in_([s.value for s in states]))
        if session_id is not None:
            stmt = stmt.where(jobs.c.session_id == session_id)
        if provider is not None:
            stmt = stmt.where(jobs.c.provider == provider)
        if before is not None:
            anchor = await self.get(before)
            stmt = stmt.where(
                sa.or_(
                    jobs.c.created_at < anchor.created_at,
                    sa.and_(jobs.c.created_at == anchor.created_at, jobs.c.id < anchor.id),
                )
            )
        async with self.db.read() as conn:
            return [_job(r) for r in await conn.execute(stmt)]

    async def cancel(self, job_id: str, *, by: str = "operator") -> Job:
        now = now_utc()
        async with self.db.write() as tx:
            row = await _locked(tx, job_id)
            job = await apply(
                tx,
                row,
                Action.CANCEL,
                now=now,
                values={"error": f"cancelled by {by}", "reason": "cancelled"},
            )
            if row.runner_id is not None and JobState(row.state) in ACTIVE:
                tx.notify(f"runner:{row.runner_id}", f"cancel:{job_id}")
        return job

    async def retry(self, job_id: str) -> Job:
        now = now_utc()
        async with self.db.write() as tx:
            row = await _locked(tx, job_id)
            return await apply(
                tx,
                row,
                Action.RETRY,
                now=now,
                values={
                    "max_attempts": max(row.max_attempts, row.attempt + 1),
                    "available_at": now,
                    "result": None,
                    "error": None,
                    "reason": None,
                    "exit_code": None,
                    "finished_at": None,
                    "usage": None,
                    "cost": None,
                },
                note={"manual": True},
            )

    async def lease(self, runner: Runner, max_jobs: int, ttl: float) -> builtins.list[Lease]:
        """Assign up to ``max_jobs`` queued jobs to ``runner``: lowest priority
        value first, then oldest; one active turn per session, turns in order."""
        now = now_utc()
        leased: builtins.list[Lease] = []
        async with self.db.write() as tx:
            conn = tx.conn
            held = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(jobs)
                    .where(
                        jobs.c.runner_id == runner.id,
                        jobs.c.state.in_([s.value for s in ACTIVE]),
                    )
                )
            ).scalar_one()
            await conn.execute(
                sa.update(runners).where(runners.c.id == runner.id).values(last_seen_at=now)
            )
            room = min(max_jobs, runner.slots - held)
            if room <= 0:
                return []
            earlier = jobs.alias("earlier")
            stmt = (
                sa.select(jobs.c.id, jobs.c.session_id)
                .join(sessions, sessions.c.id == jobs.c.session_id)
                .where(
                    jobs.c.state == JobState.QUEUED.value,
                    jobs.c.available_at <= now,
                    jobs.c.provider.in_(runner.providers),
                    sessions.c.active_job_id.is_(None),
                    ~sa.exists().where(
                        earlier.c.session_id == jobs.c.session_id,
                        earlier.c.state == JobState.QUEUED.value,
                        earlier.c.turn < jobs.c.turn,
                    ),
                )
                .order_by(jobs.c.priority, jobs.c.created_at, jobs.c.id)
                .limit(room)
            )
            if not self.db.is_sqlite:
                stmt = stmt.with_for_update(of=jobs, skip_locked=True)
            for job_id, session_id in (await conn.execute(stmt)).all():
                srow = (
                    await conn.execute(
                        sa.update(sessions)
                        .where(sessions.c.id == session_id, sessions.c.active_job_id.is_(None))
                        .values(active_job_id=job_id, epoch=sessions.c.epoch + 1, updated_at=now)
                        .returning(*sessions.c)
                    )
                ).one_or_none()
                if srow is None:
                    continue
                row = (
                    await conn.execute(
                        sa.update(jobs)
                        .where(jobs.c.id == job_id)
                        .values(epoch=srow.epoch)
                        .returning(*jobs.c)
                    )
                ).one()
                job = await apply(
                    tx,
                    row,
                    Action.ASSIGN,
                    now=now,
                    values={
                        "runner_id": runner.id,
                        "assigned_at": now,
                        "lease_expires_at": now + timedelta(seconds=ttl),
                    },
                    note={"runner_id": runner.id},
                )
                leased.append(Lease(job, Session.model_validate(srow._mapping)))
        return leased

    async def _owned(self, tx: Tx, claims: WorkerClaims) -> Row:
        row = await _locked(tx, claims.job_id)
        if row.epoch != claims.epoch or row.runner_id != claims.runner_id:
            raise StaleEpoch(
                f"job {row.id} is at epoch {row.epoch}, this worker holds epoch {claims.epoch}"
            )
        if JobState(row.state) not in ACTIVE:
            raise JobNotActive(f"job {row.id} is {row.state}; stop working on it")
        return row

    async def start(self, claims: WorkerClaims, *, started_at: datetime | None = None) -> Job:
        now = now_utc()
        async with self.db.write() as tx:
            row = await self._owned(tx, claims)
            if row.state == JobState.RUNNING:
                return _job(row)
            return await apply(
                tx, row, Action.START, now=now, values={"started_at": started_at or now}
            )

    async def heartbeat(self, claims: WorkerClaims, ttl: float) -> Job:
        now = now_utc()
        async with self.db.write() as tx:
            await self._owned(tx, claims)
            row = (
                await tx.conn.execute(
                    sa.update(jobs)
                    .where(jobs.c.id == claims.job_id)
                    .values(lease_expires_at=now + timedelta(seconds=ttl))
                    .returning(*jobs.c)
                )
            ).one()
        return _job(row)

    async def append_events(
        self, claims: WorkerClaims, items: Sequence[NewEvent]
    ) -> tuple[builtins.list[Event], builtins.list[str]]:
        async with self.db.write() as tx:
            await self._owned(tx, claims)
            return await event_log.append(
                tx,
                claims.session_id,
                items,
                job_id=claims.job_id,
                epoch=claims.epoch,
                now=now_utc(),
            )

    async def set_handle(self, claims: WorkerClaims, handle: str | None) -> None:
        async with self.db.write() as tx:
            await self._owned(tx, claims)
            await session_store.Sessions(self.db).set_handle(tx, claims.session_id, handle)

    async def complete(
        self, claims: WorkerClaims, outcome: Outcome, items: Sequence[NewEvent] = ()
    ) -> tuple[Job, builtins.list[str]]:
        now = now_utc()
        async with self.db.write() as tx:
            row = await self._owned(tx, claims)
            duplicates: builtins.list[str] = []
            if items:
                _, duplicates = await event_log.append(
                    tx,
                    claims.session_id,
                    items,
                    job_id=claims.job_id,
                    epoch=claims.epoch,
                    now=now,
                )
            values: dict[str, Any] = {
                "result": outcome.result,
                "exit_code": outcome.exit_code,
                "usage": outcome.usage,
                "cost": outcome.cost,
            }
            if outcome.status == "done":
                values.update(error=None, reason=None)
                job = await apply(tx, row, Action.SUCCEED, now=now, values=values)
            else:
                values.update(error=outcome.error or "failed", reason=outcome.reason or "error")
                if row.attempt < row.max_attempts:
                    delay = backoff(
                        row.attempt, base=self.policy.backoff_base, cap=self.policy.backoff_max
                    )
                    values["available_at"] = now + timedelta(seconds=delay)
                job = await apply(tx, row, Action.FAIL, now=now, values=values)
        return job, duplicates

    async def expire(self) -> builtins.list[Job]:
        """Watchdog: jobs whose lease ran out lose their runner."""
        now = now_utc()
        lost: builtins.list[Job] = []
        async with self.db.write() as tx:
            stmt = (
                sa.select(jobs)
                .where(jobs.c.state.in_([s.value for s in ACTIVE]), jobs.c.lease_expires_at < now)
                .limit(500)
            )
            if not self.db.is_sqlite:
                stmt = stmt.with_for_update(skip_locked=True)
            for row in (await tx.conn.execute(stmt)).all():
                lost.append(
                    await lose(
                        tx,
                        row,
                        reason="runner_lost",
                        now=now,
                        error=f"runner {row.runner_id} stopped heartbeating (lease expired)",
                    )
                )
        return lost

    async def counts(self) -> dict[str, int]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                sa.select(jobs.c.state, sa.func.count()).group_by(jobs.c.state)
            )
            return {str(state): int(n) for state, n in rows}
