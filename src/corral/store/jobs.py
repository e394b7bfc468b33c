"""Jobs in the database. Every state change goes through ``jobs.transition``
and is applied as a compare-and-set update (``WHERE id AND state AND epoch``)
in the same transaction as its ``job.state`` event.

Module-level functions are transaction bodies (sync, given a ``Tx``); the
``Jobs`` methods run them with ``Database.write`` / ``Database.read``."""

from __future__ import annotations

import builtins
import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from corral.auth import WorkerClaims
from corral.errors import (
    ArtifactNotFound,
    Conflict,
    JobNotActive,
    JobNotFound,
    SessionNotFound,
    StaleEpoch,
)
from corral.jobs import ACTIVE, TERMINAL, Action, JobState, backoff, transition
from corral.models import (
    Artifact,
    Event,
    Job,
    JobCreate,
    NewEvent,
    Outcome,
    ProviderPause,
    Runner,
    Session,
    new_id,
    own_handle,
)
from corral.routing import Decision
from corral.store import events as event_log
from corral.store import ids, outbox
from corral.store import sessions as session_store
from corral.store.db import Database, Tx
from corral.store.schema import artifacts, events, jobs, provider_pauses, runners, sessions
from corral.store.schema import settings as server_settings

Row = sa.Row[Any]
_ACTIVE = [s.value for s in ACTIVE]


def now_utc() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Lease:
    job: Job
    session: Session


@dataclass(frozen=True, slots=True)
class Caps:
    """Dispatch limits. Concurrency caps: jobs beyond them wait in the queue,
    never dropped. Session affinity: a turn on a ``local`` provider (its
    workspace and the agent CLI's conversation live on one host) goes to the
    runner that ran the session's last one while that runner is alive."""

    providers: Mapping[str, int] = field(default_factory=dict)  # provider -> max active
    total: int | None = None  # max active jobs across all runners
    repo: int | None = None  # max active jobs per repository
    local: frozenset[str] = frozenset()  # providers whose sessions stay on their runner

    @property
    def any(self) -> bool:
        return bool(self.providers) or self.total is not None or self.repo is not None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    default_max_attempts: int = 1
    backoff_base: float = 2.0
    backoff_max: float = 300.0
    # Runs lost to infrastructure are re-queued without consuming an attempt,
    # at most this many times per job (a job that keeps killing its runner stops).
    max_infra_retries: int = 3
    # A quota failure without a reset time pauses its provider this long.
    quota_backoff: float = 60.0
    # provider -> provider that takes its jobs while it is paused by a quota.
    fallbacks: Mapping[str, str] = field(default_factory=dict)


SEP = "\x1f"  # between a provider and a runner name in the session-affinity filter


def _candidates() -> sa.Select[Any]:
    """Queued jobs a runner may take, most urgent first. The turn lock: no
    other turn of the session is active, and no earlier one still waits.
    Walks ix_jobs_state_priority_created_at_id in order, stops at the limit.
    Built once: constructing the alias per call costs more than running it."""
    other = jobs.alias("other")
    host = sa.select(sessions.c.host).where(sessions.c.id == jobs.c.session_id).scalar_subquery()
    return (
        sa.select(jobs.c.id, jobs.c.session_id, jobs.c.provider, jobs.c.repo, host)
        .where(
            jobs.c.state == JobState.QUEUED.value,
            jobs.c.available_at <= sa.bindparam("now"),
            jobs.c.provider.in_(sa.bindparam("providers", expanding=True)),
            sa.or_(jobs.c.repo.is_(None), jobs.c.repo.not_in(sa.bindparam("full", expanding=True))),
            # Session affinity: not a turn whose session another live runner
            # holds, if that runner serves the turn's provider.
            sa.or_(
                jobs.c.provider.not_in(sa.bindparam("local", expanding=True)),
                ~sa.exists().where(
                    sessions.c.id == jobs.c.session_id,
                    (jobs.c.provider + SEP + sessions.c.host).in_(
                        sa.bindparam("holders", expanding=True)
                    ),
                ),
            ),
            ~sa.exists().where(
                other.c.session_id == jobs.c.session_id,
                other.c.id != jobs.c.id,
                sa.or_(
                    other.c.state.in_(_ACTIVE),
                    sa.and_(other.c.state == JobState.QUEUED.value, other.c.turn < jobs.c.turn),
                ),
            ),
        )
        .order_by(jobs.c.priority, jobs.c.created_at, jobs.c.id)
        .limit(sa.bindparam("room"))
    )


