"""Jobs in the database, by concern:

- ``state``: the compare-and-set core (``apply``) every state change goes
  through, in the same transaction as its ``job.state`` event;
- ``create``: queueing a job; ``lifecycle``: what operators and workers do
  to it after, and what happens when its runner goes away;
- ``rules`` and ``dispatch``: the dispatch rules, the lease built from them,
  and ``waiting()`` explained by them;
- ``quota``: quota pauses and fallbacks; ``artifacts``; ``report``: the
  delegation report; ``reads``.

Module functions are transaction bodies (sync, given a ``Tx`` or a
connection); the ``Jobs`` facade runs each in one hop with ``Database.write``
or ``Database.read``."""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from corral import redact
from corral.auth import WorkerClaims
from corral.errors import ArtifactNotFound, CorralError, JobNotFound
from corral.jobs import JobState
from corral.jsontext import dumps
from corral.models import Artifact, Event, Job, JobCreate, NewEvent, Outcome, ProviderPause, Runner
from corral.protocol import JournalAnswer, JournalEntry
from corral.routing import Decision
from corral.store import ids
from corral.store.db import Database, Tx, fields
from corral.store.jobs import (
    artifacts,
    children,
    create,
    dispatch,
    handoff,
    later,
    lifecycle,
    quota,
    reads,
    report,
    stats,
    turns,
    usage,
)
from corral.store.jobs import budgets as budget_rules
from corral.store.jobs.dispatch import Lease
from corral.store.jobs.lifecycle import lose
from corral.store.jobs.policy import Caps, RetryPolicy
from corral.store.jobs.state import now_utc, to_job
from corral.store.schema import jobs as jobs_table

__all__ = ["Caps", "Jobs", "Lease", "RetryPolicy", "lose", "now_utc"]

SESSIONS_KNOWN = 10_000  # jobs whose session ``Jobs.session_of`` keeps


