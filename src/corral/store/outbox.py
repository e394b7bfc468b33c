"""The webhook outbox. A delivery row is written in the same transaction as
the state change (or event) it reports, so a change is never announced
without happening nor happens without being announced; the sender
(``corral.sinks.webhook``) sends what is due, in order per job and URL."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from corral.errors import NotFound
from corral.models import Event, new_id
from corral.protocol import topics
from corral.store.db import Database, Tx
from corral.store.schema import webhook_attempts, webhook_deliveries
from corral.webhooks import Rules

Row = sa.Row[Any]


class DeliveryNotFound(NotFound):
    """No such webhook delivery."""

    code = "delivery_not_found"


def _targets_for_state(row: Row, rules: Rules, state: str) -> list[tuple[str, str | None]]:
    targets: list[tuple[str, str | None]] = []
    if row.webhook_url and (not row.webhook_states or state in row.webhook_states):
        targets.append((row.webhook_url, row.webhook_secret))
    for ep in rules.endpoints:
        if not ep.states or state in ep.states:
            targets.append((ep.url, ep.secret))
    return targets


def _insert(
    tx: Tx,
    job_id: str,
    url: str,
    secret: str | None,
    event: str,
    body: dict[str, Any],
    now: datetime,
    traceparent: str | None,
) -> None:
    delivery_id = new_id()
    tx.conn.execute(
        sa.insert(webhook_deliveries).values(
            id=delivery_id,
            job_id=job_id,
            url=url,
            secret=secret,
            event=event,
            body={"delivery_id": delivery_id, **body},
            state="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
            traceparent=traceparent,
        )
    )
    tx.notify(topics.WEBHOOKS, job_id)


def _traceparent(row: Row) -> str | None:
    return getattr(row, "traceparent", None)  # the job's, where the row has it


def on_state(tx: Tx, row: Row, rules: Rules, now: datetime) -> None:
    """Queue the deliveries announcing the job's new state (``row`` is the
    updated job row)."""
    targets = _targets_for_state(row, rules, row.state)
    if not targets:
        return
    body: dict[str, Any] = {
        "job_id": row.id,
        "session_id": row.session_id,
        "state": row.state,
        "attempt": row.attempt,
        "at": now.isoformat(),
    }
    if row.result is not None:
        body["result"] = row.result
    if row.error is not None:
        body["error"] = row.error
        body["reason"] = row.reason
    if row.state in ("done", "failed", "cancelled"):
        body["cost"] = row.cost
        body["cost_source"] = row.cost_source
    for url, secret in targets:
        _insert(tx, row.id, url, secret, "job.state", body, now, _traceparent(row))


def on_events(tx: Tx, row: Row, rules: Rules, events: Iterable[Event], now: datetime) -> None:
    """Queue deliveries of the stored events whose type a webhook asked for."""
    wanted_by_job = set(row.webhook_events or ()) if row.webhook_url else set()
    if not wanted_by_job and not rules.event_types:
        return
    for event in events:
        if event.seq is None:
            continue  # ephemeral: live only, never announced
        targets: list[tuple[str, str | None]] = []
        if event.type in wanted_by_job:
            targets.append((row.webhook_url, row.webhook_secret))
        targets += [(ep.url, ep.secret) for ep in rules.endpoints if event.type in ep.events]
        for url, secret in targets:
            body = {
                "job_id": row.id,
                "session_id": row.session_id,
                "state": row.state,
                "attempt": row.attempt,
                "at": now.isoformat(),
                "event": {"seq": event.seq, "type": event.type, "payload": event.payload},
            }
            _insert(tx, row.id, url, secret, event.type, body, now, _traceparent(row))


@dataclass(frozen=True)
class Due:
    seq: int
    id: str
    job_id: str
    url: str
    secret: str | None
    event: str
    body: dict[str, Any]
    attempts: int
    created_at: datetime
    traceparent: str | None = None  # the job's (corral.tracing)


def first_pending(table: sa.Table, *destination: sa.Column[Any]) -> sa.ColumnElement[bool]:
    """The row is the first pending one to its ``destination`` (deliveries and
    chat messages go out in order per destination): its ``seq`` is among the
    pending rows' lowest per destination, grouped once per query (work in
    proportion to what is pending). Not a check per row for an earlier
    pending one: as ``NOT EXISTS`` PostgreSQL made it an anti join comparing
    each pending row of one destination with all the others (1.7 s a query
    behind 5,000 deliveries pending to one job's URL), and as a subquery per
    row it walked the primary key past every delivered row (17 s behind
    20,000 more; issue #18)."""
    pending = table.alias("pending")
    heads = (
        sa.select(sa.func.min(pending.c.seq))
        .where(pending.c.state == "pending")
        .group_by(*(pending.c[column.name] for column in destination))
    )
    return table.c.seq.in_(heads)


_DUE = (
    sa.select(webhook_deliveries)
    .where(
        webhook_deliveries.c.state == "pending",
        webhook_deliveries.c.next_attempt_at <= sa.bindparam("now"),
        # In order per job and URL.
        first_pending(webhook_deliveries, webhook_deliveries.c.job_id, webhook_deliveries.c.url),
    )
    .order_by(webhook_deliveries.c.next_attempt_at, webhook_deliveries.c.seq)
    .limit(sa.bindparam("limit"))
)


def _public(row: Row, attempts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    data = {
        "id": row.id,
        "job_id": row.job_id,
        "url": row.url,
        "event": row.event,
        "state": row.state,
        "attempts": row.attempts,
        "next_attempt_at": row.next_attempt_at if row.state == "pending" else None,
        "last_status": row.last_status,
        "last_error": row.last_error,
        "created_at": row.created_at,
        "delivered_at": row.delivered_at,
        "body": row.body,
    }
    if attempts is not None:
        data["attempt_log"] = attempts
    return data


class Outbox:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def due(self, now: datetime, limit: int) -> list[Due]:
        rows = await self.db.read(
            lambda conn: conn.execute(_DUE, {"now": now, "limit": limit}).all()
        )
        return [
            Due(
                r.seq,
                r.id,
                r.job_id,
                r.url,
                r.secret,
                r.event,
                r.body,
                r.attempts,
                r.created_at,
                r.traceparent,
            )
            for r in rows
        ]

    async def pending(self) -> int:
        """Deliveries not sent yet (walks ix (state, next_attempt_at): the
        delivered and failed ones, which pile up, are not read)."""
        stmt = sa.select(sa.func.count()).where(webhook_deliveries.c.state == "pending")
        return await self.db.read(lambda conn: int(conn.execute(stmt).scalar_one()))

    async def counts(self) -> dict[str, int]:
        stmt = sa.select(webhook_deliveries.c.state, sa.func.count()).group_by(
            webhook_deliveries.c.state
        )
        return await self.db.read(lambda conn: {str(s): int(n) for s, n in conn.execute(stmt)})

    async def record(
        self,
        seq: int,
        *,
        at: datetime,
        status: int | None,
        latency_ms: float,
        error: str | None,
        outcome: str,  # delivered, failed, or retry
        retry_in: float = 0.0,
    ) -> None:
        """Log one attempt and move the delivery on."""

        def body(tx: Tx) -> None:
            n = tx.conn.execute(
                sa.update(webhook_deliveries)
                .where(webhook_deliveries.c.seq == seq)
                .values(
                    attempts=webhook_deliveries.c.attempts + 1,
                    last_status=status,
                    last_error=error,
                    updated_at=at,
                    state="pending" if outcome == "retry" else outcome,
                    next_attempt_at=at + timedelta(seconds=retry_in),
                    delivered_at=at if outcome == "delivered" else None,
                )
                .returning(webhook_deliveries.c.attempts)
            ).scalar_one()
            tx.conn.execute(
                sa.insert(webhook_attempts).values(
                    delivery_seq=seq,
                    n=n,
                    at=at,
                    status=status,
                    latency_ms=round(latency_ms, 3),
                    error=error,
                )
            )
            if outcome != "retry":
                tx.notify(topics.WEBHOOKS, str(seq))  # the next one of its job may be due now

        await self.db.write(body)

    async def redeliver(self, delivery_id: str, now: datetime) -> dict[str, Any]:
        """Send a delivery again (whatever its state), as soon as its turn comes."""

        def body(tx: Tx) -> dict[str, Any]:
            row = tx.conn.execute(
                sa.update(webhook_deliveries)
                .where(webhook_deliveries.c.id == delivery_id)
                .values(state="pending", next_attempt_at=now, updated_at=now, delivered_at=None)
                .returning(*webhook_deliveries.c)
            ).one_or_none()
            if row is None:
                raise DeliveryNotFound(f"no webhook delivery {delivery_id}")
            tx.notify(topics.WEBHOOKS, row.job_id)
            return _public(row)

        return await self.db.write(body)

    # Last: from here on in the class body, ``list`` names this method, not the builtin.
    async def list(
        self,
        *,
        job_id: str | None = None,
        state: str | None = None,
        limit: int = 100,
        attempts: bool = False,
    ) -> list[dict[str, Any]]:
        stmt = sa.select(webhook_deliveries).order_by(webhook_deliveries.c.seq.desc()).limit(limit)
        if job_id is not None:
            stmt = stmt.where(webhook_deliveries.c.job_id == job_id)
        if state is not None:
            stmt = stmt.where(webhook_deliveries.c.state == state)

        def body(conn: sa.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(stmt).all()
            logs: dict[int, list[dict[str, Any]]] = {}
            if attempts and rows:
                for a in conn.execute(
                    sa.select(webhook_attempts)
                    .where(webhook_attempts.c.delivery_seq.in_([r.seq for r in rows]))
                    .order_by(webhook_attempts.c.delivery_seq, webhook_attempts.c.n)
                ):
                    logs.setdefault(a.delivery_seq, []).append(
                        {
                            "n": a.n,
                            "at": a.at,
                            "status": a.status,
                            "latency_ms": a.latency_ms,
                            "error": a.error,
                        }
                    )
            return [_public(r, logs.get(r.seq, []) if attempts else None) for r in rows]

        return await self.db.read(body)
