"""Turns held behind an earlier turn of their session: the ``behind`` flag.

The turn lock (``rules.py``) holds a queued turn while an earlier turn of its
session is live (active, or queued before it). A lease walks the queued jobs
in its index's order, so without more it visited every turn so held, and
checked the lock for each: behind thousands of queued turns of one session,
every lease of the fleet did the work of a square (2.6 s on PostgreSQL behind
5,000; issue #18). The flag puts the wait in the lease's index: a lease
walks the unflagged queued jobs only.

The rule that keeps it exact in one direction: **a flagged queued turn
always has an earlier live turn of its session**, so the turn lock holds it
anyway, and skipping it changes nothing the lease takes. A turn is flagged
only when it is created behind a live one (``created_behind``); when a live
turn ends, the first live turn after it is unflagged (``free_next``): if the
ended turn was the last live one before a flagged turn, that turn is the
next live one after it. A turn queued again (a retry) starts unflagged. An
unflagged turn with an earlier live one is only walked past, as before the
flag: the turn lock's own condition stays in the lease.

Concurrency (PostgreSQL): a create flags its turn after its update of the
session row, and an end frees the next turn after its own (the ``job.state``
event's seq), so the two are ordered by that row's lock and the later one
sees the other. Freeing locks the next turn's row while the session's is
held, and a cancel of that turn holds its row and waits for the session's:
the free skips a locked row rather than wait (``SKIP LOCKED``), and
``free_heads``, run by the watchdog, frees a first live turn left flagged
that way (the end and its freeing are one transaction: nothing else leaves
one so, short of a hand-edited row). On SQLite the writer runs one
transaction at a time and nothing is ever skipped.
"""

from __future__ import annotations

import sqlalchemy as sa

from corral.jobs import LIVE, JobState
from corral.store.db import Tx
from corral.store.prepared import Prepared
from corral.store.schema import jobs

LIVE_STATES = sorted(s.value for s in LIVE)

# The turn before a new one, to see if it is still queued (an active one
# holds the session's ``active_job_id``, which the create reads as it takes
# its turn). The state is checked here, not in the query: with it there,
# statistics taken when nothing was queued made PostgreSQL walk every queued
# job by the lease's index instead of the session's turn.
_TURN_STATE = Prepared(
    sa.select(jobs.c.state).where(
        jobs.c.session_id == sa.bindparam("s_id"),
        jobs.c.turn == sa.bindparam("s_turn"),
    )
)
# The first live turn after a given one (walks the session's turns upwards
# from it: the next ones are live unless some ended out of order).
_NEXT_LIVE = Prepared(
    sa.select(jobs.c.id, jobs.c.behind)
    .where(
        jobs.c.session_id == sa.bindparam("s_id"),
        jobs.c.turn > sa.bindparam("s_turn"),
        jobs.c.state.in_(LIVE_STATES),
    )
    .order_by(jobs.c.turn)
    .limit(1)
)
# Unflag one turn, unless another transaction holds its row (PostgreSQL).
_FREE = Prepared(
    sa.update(jobs)
    .where(
        jobs.c.id
        == sa.select(jobs.c.id)
        .where(jobs.c.id == sa.bindparam("f_id"), jobs.c.behind == sa.true())
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    .values(behind=False)
)


def created_behind(tx: Tx, session_id: str, turn: int, active_job_id: str | None) -> bool:
    """Whether a new ``turn`` of the session is created behind a live turn:
    the session's turn lock is held, or the turn before is queued. Call it
    after the update of the session row that numbered the turn. (An earlier
    turn queued again by a retry is missed: the new turn is then unflagged,
    which is always correct.)"""
    if active_job_id is not None:
        return True
    params = {"s_id": session_id, "s_turn": turn - 1}
    return any(row.state == JobState.QUEUED for row in _TURN_STATE(tx.conn, params))


def free_next(tx: Tx, session_id: str, turn: int) -> None:
    """A live ``turn`` of the session ended: unflag the first live turn after
    it. Call it after this transaction's update of the session row."""
    row = _NEXT_LIVE(tx.conn, {"s_id": session_id, "s_turn": turn}).first()
    if row is not None and row.behind:
        _FREE(tx.conn, {"f_id": row.id})


# The sessions with a flagged queued turn, and the first live turn of each.
_FLAGGED_SESSIONS = (
    sa.select(jobs.c.session_id)
    .where(jobs.c.state == JobState.QUEUED.value, jobs.c.behind == sa.true())
    .distinct()
    .subquery()
)
_first = jobs.alias("first")
_HEADS = sa.select(
    sa.select(_first.c.id)
    .where(_first.c.session_id == _FLAGGED_SESSIONS.c.session_id, _first.c.state.in_(LIVE_STATES))
    .order_by(_first.c.turn)
    .limit(1)
    .correlate(_FLAGGED_SESSIONS)
    .scalar_subquery()
).select_from(_FLAGGED_SESSIONS)
_FREE_HEADS = (
    sa.update(jobs)
    .where(jobs.c.id.in_(_HEADS), jobs.c.behind == sa.true())
    .values(behind=False)
    .returning(jobs.c.id, jobs.c.session_id, jobs.c.turn)
)


def free_heads(tx: Tx) -> list[sa.Row[tuple[str, str, int]]]:
    """Unflag every session's first live turn that is flagged: one that a
    ``free_next`` had to skip. Reads the flagged turns and, for each of
    their sessions, its turns up to the first live one. Returns (id,
    session_id, turn) of each turn it freed."""
    return list(tx.conn.execute(_FREE_HEADS).all())
