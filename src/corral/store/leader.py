"""Singleton loops across control-plane replicas (DESIGN.md section 10).

The replica holding a named PostgreSQL advisory lock runs the loop; the lock
lives on a dedicated connection, so a replica that dies or loses its
connection releases it and another one takes over within ``poll`` seconds.
On SQLite one process owns the database file, so it always leads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg

from corral.store import Store

log = logging.getLogger(__name__)


async def run_as_leader(
    store: Store,
    name: str,
    run: Callable[[], Coroutine[Any, Any, None]],
    *,
    poll: float = 2.0,
    leading: Callable[[bool], None] = lambda _: None,
) -> None:
    """Run ``run()`` while this replica holds the lock ``corral:<name>``;
    ``leading(True)`` when it starts to, ``leading(False)`` when it stops."""
    if store.db.is_sqlite:
        leading(True)
        await run()
        return
    while True:
        try:
            conn = await asyncpg.connect(store.db.asyncpg_dsn)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("leader %s: cannot connect (%s); retrying", name, exc)
            await asyncio.sleep(poll)
            continue
        try:
            if not await conn.fetchval(
                "SELECT pg_try_advisory_lock(hashtext($1))", f"corral:{name}"
            ):
                await asyncio.sleep(poll)  # another replica leads
                continue
            log.info("this replica now runs %s", name)
            leading(True)
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
            work: asyncio.Task[None] = asyncio.create_task(run(), name=f"corral-leader-{name}")
            watch = asyncio.create_task(lost.wait())
            try:
                done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                leading(False)
                for task in (work, watch):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if work in done:
                work.result()  # its error, if any
                return
            log.warning("leader %s: lost the lock connection; stopped, will try again", name)
        finally:
            with contextlib.suppress(Exception):
                await conn.close()