_CANDIDATES = _candidates()
_ACTIVE_BY_PROVIDER = (
    sa.select(jobs.c.provider, sa.func.count())
    .where(jobs.c.state.in_(_ACTIVE))
    .group_by(jobs.c.provider)
)
_ACTIVE_BY_REPO = (
    sa.select(jobs.c.repo, sa.func.count())
    .where(jobs.c.state.in_(_ACTIVE), jobs.c.repo.is_not(None))
    .group_by(jobs.c.repo)
)
_PAUSED_PROVIDERS = sa.select(provider_pauses.c.provider).where(
    provider_pauses.c.until > sa.bindparam("now")
)
_PG_LEASE_LOCK = 0x636F7272616D
# The kill switch (Store.settings "paused"): no new leases while it is on.
_PAUSED = sa.select(server_settings.c.value).where(server_settings.c.key == "paused")
_CANDIDATES_LOCKED = _candidates().with_for_update(skip_locked=True)


def _job(row: Row) -> Job:
    return Job.model_validate(row._mapping)


def _locked(tx: Tx, job_id: str) -> Row:
    row = tx.conn.execute(
        sa.select(jobs).where(jobs.c.id == job_id).with_for_update()
    ).one_or_none()
    if row is None:
        raise JobNotFound(f"no job {job_id}")
    return row


