"""The in-memory bus: fan-out, bounded buffers, overflow."""

from __future__ import annotations

import asyncio

import pytest

from corral.bus import MemoryBus


async def test_fan_out_and_unsubscribe() -> None:
    bus = MemoryBus()
    with bus.subscribe("a") as one, bus.subscribe("a", "b") as two:
        bus.publish("a", "x")
        bus.publish("b", "y")
        bus.publish("c", "z")
        assert await one.get(0.1) == ["x"]
        assert await two.get(0.1) == ["x", "y"]
    assert bus.subscribers("a") == 0 and bus.subscribers("b") == 0


async def test_get_times_out_empty() -> None:
    bus = MemoryBus()
    with bus.subscribe("a") as sub:
        assert await sub.get(0.01) == []


async def test_slow_subscriber_overflows_without_blocking_the_publisher() -> None:
    bus = MemoryBus()
    with bus.subscribe("a", maxsize=3) as slow, bus.subscribe("a", maxsize=100) as fast:
        for i in range(10):
            bus.publish("a", str(i))
        assert slow.overflowed and await slow.get(0.1) == []
        assert not fast.overflowed and len(await fast.get(0.1)) == 10


async def test_a_cancelled_wait_leaves_the_subscription_working() -> None:
    """Sinks wait on ``get`` in a task they may cancel; the next wait still wakes."""
    bus = MemoryBus()
    with bus.subscribe("a") as sub:
        waiting = asyncio.create_task(sub.get(10))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        later = asyncio.create_task(sub.get(10))
        await asyncio.sleep(0)
        bus.publish("a", "x")
        async with asyncio.timeout(1):
            assert await later == ["x"]
