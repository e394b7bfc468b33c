"""The delegation report: jobs on remote providers, in flight and counted."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from corral.protocol.handles import RemoteHandle, own_handle
from corral.store.jobs import reads
from corral.store.jobs.state import ACTIVE_STATES
from corral.store.schema import events, jobs, sessions

COUNTERS = ("submitted", "done", "failed", "cancelled", "retried", "resumed")


def nothing() -> dict[str, Any]:
    """The report when no provider is remote."""
    return {"in_flight": [], "counters": dict.fromkeys(COUNTERS, 0)}


def delegated(conn: sa.Connection, providers: Sequence[str], lease_ttl: float) -> dict[str, Any]:
    """Jobs on the remote ``providers``: the ones in flight and counters."""
    on_remote = jobs.c.provider.in_(list(providers))
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
        .where(on_remote, jobs.c.state.in_(ACTIVE_STATES))
        .order_by(jobs.c.assigned_at)
    ).all()
    by_state: dict[str, int] = {}
    for (state, provider), n in reads.counts_by_provider(conn).items():
        if provider in providers:
            by_state[state] = by_state.get(state, 0) + n
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
    counters = {
        "submitted": sum(by_state.values()),
        "done": int(by_state.get("done", 0)),
        "failed": int(by_state.get("failed", 0)),
        "cancelled": int(by_state.get("cancelled", 0)),
        "retried": int(retried),
        "resumed": int(resumed),
    }
    return {"in_flight": [_in_flight(r._mapping, lease_ttl) for r in rows], "counters": counters}


def _in_flight(r: sa.RowMapping, lease_ttl: float) -> dict[str, Any]:
    handle = RemoteHandle.decode(own_handle(r["handle"], r["provider"]))
    remote_id = handle.remote_job if handle.job == r["id"] else None
    expires = r["lease_expires_at"]
    return {
        "job_id": r["id"],
        "provider": r["provider"],
        "state": r["state"],
        "remote_id": remote_id,
        "since": r["started_at"] or r["assigned_at"],
        "last_poll": expires - timedelta(seconds=lease_ttl) if expires else None,
    }
