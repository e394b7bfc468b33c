"""Budgets in the database: what a scope spent in its period, what a job's
cost crossing 80 % and 100 % of a limit does (``budget.warning`` and
``budget.exceeded`` events on that job's session, so webhooks asking for
them hear it; a hard budget pauses its scope until the period ends), and
the pauses the dispatch rules read.

A provider's budget pause is a provider pause (``quota.py``) with a budget's
reason: its queued jobs move to its fallback, as for a quota. A global or a
label budget's pause is the ``budgets`` row's ``paused_until``. A pause ends
by itself when its period does."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from corral.budgets import Budget, usd
from corral.models import NewEvent
from corral.store import events as event_log
from corral.store import outbox
from corral.store.db import Tx
from corral.store.jobs import quota, usage
from corral.store.jobs.state import Row
from corral.store.schema import budgets as budget_table
from corral.store.schema import jobs, provider_pauses


def has_label(labels: sa.BindParameter[Any]) -> sa.ColumnElement[bool]:
    """The job's labels hold one of ``labels`` (an expanding bind parameter)."""
    each = usage.label_values(jobs.c.labels).table_valued("value").alias("lv")
    return sa.exists(sa.select(sa.literal(1)).select_from(each).where(each.c.value.in_(labels)))


def spent(conn: sa.Connection, budget: Budget, start: datetime, end: datetime) -> float:
    """USD spent by the jobs ``budget`` covers that ended in ``[start, end)``:
    ``GET /usage``'s sum (whole hours from its rollup, the edges from the
    jobs), not a sum over every job of the period, which each priced
    completion paid inside the write (a month of jobs, issue #18). A label
    budget covers the jobs carrying that label."""
    rows = usage.usage(
        conn,
        start=start,
        end=end,
        group_by=(),
        provider=budget.target if budget.kind == "provider" else None,
        model=None,
        label=budget.target if budget.kind == "label" else None,
        source=None,
        dialect=conn.dialect.name,
    )
    return float(rows[0]["cost"]) if rows else 0.0


def spend(
    tx: Tx,
    row: Row,
    budgets: Sequence[Budget],
    *,
    fallbacks: Mapping[str, str],
    now: datetime,
) -> None:
    """The job in ``row`` just ended with a cost: announce the levels its
    budgets crossed, and pause the scope of a hard one it used up."""
    for budget in budgets:
        if not budget.covers(row.provider, row.labels or ()):
            continue
        start, end = budget.window(now)
        total = spent(tx.conn, budget, start, end)
        state = tx.conn.execute(
            sa.select(budget_table).where(budget_table.c.name == budget.name).with_for_update()
        ).one_or_none()
        before = state.level if state is not None and state.period_start == start else 0
        level = budget.level(total)
        values = {"period_start": start, "level": max(level, before), "spent": total}
        paused = budget.hard(total)
        if paused:
            values["paused_until"] = end
        elif state is None or state.period_start != start:
            values["paused_until"] = None
        if state is None:
            tx.conn.execute(
                sa.insert(budget_table).values(name=budget.name, updated_at=now, **values)
            )
        else:
            tx.conn.execute(
                sa.update(budget_table)
                .where(budget_table.c.name == budget.name)
                .values(updated_at=now, **values)
            )
        if level <= before:
            continue
        payload = {
            "budget": budget.name,
            "scope": budget.scope,
            "limit": budget.limit,
            "spent": round(total, 6),
            "percent": level,
            "period": budget.period,
            "period_start": start.isoformat(),
            "period_end": end.isoformat(),
            "action": budget.action,
            "job_id": row.id,
        }
        if paused:
            payload["paused_until"] = end.isoformat()
            if budget.kind == "provider":
                quota.pause(tx, budget.target, end, reason(budget, total))
                quota.reroute(tx, budget.target, fallbacks, now)
        kind = "budget.exceeded" if level >= 100 else "budget.warning"
        stored, _ = event_log.append(
            tx,
            row.session_id,
            [NewEvent(type=kind, payload=payload)],
            job_id=row.id,
            epoch=row.epoch,
            now=now,
            dedup=False,
        )
        outbox.on_events(tx, row, tx.webhooks, stored, now)


def reason(budget: Budget, total: float) -> str:
    """What a pause by ``budget`` says (the waiting reason, ``corral budgets ls``)."""
    return (
        f"budget {budget.name!r} ({budget.scope}): {usd(total)} of {usd(budget.limit)} "
        f"spent this {budget.period}"
    )


def holds(conn: sa.Connection, budgets: Sequence[Budget], now: datetime) -> dict[str, datetime]:
    """Budgets pausing their scope now (by name), and until when."""
    if not budgets:
        return {}
    names = [b.name for b in budgets if b.action == "pause"]
    rows = conn.execute(
        sa.select(budget_table.c.name, budget_table.c.paused_until).where(
            budget_table.c.name.in_(names), budget_table.c.paused_until > now
        )
    ).all()
    return {str(name): until for name, until in rows}


def status(conn: sa.Connection, budgets: Sequence[Budget], now: datetime) -> list[dict[str, Any]]:
    """Each budget's spend against its limit in its current period."""
    held = holds(conn, budgets, now)
    provider_held = {
        p: until
        for p, until in conn.execute(
            sa.select(provider_pauses.c.provider, provider_pauses.c.until).where(
                provider_pauses.c.until > now
            )
        )
    }
    out = []
    for budget in budgets:
        start, end = budget.window(now)
        total = spent(conn, budget, start, end)
        until = held.get(budget.name)
        if until is not None and budget.kind == "provider" and budget.target not in provider_held:
            until = None  # unpaused by an operator
        out.append(
            {
                "name": budget.name,
                "scope": budget.scope,
                "limit": budget.limit,
                "spent": round(total, 6),
                "percent": round(100 * total / budget.limit, 1) if budget.limit else None,
                "period": budget.period,
                "timezone": budget.timezone,
                "period_start": start,
                "period_end": end,
                "action": budget.action,
                "paused_until": until,
            }
        )
    return out
