"""The client's webhook receivers on real loopback sockets: the thread one
(``Receiver``) and the asyncio one (``AsyncReceiver``) accept only signed
deliveries, keep each delivery id once, wake a waiter as soon as one
arrives, keep connections alive, and close promptly."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest

from corral.client import AsyncReceiver, Receiver
from corral.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, sign

SECRET = "receiver-secret-0123456789abcdef"


def _delivery(job_id: str, state: str, delivery: str, secret: str = SECRET) -> dict[str, object]:
    body = json.dumps({"job_id": job_id, "state": state, "delivery_id": delivery}).encode()
    headers = {
        SIGNATURE_HEADER: sign(body, secret),
        DELIVERY_HEADER: delivery,
        "Content-Type": "application/json",
    }
    return {"content": body, "headers": headers}


def _ended(body: dict[str, object]) -> bool:
    return body.get("state") == "done"


async def test_async_receiver_checks_dedupes_and_wakes_its_waiter() -> None:
    receiver = await AsyncReceiver.start(SECRET)
    try:
        assert receiver.url.startswith("http://127.0.0.1:")
        assert receiver.url.endswith("/corral-webhook")
        waiter = asyncio.create_task(receiver.wait("j1", _ended, timeout=10))
        async with httpx.AsyncClient() as http:  # one kept-alive connection for all of them
            forged = await http.post(receiver.url, **_delivery("j1", "done", "d0", "wrong" * 8))
            assert forged.status_code == 400 and receiver.rejected == 1
            assert (await http.post(receiver.url, content=b"{}")).status_code == 400
            assert (await http.get(receiver.url)).status_code == 405
            queued = await http.post(receiver.url, **_delivery("j1", "queued", "d1"))
            assert queued.status_code == 204
            assert not waiter.done()
            sent = time.monotonic()
            for _ in range(2):  # at least once: the same delivery again is dropped
                done = await http.post(receiver.url, **_delivery("j1", "done", "d2"))
                assert done.status_code == 204
            body = await waiter
            woke = time.monotonic() - sent
            assert body is not None and body["state"] == "done"
            assert [b["delivery_id"] for b in receiver.deliveries("j1")] == ["d1", "d2"]
            too_big = await http.post(receiver.url, content=b"x" * (4 * 1024 * 1024 + 1))
            assert too_big.status_code == 413
            # Already there: answered at once; never arriving: None after the timeout.
            assert await receiver.wait("j1", _ended, timeout=0) == body
            assert await receiver.wait("j2", _ended, timeout=0.05) is None
            assert woke < 5  # woken by the delivery, not by its 10 s timeout
            kept = await http.post(receiver.url, **_delivery("j3", "done", "d3"))
            assert kept.status_code == 204
            closing = time.monotonic()
            await receiver.aclose()  # with the client's connection still open
            assert time.monotonic() - closing < 2
    finally:
        await receiver.aclose()


async def test_async_receiver_wait_is_cancelled_at_once() -> None:
    async with await AsyncReceiver.start(SECRET) as receiver:
        waiter = asyncio.create_task(receiver.wait("j1", _ended, timeout=None))
        await asyncio.sleep(0.05)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter


async def test_a_receiver_that_cannot_bind_says_so() -> None:
    with pytest.raises(OSError):
        await AsyncReceiver.start(SECRET, host="203.0.113.7")  # not an address of this host
    with pytest.raises(OSError):
        Receiver(SECRET, host="203.0.113.7")


def test_thread_receiver_checks_dedupes_and_wakes_its_waiter() -> None:
    with Receiver(SECRET, advertise="me.example") as receiver:
        assert receiver.url.startswith("http://me.example:")
        url = receiver.url.replace("me.example", "127.0.0.1")
        found: list[dict[str, object] | None] = []
        waiter = threading.Thread(target=lambda: found.append(receiver.wait("j1", _ended, 10)))
        waiter.start()
        with httpx.Client() as http:
            forged = http.post(url, **_delivery("j1", "done", "d0", "wrong" * 8))
            assert forged.status_code == 400 and receiver.rejected == 1
            for _ in range(2):
                assert http.post(url, **_delivery("j1", "done", "d2")).status_code == 204
        waiter.join(5)
        assert found and found[0] is not None and found[0]["state"] == "done"
        assert len(receiver.deliveries("j1")) == 1
        assert receiver.wait("j2", _ended, 0.05) is None
