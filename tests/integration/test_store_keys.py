"""API keys, runners and shared settings, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from corral.auth import Role
from corral.errors import KeyNotFound, RunnerNotFound, Unauthorized
from corral.store import Store


async def test_keys_create_authenticate_revoke(store: Store) -> None:
    meta, key = await store.keys.create(name="ops", role=Role.OPERATOR)
    who = await store.keys.authenticate(key)
    assert (who.key_id, who.role, who.name) == (meta.id, Role.OPERATOR, "ops")
    assert [k.id for k in await store.keys.list()] == [meta.id]
    assert await store.keys.count_active() == 1
    with pytest.raises(Unauthorized):
        await store.keys.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B"))
    with pytest.raises(Unauthorized):
        await store.keys.authenticate("crl_000000000000_nope")
    revoked = await store.keys.revoke(meta.id)
    assert revoked.revoked_at is not None
    with pytest.raises(Unauthorized):
        await store.keys.authenticate(key)
    assert await store.keys.count_active() == 0
    with pytest.raises(KeyNotFound):
        await store.keys.revoke("missing")


async def test_ensure_stores_a_given_key_once(store: Store) -> None:
    _, key = await store.keys.create(name="x", role=Role.ADMIN)
    await store.keys.ensure(key, name="x", role=Role.ADMIN)
    assert len(await store.keys.list()) == 1


async def test_runners(store: Store) -> None:
    r = await store.runners.register(
        name="a", key_id="k", hostname="h", providers=["shell"], labels=["gpu"], slots=3
    )
    assert (await store.runners.get(r.id)).slots == 3
    assert await store.runners.key_of(r.id) == "k"
    r2 = await store.runners.register(
        name="a", key_id="k", hostname="h", providers=["shell"], labels=[], slots=3
    )
    assert [x.id for x in await store.runners.list()] == [r2.id]
    assert (await store.runners.get(r.id)).status == "replaced"
    with pytest.raises(RunnerNotFound):
        await store.runners.get("missing")


async def test_shared_settings_are_created_once(store: Store) -> None:
    first = await store.settings.get_or_create("jwt_secret", lambda: "one")
    second = await store.settings.get_or_create("jwt_secret", lambda: "two")
    assert first == second == "one"
