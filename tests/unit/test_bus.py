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


async def test_each_wait_times_out_after_its_own_timeout() -> None:
    """The timer outlives a wait an event ends early; the next wait still
    gets its whole timeout, counted from its own start, and no more."""
    bus = MemoryBus()
    loop = asyncio.get_running_loop()
    with bus.subscribe("a") as sub:
        loop.call_later(0.05, bus.publish, "a", "x")
        assert await sub.get(0.3) == ["x"]  # woken early: the timer stays armed
        began = loop.time()
        assert await sub.get(0.3) == []
        waited = loop.time() - began
        # Not ~0.25 s (the first wait's deadline), and it does end (slack for a loaded machine).
        assert 0.3 - 0.002 <= waited < 3.0, waited


async def test_a_shorter_timeout_after_a_longer_one_is_kept() -> None:
    bus = MemoryBus()
    with bus.subscribe("a") as sub:
        asyncio.get_running_loop().call_soon(bus.publish, "a", "x")
        assert await sub.get(30) == ["x"]  # its timer is 30 s away
        async with asyncio.timeout(5):  # the next wait's 0.05 s is not held to it
            assert await sub.get(0.05) == []


async def test_waits_woken_by_events_share_one_timer() -> None:
    """A reader woken by every event does not make a timer per wait (issue #18):
    the one armed by the first wait serves the next; closing cancels it."""
    bus = MemoryBus()
    with bus.subscribe("a") as sub:
        timers = set()
        for i in range(20):
            asyncio.get_running_loop().call_soon(bus.publish, "a", str(i))
            assert await sub.get(5) == [str(i)]
            timers.add(id(sub._timer))
        timer = sub._timer
        assert len(timers) == 1 and timer is not None and not timer.cancelled()
    assert timer.cancelled()


async def test_deliver_takes_messages_only_while_the_reader_waits_with_nothing_buffered() -> None:
    """``deliver`` (an SSE stream's fast path) gets a message from the
    publisher's call while the reader waits in ``get`` and nothing is
    buffered; a message it declines is buffered and wakes the reader, as is
    every message while the reader is busy."""
    bus = MemoryBus()
    taken: list[object] = []
    with bus.subscribe("a") as sub:
        sub.deliver = lambda m: m != "no" and not taken.append(m)
        bus.publish("a", "busy")  # the reader is not waiting: buffered
        assert await sub.get(1) == ["busy"] and taken == []
        waiting = asyncio.create_task(sub.get(5))
        await asyncio.sleep(0)
        bus.publish("a", "x")
        bus.publish("a", "y")
        assert taken == ["x", "y"] and not waiting.done()
        bus.publish("a", "no")  # declined: buffered, the reader woken
        bus.publish("a", "z")  # something is buffered now: behind it, not around it
        async with asyncio.timeout(1):
            assert await waiting == ["no", "z"]
        assert taken == ["x", "y"]


async def test_a_delivered_message_restarts_the_waits_timeout() -> None:
    """Messages taken by ``deliver`` count as something read: the wait times
    out ``timeout`` after the last of them, not after it began."""
    bus = MemoryBus()
    loop = asyncio.get_running_loop()
    with bus.subscribe("a") as sub:
        sub.deliver = lambda m: True
        for delay in (0.1, 0.2, 0.3):
            loop.call_later(delay, bus.publish, "a", "x")
        began = loop.time()
        assert await sub.get(0.15) == []
        assert loop.time() - began >= 0.44


async def test_a_failing_deliver_buffers_the_message_and_spares_the_other_subscribers() -> None:
    bus = MemoryBus()

    def broken(message: object) -> bool:
        raise RuntimeError("boom")

    with bus.subscribe("a") as one, bus.subscribe("a") as two:
        one.deliver = broken
        waits = [asyncio.create_task(one.get(5)), asyncio.create_task(two.get(5))]
        await asyncio.sleep(0)
        bus.publish("a", "x")
        async with asyncio.timeout(1):
            assert await asyncio.gather(*waits) == [["x"], ["x"]]
