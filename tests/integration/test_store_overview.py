"""``store.overview()`` (GET /status and /metrics): one read of the fleet,
served again only while nothing was written and for at most OVERVIEW_FRESH."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

import corral.store
from corral.models import JobCreate
from corral.store import Store
from corral.store.jobs import now_utc, quota
from corral.store.schema import settings


async def test_a_write_here_shows_at_once(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corral.store, "OVERVIEW_FRESH", 60.0)  # the window is no part of this
    first = await store.overview()
    assert await store.overview() is first  # nothing written: the same snapshot
    await store.jobs.create(JobCreate(command="true"))
    assert (await store.overview()).by_state() == {"queued": 1}
    await store.settings.set("paused", "true")
    assert (await store.overview()).paused
    until = now_utc() + timedelta(minutes=5)
    await store.db.write(lambda tx: quota.pause(tx, "shell", until, "429"))
    now = await store.overview(webhooks=True)
    assert [p.provider for p in now.pauses] == ["shell"] and now.webhooks_pending == 0
    assert now.counts == await store.jobs.counts_by_provider()


async def test_a_change_from_elsewhere_shows_within_the_window(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another replica's (or process's) write is not counted here: the
    snapshot serves until it is OVERVIEW_FRESH old."""
    monkeypatch.setattr(corral.store, "OVERVIEW_FRESH", 60.0)
    assert not (await store.overview()).paused
    other = Store(str(store.db.url.render_as_string(hide_password=False)))
    try:

        def pause(tx: Any) -> None:
            tx.conn.execute(sa.delete(settings).where(settings.c.key == "paused"))
            tx.conn.execute(sa.insert(settings).values(key="paused", value="true"))

        await other.db.write(pause)
    finally:
        await other.close()
    assert not (await store.overview()).paused  # within the window: the snapshot
    monkeypatch.setattr(corral.store, "OVERVIEW_FRESH", 0.0)
    assert (await store.overview()).paused