class Jobs:
    """The jobs repository: ``store.jobs.create(...)``, ``.get``, ``.lease``..."""

    def __init__(
        self, db: Database, policy: RetryPolicy | None = None, caps: Caps | None = None
    ) -> None:
        self.db = db
        self.policy = policy or RetryPolicy()
        self.caps = caps or Caps()
        # Lease polls of this process waiting for work: a new job goes to one
        # in the transaction creating it (jobs/handoff.py).
        self.polls = handoff.Waiting()
        # The session of each job this process created or read lately: a job
        # never moves to another (nor is it deleted), and following a job's
        # events, as every submit that waits for its result does, needs no
        # more than that: no read of the job (issue #18).
        self._sessions: OrderedDict[str, str] = OrderedDict()
        # When a lease of this process last cleared the flag of the jobs
        # whose time had come (jobs/later.py).
        self._promoted: datetime | None = None

    async def create(
        self,
        spec: JobCreate,
        route: Decision | None = None,
        *,
        parent: WorkerClaims | None = None,
        traceparent: str | None = None,
    ) -> tuple[Job, bool]:
        """Insert a job (a new session unless ``spec.session_id``), on the
        provider ``route`` chose (without one: as if routing did not exist).
        Returns ``(job, created)``; an existing idempotency key returns that job.
        With ``parent`` (a worker's claims): a sub-job of that worker's job,
        refused if the worker was fenced off. ``traceparent``: the W3C trace
        context of its submit span (corral.tracing)."""
        if spec.idempotency_key is not None:
            existing = await self.by_idempotency_key(spec.idempotency_key)
            if existing is not None:
                return existing, False
        now, policy, caps, polls = now_utc(), self.policy, self.caps, self.polls
        skip_locked = not self.db.is_sqlite

        def body(tx: Tx) -> Job:
            job = create.create(
                tx, spec, route, policy=policy, now=now, parent=parent, traceparent=traceparent
            )
            if polls and job.state is JobState.QUEUED:
                leased = handoff.hand_off(
                    tx, polls, job.provider, caps=caps, skip_locked=skip_locked, now=now
                )
                # Handed to a runner at once: the job as it is when committed.
                job = next((x.job for x in leased if x.job.id == job.id), job)
            return job

        try:
            job = await self.db.write(body)
        except sa.exc.IntegrityError:
            if spec.idempotency_key is None:
                raise
            # A concurrent submit with the same key won the race.
            existing = await self.by_idempotency_key(spec.idempotency_key)
            if existing is None:
                raise
            return existing, False
        self._remember(job)
        return job, True

    async def by_idempotency_key(self, key: str) -> Job | None:
        return await self.db.read(lambda conn: reads.by_idempotency_key(conn, key))

    async def resolve(self, ref: str) -> str:
        """The job id ``ref`` names: a whole id, or a unique prefix of 4+ hex digits."""
        return await ids.resolve(self.db, jobs_table, ref, "job", JobNotFound)

    async def get(self, job_id: str) -> Job:
        row = await self.db.read(lambda conn: reads.by_id(conn, job_id))
        if row is None:
            raise JobNotFound(f"no job {job_id}")
        job = to_job(row)
        self._remember(job)
        return job

    async def session_of(self, job_id: str) -> str:
        """The id of the session ``job_id`` is in (``JobNotFound`` if there
        is no such job); read only when this process has not seen the job."""
        session_id = self._sessions.get(job_id)
        if session_id is None:
            session_id = (await self.get(job_id)).session_id
        return session_id

    def _remember(self, job: Job) -> None:
        sessions = self._sessions
        if job.id not in sessions:
            sessions[job.id] = job.session_id
            if len(sessions) > SESSIONS_KNOWN:
                sessions.popitem(last=False)

    async def cancel(self, job_id: str, *, by: str = "operator") -> Job:
        now = now_utc()
        return await self.db.write(lambda tx: lifecycle.cancel(tx, job_id, by=by, now=now))

    async def retry(self, job_id: str) -> Job:
        now = now_utc()
        return await self.db.write(lambda tx: lifecycle.retry(tx, job_id, now=now))

    async def lease(self, runner: Runner, max_jobs: int, ttl: float) -> list[Lease]:
        """Assign up to ``max_jobs`` queued jobs to ``runner``: lowest priority
        value first, then oldest; one active turn per session, turns in order."""
        now, caps, skip_locked = now_utc(), self.caps, not self.db.is_sqlite
        last = self._promoted
        # By the store's clock (the time the flag is about); a clock set back
        # promotes at once rather than wait for the old time.
        promote = last is None or not last <= now < last + later.PROMOTE_EVERY
        if promote:
            self._promoted = now
            # A transaction of its own: the lease's holds no flagged row
            # while it waits for a session's.
            await self.db.write(lambda tx: later.promote(tx, skip_locked=skip_locked, now=now))
        return await self.db.write(
            lambda tx: dispatch.lease(
                tx, runner, max_jobs, ttl, caps=caps, skip_locked=skip_locked, now=now
            )
        )

    async def start(self, claims: WorkerClaims, *, started_at: datetime | None = None) -> Job:
        now = now_utc()
        return await self.db.write(
            lambda tx: lifecycle.start(tx, claims, started_at=started_at, now=now)
        )

    async def heartbeat(self, claims: WorkerClaims, ttl: float) -> Job:
        now = now_utc()
        return await self.db.write(lambda tx: lifecycle.heartbeat(tx, claims, ttl=ttl, now=now))

    async def append_events(
        self, claims: WorkerClaims, items: Sequence[NewEvent]
    ) -> tuple[list[Event], list[str]]:
        """Record a worker's events (known secrets redacted)."""
        now = now_utc()
        items, texts = _redacted(items)
        return await self.db.write(
            lambda tx: lifecycle.append_events(tx, claims, items, now=now, texts=texts)
        )

    async def set_handle(self, claims: WorkerClaims, handle: str | None) -> None:
        await self.db.write(lambda tx: lifecycle.set_handle(tx, claims, handle))

    async def complete(
        self,
        claims: WorkerClaims,
        outcome: Outcome,
        items: Sequence[NewEvent] = (),
        *,
        started_at: datetime | None = None,
    ) -> tuple[Job, list[str]]:
        """End the attempt with a worker's outcome (known secrets redacted:
        an upstream error may echo the API key); ``started_at``: the job
        starts first, in the same transaction, if it had not."""
        now, policy, budgets = now_utc(), self.policy, self.caps.budgets
        outcome = redact.outcome(outcome)
        items, texts = _redacted(items)
        return await self.db.write(
            lambda tx: lifecycle.complete(
                tx,
                claims,
                outcome,
                items,
                texts=texts,
                policy=policy,
                budgets=budgets,
                now=now,
                started_at=started_at,
            )
        )

    async def child(self, claims: WorkerClaims, job_id: str) -> Job:
        """A sub-job of the job ``claims`` holds (refused for a fenced worker
        and for any other job)."""
        return await self.db.write(lambda tx: children.child(tx, claims, job_id))

    async def cancel_child(self, claims: WorkerClaims, job_id: str) -> Job:
        """Cancel a sub-job of the job ``claims`` holds (as ``cancel`` does)."""
        now = now_utc()
        return await self.db.write(lambda tx: children.cancel(tx, claims, job_id, now=now))

    async def recover(
        self, key_id: str, entries: Sequence[tuple[WorkerClaims, JournalEntry]]
    ) -> list[JournalAnswer]:
        """Apply the outcomes a runner registering with ``key_id`` presents
        from its journal (``lifecycle.recover``), one transaction each."""
        policy, answers = self.policy, []
        for claims, entry in entries:
            entry = entry.model_copy(
                update={
                    "outcome": redact.outcome(entry.outcome),
                    "events": [redact.event(e) for e in entry.events],
                }
            )
            try:
                answer = await self.db.write(
                    functools.partial(
                        lifecycle.recover,
                        key_id=key_id,
                        claims=claims,
                        entry=entry,
                        policy=policy,
                        budgets=self.caps.budgets,
                        now=now_utc(),
                    )
                )
            except CorralError as exc:
                # One entry that cannot be applied must not keep a runner from starting.
                answer = JournalAnswer(
                    id=entry.id, job_id=claims.job_id, result="dropped", detail=exc.message
                )
            answers.append(answer)
        return answers

    async def unlease(self, job_ids: Sequence[str], runner: Runner) -> list[Job]:
        """Leases ``runner`` never received: queued again at once, nothing spent."""
        now = now_utc()
        return await self.db.write(lambda tx: lifecycle.unlease(tx, job_ids, runner, now=now))

    async def expire(self) -> list[Job]:
        """Watchdog: jobs whose lease ran out lose their runner."""
        now, budget, skip_locked = now_utc(), self.policy.max_infra_retries, not self.db.is_sqlite
        return await self.db.write(
            lambda tx: lifecycle.expire(
                tx, max_infra_retries=budget, skip_locked=skip_locked, now=now
            )
        )

    async def free_heads(self) -> list[tuple[str, str, int]]:
        """Watchdog: unflag the first live turns of sessions left flagged as
        waiting behind a turn that has ended (``turns.free_heads``); returns
        (job id, session id, turn) of each."""
        rows = await self.db.write(turns.free_heads)
        return [(r.id, r.session_id, r.turn) for r in rows]

    async def waiting(self, job: Job) -> str | None:
        """Why a queued job is not running yet (None unless it is queued)."""
        if job.state is not JobState.QUEUED:
            return None
        now, caps = now_utc(), self.caps
        return await self.db.read(lambda conn: dispatch.waiting(conn, job, caps=caps, now=now))

    async def counts(self) -> dict[str, int]:
        """Jobs by state, from the counts kept with every change (no table scan)."""
        return await self.db.read(reads.counts)

    async def counts_by_provider(self) -> dict[tuple[str, str], int]:
        """Jobs by (state, provider), from the same counts."""
        return await self.db.read(reads.counts_by_provider)

    async def compact_counts(self) -> None:
        """Fold the counts' +1/-1 rows and the usage rollup's rows (PostgreSQL;
        SQLite's triggers keep one row per key)."""
        if not self.db.is_sqlite:
            await self.db.write(lambda tx: reads.compact_counts(tx.conn))
            if await self.db.read(usage.unfolded):
                await self.db.write(lambda tx: usage.fold(tx.conn))

    async def live_by_provider(self) -> dict[str, dict[str, int]]:
        """Queued, assigned and running jobs of each provider."""
        return await self.db.read(reads.live_by_provider)

    async def stats(
        self, *, start: datetime, end: datetime, bucket: int, group_by: str
    ) -> dict[str, Any]:
        """Jobs finished in ``[start, end)``: per ``bucket`` seconds and group
        (``state`` or ``provider``) counts, cost and tokens; wait and run percentiles."""
        dialect = self.db.dialect
        return await self.db.read(
            lambda conn: stats.stats(
                conn, start=start, end=end, bucket=bucket, group_by=group_by, dialect=dialect
            )
        )

    async def usage(
        self,
        *,
        start: datetime,
        end: datetime,
        group_by: Sequence[str],
        provider: str | None = None,
        model: str | None = None,
        label: str | None = None,
        source: str | None = None,
    ) -> list[dict[str, Any]]:
        """Sums of cost, tokens, jobs and run time of the jobs that ended in
        ``[start, end)``, grouped by ``group_by``."""
        dialect = self.db.dialect
        return await self.db.read(
            lambda conn: usage.usage(
                conn,
                start=start,
                end=end,
                group_by=group_by,
                provider=provider,
                model=model,
                label=label,
                source=source,
                dialect=dialect,
            )
        )

    async def budgets(self) -> list[dict[str, Any]]:
        """Each configured budget's spend against its limit, now."""
        now, budgets = now_utc(), self.caps.budgets
        return await self.db.read(lambda conn: budget_rules.status(conn, budgets, now))

    async def pauses(self) -> list[ProviderPause]:
        """Providers paused by a quota limit, now."""
        now, fallbacks = now_utc(), self.policy.fallbacks
        return await self.db.read(lambda conn: quota.pauses(conn, fallbacks, now))

    async def unpause(self, provider: str) -> bool:
        return await self.db.write(lambda tx: quota.unpause(tx, provider))

    async def put_artifact(
        self, claims: WorkerClaims, name: str, media_type: str, data: bytes
    ) -> Artifact:
        """Store (or replace) an artifact of the job the worker holds."""
        now = now_utc()
        return await self.db.write(
            lambda tx: artifacts.put(tx, claims, name, media_type, data, now=now)
        )

    async def artifacts(self, job_id: str) -> list[Artifact]:
        await self.get(job_id)  # 404 for an unknown job
        return await self.db.read(lambda conn: artifacts.listed(conn, job_id))

    async def artifact(self, job_id: str, name: str) -> tuple[Artifact, bytes]:
        row = await self.db.read(lambda conn: artifacts.one(conn, job_id, name))
        if row is None:
            await self.get(job_id)
            raise ArtifactNotFound(f"job {job_id} has no artifact {name!r}")
        return Artifact.model_validate(fields(row)), bytes(row.data)

    async def delegated(self, providers: Sequence[str], lease_ttl: float) -> dict[str, Any]:
        """Jobs on remote providers: the ones in flight and counters."""
        if not providers:
            return report.nothing()
        return await self.db.read(lambda conn: report.delegated(conn, providers, lease_ttl))

    # Last: from here on in the class body, ``list`` names this method, not the builtin.
    async def list(
        self,
        *,
        states: Sequence[JobState] = (),
        session_id: str | None = None,
        provider: str | None = None,
        limit: int = 50,
        before: str | None = None,
        label: str | None = None,
        source: str | None = None,
        text: str | None = None,
    ) -> list[Job]:
        """Newest first; ``before`` is the id of the last job of the previous
        page; ``text`` is searched in titles, prompts and commands."""
        return await self.db.read(
            lambda conn: reads.page(
                conn,
                states=states,
                session_id=session_id,
                provider=provider,
                limit=limit,
                before=before,
                label=label,
                source=source,
                text=text,
            )
        )


def _redacted(items: Sequence[NewEvent]) -> tuple[list[NewEvent], list[str]]:
    """A worker's events with known secrets redacted, and their payloads as
    JSON text. Each payload is written once, here, and that text is what the
    redaction checks first: only a payload whose text may hold a secret is
    walked (~1 us an event less than walking every one; issue #18)."""
    events, texts = list(items), [dumps(item.payload) for item in items]
    for i in redact.suspects(texts):
        event = events[i] = redact.event(events[i])
        texts[i] = dumps(event.payload)
    return events, texts
