"""Queued jobs whose time has not come: the ``later`` flag.

A queued job is not leased before its ``available_at`` (a ``run_at``, or a
retry's backoff). A lease walks the queued jobs in its index's order and
checked that time for each, so behind thousands of jobs scheduled for later
every lease of the fleet walked them all (+2 ms a lease per 5,000 on either
database, and growing with them; issue #18). The flag puts the wait in the
lease's index: a lease walks the unflagged queued jobs only.

Exact in one direction, as ``behind`` (``turns.py``): a job is flagged only
while its time is ahead (``queued_later``: at its create, and wherever a
state change sets ``available_at``: a retry's backoff, a retry of an ended
scheduled job), and the lease keeps its own ``available_at`` condition, so
the flag can only spare work, or hold a due job until it is cleared.
``promote`` clears the jobs whose time has come, found by their own partial
index (nothing else is read), before a lease, at most every
``PROMOTE_EVERY`` by a store's clock (``Jobs.lease``), in a transaction of
its own (the lease's then holds no flagged row while it waits for a
session's): a due job is leased at most that much later than without the
flag (idle runners lease again every second anyway). A flag left on a job
that is not queued is harmless (only queued jobs are leased), and
``promote`` clears it at its time.

PostgreSQL: ``promote`` skips the rows another transaction holds (``SKIP
LOCKED``: a cancel, a lease) rather than wait for them; the next pass takes
them. On SQLite the writer runs one transaction at a time.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

from corral.store.db import Tx
from corral.store.prepared import Prepared
from corral.store.schema import jobs

PROMOTE_EVERY = timedelta(seconds=0.25)


def queued_later(available_at: datetime, now: datetime) -> bool:
    """Whether a job queued now with ``available_at`` is flagged."""
    return available_at > now


_DUE = sa.and_(jobs.c.later, jobs.c.available_at <= sa.bindparam("now"))
_PROMOTE = Prepared(sa.update(jobs).where(_DUE).values(later=False))
_PROMOTE_SKIP_LOCKED = Prepared(
    sa.update(jobs)
    .where(jobs.c.id.in_(sa.select(jobs.c.id).where(_DUE).with_for_update(skip_locked=True)))
    .values(later=False)
)


def promote(tx: Tx, *, skip_locked: bool, now: datetime) -> int:
    """Clear the flag of every job whose time has come; how many."""
    stmt = _PROMOTE_SKIP_LOCKED if skip_locked else _PROMOTE
    return int(stmt(tx.conn, {"now": now}).rowcount)
