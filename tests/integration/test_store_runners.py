"""Runner names belong to the key that first registered them, on SQLite and
PostgreSQL: another key is refused and the holder's jobs are untouched; the
same key re-registering is a restart; a revoked key's name, or one an admin
forgets, is free again."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from corral.auth import Role
from corral.errors import RunnerNameNotFound, RunnerNameTaken
from corral.jobs import JobState
from corral.models import JobCreate, Runner
from corral.store import Store, migrate
from corral.store.schema import runner_names, runners
from corral.testing import worker_claims


async def _register(store: Store, name: str, key_id: str) -> Runner:
    return await store.runners.register(
        name=name, key_id=key_id, hostname=None, providers=["shell"], labels=[], slots=2
    )


async def _key(store: Store, name: str) -> str:
    meta, _ = await store.keys.create(name=name, role=Role.RUNNER)
    return meta.id


async def test_another_key_cannot_take_a_name_nor_release_its_jobs(store: Store) -> None:
    owner, intruder = await _key(store, "owner"), await _key(store, "intruder")
    runner = await _register(store, "box", owner)
    job, _ = await store.jobs.create(JobCreate(command="sleep 60"))
    (lease,) = await store.jobs.lease(runner, 1, ttl=30)
    await store.jobs.start(worker_claims(lease, runner))
    with pytest.raises(RunnerNameTaken) as refused:
        await _register(store, "box", intruder)
    assert refused.value.status == 409
    assert "corral runners forget box" in refused.value.message
    held = await store.jobs.get(job.id)
    assert held.state is JobState.RUNNING and held.epoch == lease.job.epoch
    assert [r.id for r in await store.runners.list()] == [runner.id]
    # The owner restarting is today's behaviour: its old jobs are released at once.
    again = await _register(store, "box", owner)
    released = await store.jobs.get(job.id)
    assert released.state is JobState.QUEUED and released.reason == "runner_restarted"
    assert [r.id for r in await store.runners.list()] == [again.id]


async def test_a_forgotten_or_revoked_name_is_free_again(store: Store) -> None:
    first, second, third = [await _key(store, n) for n in ("first", "second", "third")]
    await _register(store, "box", first)
    assert await store.runners.forget("box") == first
    with pytest.raises(RunnerNameNotFound):
        await store.runners.forget("box")
    await _register(store, "box", second)  # the next key to register owns it
    with pytest.raises(RunnerNameTaken):
        await _register(store, "box", first)
    await store.keys.revoke(second)
    await _register(store, "box", third)
    with pytest.raises(RunnerNameTaken):
        await _register(store, "box", second)


async def test_the_server_claims_its_embedded_runner_name(store: Store) -> None:
    old, new = await _key(store, "embedded runner"), await _key(store, "embedded runner")
    await _register(store, "embedded-host-1234", old)
    # runner.key was made anew (its file lost): the server takes its name back.
    await store.runners.claim("embedded-host-1234", new)
    await _register(store, "embedded-host-1234", new)
    with pytest.raises(RunnerNameTaken):
        await _register(store, "embedded-host-1234", old)


async def test_upgrade_binds_each_name_to_its_latest_key(empty_db_url: str) -> None:
    store = Store(empty_db_url)
    try:
        await migrate.upgrade(store.db, "0009")
        rows = [
            ("a", "k-old", datetime(2026, 1, 1, tzinfo=UTC)),
            ("a", "k-new", datetime(2026, 1, 2, tzinfo=UTC)),
            ("b", "k-b", datetime(2026, 1, 1, tzinfo=UTC)),
        ]

        def seed(tx: object) -> None:
            conn = tx.conn  # type: ignore[attr-defined]
            for i, (name, key_id, at) in enumerate(rows):
                conn.execute(
                    sa.insert(runners).values(
                        id=f"r{i}",
                        name=name,
                        key_id=key_id,
                        providers=["shell"],
                        labels=[],
                        slots=1,
                        status="active",
                        version="v1",
                        registered_at=at,
                        last_seen_at=at,
                    )
                )

        await store.db.write(seed)
        await store.migrate()
        bound = await store.db.read(
            lambda c: dict(c.execute(sa.select(runner_names.c.name, runner_names.c.key_id)).all())
        )
        assert bound == {"a": "k-new", "b": "k-b"}
    finally:
        await store.close()
