from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from corral.models import Runner
from corral.store import RetryPolicy, Store


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    st = await Store.open(db_url, policy=RetryPolicy(backoff_base=0.0, backoff_max=0.0))
    try:
        yield st
    finally:
        await st.close()


@pytest.fixture
async def runner(store: Store) -> Runner:
    return await store.runners.register(
        name="r1", key_id="k1", hostname="h", providers=["shell"], labels=[], slots=4
    )