def apply(
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
    updated = tx.conn.execute(
        sa.update(jobs)
        .where(jobs.c.id == row.id, jobs.c.state == old, jobs.c.epoch == row.epoch)
        .values(**changes)
        .returning(*jobs.c)
    ).one_or_none()
    if updated is None:
        raise Conflict(f"job {row.id} changed concurrently; try again")
    if old in ACTIVE and new not in ACTIVE:
        tx.conn.execute(
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
    event_log.append(
        tx,
        job.session_id,
        [NewEvent(type="job.state", payload=payload)],
        job_id=job.id,
        epoch=job.epoch,
        now=now,
        dedup=False,
    )
    outbox.on_state(tx, updated, tx.webhooks, now)
    if new is JobState.QUEUED:
        tx.notify("dispatch", job.id)
    if new in TERMINAL:
        tx.notify("jobs", job.id)  # sinks (queue folder, ...) wait on this
    return job


def _assign(
    tx: Tx,
    job_id: str,
    session_id: str,
    runner: Runner,
    now: datetime,
    ttl: float,
    *,
    local: bool = False,
    host: str | None = None,
) -> Lease | None:
    """Take the session's turn lock (bumping its epoch) and assign the job.
    ``local``: the turn runs where its workspace is; this runner now holds
    the session. ``host``: the runner that held it until now."""
    values: dict[str, Any] = {
        "active_job_id": job_id,
        "epoch": sessions.c.epoch + 1,
        "updated_at": now,
    }
    if local:
        values["host"] = runner.name
    srow = tx.conn.execute(
        sa.update(sessions)
        .where(sessions.c.id == session_id, sessions.c.active_job_id.is_(None))
        .values(**values)
        .returning(*sessions.c)
    ).one_or_none()
    if srow is None:
        return None
    row = tx.conn.execute(
        sa.update(jobs).where(jobs.c.id == job_id).values(epoch=srow.epoch).returning(*jobs.c)
    ).one()
    job = apply(
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
    session = {**srow._mapping, "last_seq": srow.last_seq + 1}  # + the "assigned" event
    if local and host is not None and host != runner.name:
        # Its runner is gone: this one starts the conversation afresh, in a
        # new workspace (the old handle means nothing here).
        note = (
            f"the session's runner {host!r} is gone: this turn runs on {runner.name!r} "
            "in a new workspace and starts a new conversation"
        )
        event_log.append(
            tx,
            session_id,
            [
                NewEvent(
                    type="session.moved", payload={"from": host, "to": runner.name, "note": note}
                )
            ],
            job_id=job_id,
            epoch=job.epoch,
            now=now,
            dedup=False,
        )
        session.update(last_seq=srow.last_seq + 2, handle=None)
    return Lease(job, Session.model_validate(session))


def lose(
    tx: Tx, row: Row, *, reason: str, error: str, now: datetime, max_infra_retries: int
) -> Job:
    """The runner holding ``row`` is gone: bump the epoch so its writes are
    refused, then re-queue the job (same attempt) or, with the infrastructure
    retry budget spent, fail it."""
    return _infra(
        tx,
        _fence(tx, row),
        now=now,
        values={"error": error, "reason": reason},
        budget=max_infra_retries,
    )


def _fence(tx: Tx, row: Row) -> Row:
    """Bump the session's epoch and the job's with it: writes carrying the
    old one (its runner's) are refused from now on."""
    epoch = tx.conn.execute(
        sa.update(sessions)
        .where(sessions.c.id == row.session_id)
        .values(epoch=sessions.c.epoch + 1)
        .returning(sessions.c.epoch)
    ).scalar_one()
    return tx.conn.execute(
        sa.update(jobs)
        .where(jobs.c.id == row.id, jobs.c.epoch == row.epoch)
        .values(epoch=epoch)
        .returning(*jobs.c)
    ).one()


def _infra(tx: Tx, row: Row, *, now: datetime, values: dict[str, Any], budget: int) -> Job:
    """An infrastructure failure: queued again at once as the same attempt,
    unless the job already used up its infrastructure retries."""
    values = {**values, "failure": "infra"}
    if row.infra_retries >= budget:
        values["error"] = (
            f"{values['error']} (gave up: {row.infra_retries} infrastructure retries spent)"
        )
        return apply(tx, row, Action.REJECT, now=now, values=values)
    values.update(available_at=now, attempt=row.attempt, infra_retries=row.infra_retries + 1)
    return apply(tx, row, Action.LOSE, now=now, values=values)


def paused_providers(conn: sa.Connection, now: datetime) -> set[str]:
    return {str(p) for p in conn.execute(_PAUSED_PROVIDERS, {"now": now}).scalars()}


def _fallback(
    conn: sa.Connection, provider: str, fallbacks: Mapping[str, str], now: datetime
) -> tuple[str, str | None]:
    """Where a job for ``provider`` goes now: its fallback (followed as a chain)
    while the provider is paused by a quota, else the provider itself."""
    if provider not in fallbacks:
        return provider, None
    paused = paused_providers(conn, now)
    seen = [provider]
    while provider in paused and fallbacks.get(provider) and fallbacks[provider] not in seen:
        provider = fallbacks[provider]
        seen.append(provider)
    if len(seen) == 1:
        return provider, None
    return provider, f"fallback: {' -> '.join(seen)} ({seen[0]} is paused by a quota limit)"


def _pause_provider(
    tx: Tx, provider: str, until: datetime, reason: str, fallbacks: Mapping[str, str], now: datetime
) -> None:
    """Pause ``provider`` until ``until`` and move its queued jobs to its fallback."""
    values = {"until": until, "reason": reason}
    updated = tx.conn.execute(
        sa.update(provider_pauses).where(provider_pauses.c.provider == provider).values(values)
    ).rowcount
    if not updated:
        tx.conn.execute(sa.insert(provider_pauses).values(provider=provider, **values))
    target, why = _fallback(tx.conn, provider, fallbacks, now)
    if why is None:
        return
    moved = tx.conn.execute(
        sa.update(jobs)
        .where(jobs.c.provider == provider, jobs.c.state == JobState.QUEUED.value)
        .values(provider=target, route_reason=why, updated_at=now)
        .returning(jobs.c.id, jobs.c.session_id, jobs.c.epoch)
    ).all()
    for job_id, session_id, epoch in moved:
        event_log.append(
            tx,
            session_id,
            [
                NewEvent(
                    type="job.routed",
                    payload={"job_id": job_id, "provider": target, "from": provider, "reason": why},
                )
            ],
            job_id=job_id,
            epoch=epoch,
            now=now,
            dedup=False,
        )
        tx.notify("dispatch", job_id)


def _owned(tx: Tx, claims: WorkerClaims) -> Row:
    row = _locked(tx, claims.job_id)
    if row.epoch != claims.epoch or row.runner_id != claims.runner_id:
        raise StaleEpoch(
            f"job {row.id} is at epoch {row.epoch}, this worker holds epoch {claims.epoch}"
        )
    if JobState(row.state) not in ACTIVE:
        raise JobNotActive(f"job {row.id} is {row.state}; stop working on it")
    return row


class Jobs:
    def __init__(
        self, db: Database, policy: RetryPolicy | None = None, caps: Caps | None = None
    ) -> None:
        self.db = db
        self.policy = policy or RetryPolicy()
        self.caps = caps or Caps()

    async def create(self, spec: JobCreate, route: Decision | None = None) -> tuple[Job, bool]:
        """Insert a job (a new session unless ``spec.session_id``), on the
        provider ``route`` chose (without one: as if routing did not exist).
        Returns ``(job, created)``; an existing idempotency key returns that job."""
        if spec.idempotency_key is not None:
            existing = await self.by_idempotency_key(spec.idempotency_key)
            if existing is not None:
                return existing, False
        now = now_utc()
        max_attempts = spec.max_attempts or self.policy.default_max_attempts
        provider = route.provider if route else spec.preferred_ai or "shell"
        model = route.model if route else spec.model
        fallbacks = self.policy.fallbacks
        repo, base = spec.repo, spec.base
        hook = spec.webhook if not isinstance(spec.webhook, str) else None

        def body(tx: Tx) -> Job:
            nonlocal repo, base
            target, why = _fallback(tx.conn, provider, fallbacks, now)
            if spec.session_id is not None:
                turn = tx.conn.execute(
                    sa.update(sessions)
                    .where(sessions.c.id == spec.session_id)
                    .values(turns=sessions.c.turns + 1, updated_at=now)
                    .returning(sessions.c.turns)
                ).scalar_one_or_none()
                if turn is None:
                    raise SessionNotFound(f"no session {spec.session_id}")
                session_id = spec.session_id
                if repo is None:
                    # A follow-up turn works in the session's workspace.
                    first = tx.conn.execute(
                        sa.select(jobs.c.repo, jobs.c.base)
                        .where(jobs.c.session_id == session_id)
                        .order_by(jobs.c.turn)
                        .limit(1)
                    ).one_or_none()
                    if first is not None:
                        repo, base = first
            else:
                session_id = session_store.insert(tx, title=spec.title, now=now, turns=1)
                turn = 1
            job_id = new_id()
            row = tx.conn.execute(
                sa.insert(jobs)
                .values(
                    id=job_id,
                    session_id=session_id,
                    turn=turn,
                    state=JobState.QUEUED,
                    provider=target,
                    model=model if why is None else None,
                    preferred_ai=spec.preferred_ai,
                    needs_local_agent=spec.needs_local_agent,
                    allow_delegation=spec.allow_delegation,
                    complexity_hint=spec.complexity_hint,
                    route_rule=route.rule if route else None,
                    route_reason=why or (route.reason if route else None),
                    title=spec.title,
                    prompt=spec.prompt,
                    command=spec.command,
                    repo=repo,
                    base=base,
                    webhook_url=hook.url if hook else None,
                    webhook_secret=hook.secret if hook else None,
                    webhook_events=hook.events if hook and hook.events else None,
                    webhook_states=[str(x) for x in hook.states] if hook and hook.states else None,
                    messages=spec.messages,
                    tools=spec.tools,
                    options=spec.options,
                    think=spec.think,
                    priority=spec.priority,
                    attempt=1,
                    max_attempts=max_attempts,
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
            ).one()
            routed = (
                [
                    NewEvent(
                        type="job.routed",
                        payload={
                            "job_id": job_id,
                            "provider": route.provider,
                            "model": route.model,
                            "rule": route.rule,
                            "reason": route.reason,
                            "skipped": list(route.skipped),
                        },
                    )
                ]
                if route
                else []
            )
            if why is not None:
                routed.append(
                    NewEvent(
                        type="job.routed",
                        payload={
                            "job_id": job_id,
                            "provider": target,
                            "from": provider,
                            "reason": why,
                        },
                    )
                )
            event_log.append(
                tx,
                session_id,
                [
                    *routed,
                    NewEvent(
                        type="job.state",
                        payload={
                            "job_id": job_id,
                            "from": None,
                            "to": "queued",
                            "attempt": 1,
                        },
                    ),
                ],
                job_id=job_id,
                epoch=0,
                now=now,
                dedup=False,
            )
            outbox.on_state(tx, row, tx.webhooks, now)
            tx.notify("dispatch", job_id)
            return _job(row)

        try:
            return await self.db.write(body), True
        except sa.exc.IntegrityError:
            if spec.idempotency_key is None:
                raise
            # A concurrent submit with the same key won the race.
            existing = await self.by_idempotency_key(spec.idempotency_key)
            if existing is None:
                raise
            return existing, False

    async def by_idempotency_key(self, key: str) -> Job | None:
        row = await self.db.read(
            lambda conn: conn.execute(
                sa.select(jobs).where(jobs.c.idempotency_key == key)
            ).one_or_none()
        )
        return None if row is None else _job(row)

    async def resolve(self, ref: str) -> str:
        """The job id ``ref`` names: a whole id, or a unique prefix of 4+ hex digits."""
        return await ids.resolve(self.db, jobs, ref, "job", JobNotFound)

    async def get(self, job_id: str) -> Job:
        row = await self.db.read(
            lambda conn: conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).one_or_none()
        )
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
        return await self.db.read(lambda conn: [_job(r) for r in conn.execute(stmt)])

    async def cancel(self, job_id: str, *, by: str = "operator") -> Job:
        now = now_utc()

        def body(tx: Tx) -> Job:
            row = _locked(tx, job_id)
            job = apply(
                tx,
                row,
                Action.CANCEL,
                now=now,
                values={"error": f"cancelled by {by}", "reason": "cancelled"},
            )
            if row.runner_id is not None and JobState(row.state) in ACTIVE:
                tx.notify(f"runner:{row.runner_id}", f"cancel:{job_id}")
            return job

        return await self.db.write(body)

    async def retry(self, job_id: str) -> Job:
        now = now_utc()

        def body(tx: Tx) -> Job:
            row = _locked(tx, job_id)
            return apply(
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
                    "failure": None,
                    "infra_retries": 0,
                    "exit_code": None,
                    "finished_at": None,
                    "usage": None,
                    "cost": None,
                    "message": None,
                },
                note={"manual": True},
            )

        return await self.db.write(body)

    async def lease(self, runner: Runner, max_jobs: int, ttl: float) -> builtins.list[Lease]:
        """Assign up to ``max_jobs`` queued jobs to ``runner``: lowest priority
        value first, then oldest; one active turn per session, turns in order."""
        now = now_utc()
        skip_locked = not self.db.is_sqlite
        caps = self.caps

        def body(tx: Tx) -> builtins.list[Lease]:
            conn = tx.conn
            if caps.any and skip_locked:
                # Caps count jobs across runners: lease one runner at a time.
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_LEASE_LOCK)))
            held = conn.execute(
                sa.select(sa.func.count())
                .select_from(jobs)
                .where(jobs.c.runner_id == runner.id, jobs.c.state.in_(_ACTIVE))
            ).scalar_one()
            seen = conn.execute(
                sa.update(runners)
                .where(runners.c.id == runner.id, runners.c.status == "active")
                .values(last_seen_at=now)
            ).rowcount
            if not seen:
                return []  # stopped or replaced since the request began: nothing for it
            room = min(max_jobs, runner.slots - held)
            if room <= 0 or conn.execute(_PAUSED).scalar_one_or_none() == "true":
                return []
            active: dict[str, int] = {}
            by_repo: dict[str, int] = {}
            if caps.any:
                active = {str(p): int(n) for p, n in conn.execute(_ACTIVE_BY_PROVIDER)}
                if caps.total is not None:
                    room = min(room, caps.total - sum(active.values()))
                if caps.repo is not None:
                    by_repo = {str(r): int(n) for r, n in conn.execute(_ACTIVE_BY_REPO)}
            paused = paused_providers(conn, now)
            holders: builtins.list[str] = []  # provider SEP runner, of the other live runners
            if caps.local:
                alive_after = now - timedelta(seconds=ttl)
                for name, served in conn.execute(
                    sa.select(runners.c.name, runners.c.providers).where(
                        runners.c.status == "active",
                        runners.c.last_seen_at >= alive_after,
                        runners.c.name != runner.name,
                    )
                ):
                    holders += [f"{p}{SEP}{name}" for p in served if p in caps.local]
            eligible = [
                p
                for p in runner.providers
                if p not in paused
                and (p not in caps.providers or active.get(p, 0) < caps.providers[p])
            ]
            if room <= 0 or not eligible:
                return []
            stmt = _CANDIDATES_LOCKED if skip_locked else _CANDIDATES
            leased: builtins.list[Lease] = []
            while len(leased) < room and eligible:
                full = [r for r, n in by_repo.items() if caps.repo is not None and n >= caps.repo]
                params = {
                    "now": now,
                    "providers": eligible,
                    "room": room - len(leased),
                    "full": full,
                    "local": sorted(caps.local),
                    "holders": holders,
                }
                rows = conn.execute(stmt, params).all()
                filled = False
                for job_id, session_id, provider, repo, host in rows:
                    cap = caps.providers.get(provider)
                    if cap is not None and active.get(provider, 0) >= cap:
                        # Filled during this lease: look again without it.
                        if provider in eligible:
                            eligible.remove(provider)
                        filled = True
                        continue
                    if (
                        repo is not None
                        and caps.repo is not None
                        and by_repo.get(repo, 0) >= caps.repo
                    ):
                        filled = True  # filled during this lease: look again without it
                        continue
                    local = provider in caps.local
                    lease = _assign(
                        tx, job_id, session_id, runner, now, ttl, local=local, host=host
                    )
                    if lease is not None:
                        leased.append(lease)
                        active[provider] = active.get(provider, 0) + 1
                        if repo is not None:
                            by_repo[repo] = by_repo.get(repo, 0) + 1
                if not filled:
                    break
            return leased

        return await self.db.write(body)

    async def start(self, claims: WorkerClaims, *, started_at: datetime | None = None) -> Job:
        now = now_utc()

        def body(tx: Tx) -> Job:
            row = _owned(tx, claims)
            if row.state == JobState.RUNNING:
                return _job(row)
            return apply(tx, row, Action.START, now=now, values={"started_at": started_at or now})

        return await self.db.write(body)

    async def heartbeat(self, claims: WorkerClaims, ttl: float) -> Job:
        now = now_utc()

        def body(tx: Tx) -> Job:
            _owned(tx, claims)
            return _job(
                tx.conn.execute(
                    sa.update(jobs)
                    .where(jobs.c.id == claims.job_id)
                    .values(lease_expires_at=now + timedelta(seconds=ttl))
                    .returning(*jobs.c)
                ).one()
            )

        return await self.db.write(body)

    async def append_events(
        self, claims: WorkerClaims, items: Sequence[NewEvent]
    ) -> tuple[builtins.list[Event], builtins.list[str]]:
        now = now_utc()

        def body(tx: Tx) -> tuple[builtins.list[Event], builtins.list[str]]:
            row = _owned(tx, claims)
            stored, duplicates = event_log.append(
                tx, claims.session_id, items, job_id=claims.job_id, epoch=claims.epoch, now=now
            )
            outbox.on_events(tx, row, tx.webhooks, stored, now)
            return stored, duplicates

        return await self.db.write(body)

    async def set_handle(self, claims: WorkerClaims, handle: str | None) -> None:
        def body(tx: Tx) -> None:
            _owned(tx, claims)
            session_store.set_handle(tx, claims.session_id, handle)

        await self.db.write(body)

    async def complete(
        self, claims: WorkerClaims, outcome: Outcome, items: Sequence[NewEvent] = ()
    ) -> tuple[Job, builtins.list[str]]:
        now = now_utc()
        policy = self.policy

        def body(tx: Tx) -> tuple[Job, builtins.list[str]]:
            row = _owned(tx, claims)
            duplicates: builtins.list[str] = []
            if items:
                stored, duplicates = event_log.append(
                    tx,
                    claims.session_id,
                    items,
                    job_id=claims.job_id,
                    epoch=claims.epoch,
                    now=now,
                )
                outbox.on_events(tx, row, tx.webhooks, stored, now)
            values: dict[str, Any] = {
                "result": outcome.result,
                "exit_code": outcome.exit_code,
                "usage": outcome.usage,
                "cost": outcome.cost,
                "message": outcome.message,
            }
            if outcome.status == "done":
                values.update(error=None, reason=None, failure=None)
                return apply(tx, row, Action.SUCCEED, now=now, values=values), duplicates
            failure = outcome.failure or "agent"
            values.update(
                error=outcome.error or "failed", reason=outcome.reason or "error", failure=failure
            )
            if failure == "input":
                return apply(tx, row, Action.REJECT, now=now, values=values), duplicates
            if failure == "infra":
                job = _infra(tx, row, now=now, values=values, budget=policy.max_infra_retries)
                return job, duplicates
            if failure == "quota":
                until = outcome.retry_at or now + timedelta(seconds=policy.quota_backoff)
                until = max(until, now + timedelta(seconds=1))
                _pause_provider(tx, row.provider, until, values["error"], policy.fallbacks, now)
                values.update(available_at=now, attempt=row.attempt)
                job = apply(
                    tx,
                    row,
                    Action.LOSE,
                    now=now,
                    values=values,
                    note={"paused_until": until.isoformat()},
                )
                target, why = _fallback(tx.conn, job.provider, policy.fallbacks, now)
                if why is not None:
                    moved = tx.conn.execute(
                        sa.update(jobs)
                        .where(jobs.c.id == job.id, jobs.c.state == JobState.QUEUED.value)
                        .values(provider=target, route_reason=why)
                        .returning(*jobs.c)
                    ).one()
                    job = _job(moved)
                return job, duplicates
            if row.attempt < row.max_attempts:
                delay = backoff(row.attempt, base=policy.backoff_base, cap=policy.backoff_max)
                values["available_at"] = now + timedelta(seconds=delay)
            return apply(tx, row, Action.FAIL, now=now, values=values), duplicates

        return await self.db.write(body)

    async def unlease(self, job_ids: Sequence[str], runner: Runner) -> builtins.list[Job]:
        """Leases ``runner`` never received (it went away while its lease
        request was answered): queued again at once, the same attempt, with
        nothing spent; the epoch moves on, so the runner's writes are refused
        if it got them after all. A first turn lets go of its session too."""
        now = now_utc()

        def body(tx: Tx) -> builtins.list[Job]:
            back = []
            for job_id in job_ids:
                row = _locked(tx, job_id)
                if row.state != JobState.ASSIGNED.value or row.runner_id != runner.id:
                    continue
                bumped = _fence(tx, row)
                if row.turn == 1:
                    tx.conn.execute(
                        sa.update(sessions)
                        .where(sessions.c.id == row.session_id, sessions.c.host == runner.name)
                        .values(host=None)
                    )
                error = f"runner {runner.name!r} went away before it received the job"
                values = {"available_at": now, "attempt": row.attempt, "error": error}
                values["reason"] = "lease_undelivered"
                back.append(apply(tx, bumped, Action.LOSE, now=now, values=values))
            return back

        return await self.db.write(body)

    async def expire(self) -> builtins.list[Job]:
        """Watchdog: jobs whose lease ran out lose their runner."""
        now = now_utc()
        skip_locked = not self.db.is_sqlite

        def body(tx: Tx) -> builtins.list[Job]:
            stmt = (
                sa.select(jobs)
                .where(jobs.c.state.in_(_ACTIVE), jobs.c.lease_expires_at < now)
                .limit(500)
            )
            if skip_locked:
                stmt = stmt.with_for_update(skip_locked=True)
            return [
                lose(
                    tx,
                    row,
                    reason="runner_lost",
                    now=now,
                    error=f"runner {row.runner_id} stopped heartbeating (lease expired)",
                    max_infra_retries=self.policy.max_infra_retries,
                )
                for row in tx.conn.execute(stmt).all()
            ]

        return await self.db.write(body)

    async def waiting(self, job: Job) -> str | None:
        """Why a queued job is not running yet (None unless it is queued)."""
        if job.state is not JobState.QUEUED:
            return None
        caps = self.caps
        now = now_utc()

        def body(conn: sa.Connection) -> str:
            if conn.execute(_PAUSED).scalar_one_or_none() == "true":
                return "paused: the kill switch is on (corral resume)"
            if job.available_at > now:
                return f"retry backoff until {job.available_at.isoformat(timespec='seconds')}"
            pause = conn.execute(
                sa.select(provider_pauses.c.until).where(
                    provider_pauses.c.provider == job.provider, provider_pauses.c.until > now
                )
            ).scalar_one_or_none()
            if pause is not None:
                return (
                    f"provider {job.provider!r} is paused by a quota limit until "
                    f"{pause.isoformat(timespec='seconds')}"
                )
            before = conn.execute(
                sa.select(jobs.c.turn, jobs.c.state)
                .where(
                    jobs.c.session_id == job.session_id,
                    jobs.c.id != job.id,
                    sa.or_(
                        jobs.c.state.in_(_ACTIVE),
                        sa.and_(jobs.c.state == JobState.QUEUED.value, jobs.c.turn < job.turn),
                    ),
                )
                .order_by(jobs.c.turn)
                .limit(1)
            ).one_or_none()
            if before is not None:
                return f"turn lock: turn {before.turn} of its session is {before.state}"
            active = {str(p): int(n) for p, n in conn.execute(_ACTIVE_BY_PROVIDER)}
            cap = caps.providers.get(job.provider)
            if cap is not None and active.get(job.provider, 0) >= cap:
                return f"provider cap: {active[job.provider]}/{cap} {job.provider} jobs active"
            if job.repo is not None and caps.repo is not None:
                n = conn.execute(
                    sa.select(sa.func.count()).where(
                        jobs.c.repo == job.repo, jobs.c.state.in_(_ACTIVE)
                    )
                ).scalar_one()
                if n >= caps.repo:
                    return f"repo cap: {n}/{caps.repo} jobs active in {job.repo}"
            if caps.total is not None and sum(active.values()) >= caps.total:
                return f"global cap: {sum(active.values())}/{caps.total} jobs active"
            if job.provider in caps.local:
                host = next(
                    (
                        name
                        for name, served in conn.execute(
                            sa.select(runners.c.name, runners.c.providers)
                            .join(sessions, runners.c.name == sessions.c.host)
                            .where(sessions.c.id == job.session_id, runners.c.status == "active")
                        )
                        if job.provider in served
                    ),
                    None,
                )
                if host is not None:
                    return (
                        f"session affinity: waiting for runner {host!r}, which holds the "
                        "session's workspace and conversation"
                    )
            serving = [
                r
                for r in conn.execute(
                    sa.select(runners.c.providers).where(runners.c.status == "active")
                ).scalars()
                if job.provider in r
            ]
            if not serving:
                return f"no active runner serves provider {job.provider!r}"
            return "waiting for a free runner slot"

        return await self.db.read(body)

    async def counts(self) -> dict[str, int]:
        stmt = sa.select(jobs.c.state, sa.func.count()).group_by(jobs.c.state)
        return await self.db.read(
            lambda conn: {str(state): int(n) for state, n in conn.execute(stmt)}
        )

    async def pauses(self) -> builtins.list[ProviderPause]:
        """Providers paused by a quota limit, now."""
        now = now_utc()
        fallbacks = self.policy.fallbacks

        def body(conn: sa.Connection) -> builtins.list[ProviderPause]:
            rows = conn.execute(
                sa.select(provider_pauses)
                .where(provider_pauses.c.until > now)
                .order_by(provider_pauses.c.provider)
            ).all()
            return [
                ProviderPause(
                    provider=r.provider,
                    until=r.until,
                    reason=r.reason,
                    fallback=fallbacks.get(r.provider),
                )
                for r in rows
            ]

        return await self.db.read(body)

    async def unpause(self, provider: str) -> bool:
        def body(tx: Tx) -> bool:
            gone = tx.conn.execute(
                sa.delete(provider_pauses).where(provider_pauses.c.provider == provider)
            ).rowcount
            tx.notify("dispatch", provider)
            return bool(gone)

        return await self.db.write(body)

    async def put_artifact(
        self, claims: WorkerClaims, name: str, media_type: str, data: bytes
    ) -> Artifact:
        """Store (or replace) an artifact of the job the worker holds."""
        now = now_utc()

        def body(tx: Tx) -> Artifact:
            _owned(tx, claims)
            key = (artifacts.c.job_id == claims.job_id) & (artifacts.c.name == name)
            tx.conn.execute(sa.delete(artifacts).where(key))
            tx.conn.execute(
                sa.insert(artifacts).values(
                    job_id=claims.job_id,
                    name=name,
                    media_type=media_type,
                    size=len(data),
                    data=data,
                    created_at=now,
                )
            )
            return Artifact(
                job_id=claims.job_id,
                name=name,
                media_type=media_type,
                size=len(data),
                created_at=now,
            )

        return await self.db.write(body)

    async def artifacts(self, job_id: str) -> builtins.list[Artifact]:
        await self.get(job_id)  # 404 for an unknown job
        stmt = (
            sa.select(
                artifacts.c.job_id,
                artifacts.c.name,
                artifacts.c.media_type,
                artifacts.c.size,
                artifacts.c.created_at,
            )
            .where(artifacts.c.job_id == job_id)
            .order_by(artifacts.c.name)
        )
        return await self.db.read(
            lambda conn: [Artifact.model_validate(r._mapping) for r in conn.execute(stmt)]
        )

    async def artifact(self, job_id: str, name: str) -> tuple[Artifact, bytes]:
        row = await self.db.read(
            lambda conn: conn.execute(
                sa.select(artifacts).where(artifacts.c.job_id == job_id, artifacts.c.name == name)
            ).one_or_none()
        )
        if row is None:
            await self.get(job_id)
            raise ArtifactNotFound(f"job {job_id} has no artifact {name!r}")
        meta = Artifact.model_validate(row._mapping)
        return meta, bytes(row.data)

    async def delegated(self, providers: Sequence[str], lease_ttl: float) -> dict[str, Any]:
        """Jobs on remote providers: the ones in flight and counters."""
        names = list(providers)
        if not names:
            return {"in_flight": [], "counters": dict.fromkeys(_DELEGATED_COUNTERS, 0)}

        def body(conn: sa.Connection) -> dict[str, Any]:
            on_remote = jobs.c.provider.in_(names)
            rows = conn.execute(
                sa.select(
                    jobs.c.id,
                    jobs.c.provider,
                    jobs.c.state,
                    jobs.c.started_at,
                    jobs.c.assigned_at,
                    jobs.c.lease_expires_at,
                    sessions.c.handle,
                )
                .join(sessions, sessions.c.id == jobs.c.session_id)
                .where(on_remote, jobs.c.state.in_(_ACTIVE))
                .order_by(jobs.c.assigned_at)
            ).all()
            by_state: dict[str, int] = {
                str(state): int(n)
                for state, n in conn.execute(
                    sa.select(jobs.c.state, sa.func.count()).where(on_remote).group_by(jobs.c.state)
                )
            }
            retried = conn.execute(
                sa.select(sa.func.count()).where(
                    on_remote, sa.or_(jobs.c.infra_retries > 0, jobs.c.attempt > 1)
                )
            ).scalar_one()
            # Only the events of delegated jobs (ix_events_job_id): the whole
            # log has no index on type, and this runs on every /metrics scrape.
            resumed = conn.execute(
                sa.select(sa.func.count())
                .select_from(events)
                .where(
                    events.c.job_id.in_(sa.select(jobs.c.id).where(on_remote)),
                    events.c.type == "remote.resumed",
                )
            ).scalar_one()
            in_flight = []
            for r in rows:
                remote_id = None
                raw = own_handle(r.handle, r.provider)
                if raw is not None and raw.startswith("{"):
                    with contextlib.suppress(ValueError):
                        data = json.loads(raw)
                        if data.get("job") == r.id:
                            remote_id = data.get("remote_job")
                last = (
                    r.lease_expires_at - timedelta(seconds=lease_ttl)
                    if r.lease_expires_at
                    else None
                )
                in_flight.append(
                    {
                        "job_id": r.id,
                        "provider": r.provider,
                        "state": r.state,
                        "remote_id": remote_id,
                        "since": r.started_at or r.assigned_at,
                        "last_poll": last,
                    }
                )
            counters = {
                "submitted": sum(by_state.values()),
                "done": int(by_state.get("done", 0)),
                "failed": int(by_state.get("failed", 0)),
                "cancelled": int(by_state.get("cancelled", 0)),
                "retried": int(retried),
                "resumed": int(resumed),
            }
            return {"in_flight": in_flight, "counters": counters}

        return await self.db.read(body)


_DELEGATED_COUNTERS = ("submitted", "done", "failed", "cancelled", "retried", "resumed")
