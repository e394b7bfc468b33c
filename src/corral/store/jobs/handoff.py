"""A new job handed to a runner already waiting for work, in the transaction
that creates it (issue #18).

A runner's lease long-poll that found nothing waits for the bus's dispatch
message, then runs its own lease transaction. For the job that woke it that
cost a second write (a hop to the SQLite writer thread, its ``BEGIN`` and
``COMMIT``) and the wake-up itself: ~2 ms of the 7 ms from submit to the
process started, and a transaction per job. So a waiting poll registers here
(``Waiting.enter``); the transaction creating a job takes one waiter
(``take``), runs the same lease for its runner (``dispatch.lease``: every
dispatch rule, the same statements) inside a savepoint, and once the
transaction is over hands what it leased to the waiter (``settle``, on the
event loop: after the commit the leases, after a rollback nothing). The poll
answers with them as if its own lease had found them.

A waiter is taken by at most one transaction at a time; a poll that ends while
its waiter is taken waits for that transaction's outcome (``leave``), so a
job leased for it is never dropped. What is not handed off (no waiter, the
waiter's runner could take nothing, the lease failed) is leased the usual
way: the dispatch message still goes out.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from datetime import datetime

from corral.models import Runner
from corral.store.db import Tx
from corral.store.jobs import dispatch
from corral.store.jobs.dispatch import Lease
from corral.store.jobs.policy import Caps
from corral.store.prepared import savepoint

log = logging.getLogger(__name__)


class Waiter:
    """One waiting lease poll: whom to lease for, and where its leases go."""

    __slots__ = ("future", "left", "max_jobs", "runner", "taken", "ttl")

    def __init__(self, runner: Runner, max_jobs: int, ttl: float) -> None:
        self.runner = runner
        self.max_jobs = max_jobs
        self.ttl = ttl
        self.future: asyncio.Future[list[Lease]] = asyncio.get_running_loop().create_future()
        self.taken = False  # a transaction is leasing for it
        self.left = False  # its poll ended (while taken: it waits for the outcome)


class Waiting:
    """The polls of this process waiting for work (thread-safe: transactions
    take waiters in the SQLite writer's thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[Waiter, None] = {}
        self.handed = 0  # jobs handed off (tests, the curious)

    def __bool__(self) -> bool:
        return bool(self._waiters)

    def enter(self, runner: Runner, max_jobs: int, ttl: float) -> Waiter:
        waiter = Waiter(runner, max_jobs, ttl)
        with self._lock:
            self._waiters[waiter] = None
        return waiter

    def take(self, provider: str) -> Waiter | None:
        """A waiter no other transaction holds whose runner serves
        ``provider`` (the new job's: the poll found nothing else when it began
        to wait), for this one to lease for; ``settle`` it once the
        transaction is over."""
        with self._lock:
            for waiter in self._waiters:
                if not waiter.taken and not waiter.left and provider in waiter.runner.providers:
                    waiter.taken = True
                    return waiter
        return None

    def settle(self, waiter: Waiter, leases: list[Lease]) -> None:
        """On the event loop, after the transaction that took ``waiter``:
        what it leased for it (nothing after a rollback)."""
        with self._lock:
            waiter.taken = False
            if leases or waiter.left:
                self._waiters.pop(waiter, None)
                if not waiter.future.done():
                    waiter.future.set_result(leases)
                self.handed += len(leases)

    async def leave(self, waiter: Waiter) -> list[Lease]:
        """The poll is done waiting: the leases handed to it, if any (waiting
        for a transaction that holds it to end)."""
        with self._lock:
            waiter.left = True
            if not waiter.taken and not waiter.future.done():
                self._waiters.pop(waiter, None)
                return []
        return await asyncio.shield(waiter.future)


def hand_off(
    tx: Tx, waiting: Waiting, provider: str, *, caps: Caps, skip_locked: bool, now: datetime
) -> list[Lease]:
    """In a transaction that queued a job: lease for a waiting runner (if
    one waits), in a savepoint, its outcome settled once the transaction is
    over. A lease that fails is undone alone; the job stays queued.
    Returns what was leased (as it will be once the transaction commits)."""
    waiter = waiting.take(provider)
    if waiter is None:
        return []
    leases: list[Lease] = []
    messages, after = len(tx.messages), len(tx.after_commit)
    try:
        with savepoint(tx.conn, "corral_handoff"):
            leases = dispatch.lease(
                tx,
                waiter.runner,
                waiter.max_jobs,
                waiter.ttl,
                caps=caps,
                skip_locked=skip_locked,
                now=now,
            )
    except Exception:
        log.exception("handing a new job to runner %s failed; it stays queued", waiter.runner.name)
        del tx.messages[messages:], tx.after_commit[after:]
        leases = []
    tx.after_commit.append(functools.partial(waiting.settle, waiter, leases))
    tx.after_abort.append(functools.partial(waiting.settle, waiter, []))
    return leases
