"""After start-up the server freezes what the first few full collections
leave alive (server/server.py ``_Settling``): what loads as it is first used
then stays out of every later full collection (issue #18).

Counts are of the test's own 2,000 objects: from Python 3.12 on, a
collection itself moves the immortal objects it finds into the permanent
generation, so ``gc.get_freeze_count()`` can grow by a few hundred with no
freeze at all."""

from __future__ import annotations

import asyncio
import gc

from corral.server.server import _Settling

OURS = 2000  # objects each collection below keeps alive


async def _collect_and_settle() -> int:
    """A full collection with new objects alive; how many the freeze took."""
    alive = [[i] for i in range(OURS)]  # tracked by the collector
    before = gc.get_freeze_count()
    gc.collect()
    await asyncio.sleep(0)  # the freeze runs on the event loop
    await asyncio.sleep(0)
    assert len(alive) == OURS
    return gc.get_freeze_count() - before


async def test_the_first_full_collections_freeze_what_they_leave_and_then_no_more() -> None:
    gc.disable()  # only the test's own collections
    settling = _Settling(asyncio.get_running_loop(), times=2)
    try:
        assert await _collect_and_settle() >= OURS
        assert await _collect_and_settle() >= OURS
        assert settling.left == 0
        assert await _collect_and_settle() < OURS  # only the first two froze
    finally:
        settling.close()
        gc.unfreeze()
        gc.enable()


async def test_a_young_collection_freezes_nothing_and_close_lets_go() -> None:
    gc.disable()
    settling = _Settling(asyncio.get_running_loop(), times=1)
    alive = [[i] for i in range(OURS)]
    try:
        before = gc.get_freeze_count()
        gc.collect(0)
        await asyncio.sleep(0)
        assert gc.get_freeze_count() - before < OURS and settling.left == 1
    finally:
        settling.close()
    assert all(getattr(cb, "__self__", None) is not settling for cb in gc.callbacks)
    try:
        assert await _collect_and_settle() < OURS
    finally:
        gc.enable()
    assert len(alive) == OURS
