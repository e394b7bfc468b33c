"""The webhook sender's retry rules and its per-URL cap, on SQLite and
PostgreSQL: the real sender (corral/sinks/webhook.py) against a real receiver
on loopback that answers what each URL asks for.

429, 408 and 5xx are retried with backoff; any other 4xx gives up at once; a
``Retry-After`` (seconds or an HTTP-date) postpones the next attempt; a retry
that would land past ``webhook_retry_horizon`` gives up; at most ``PER_URL``
deliveries are in flight to one URL while other URLs go on."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from corral.models import JobCreate
from corral.sinks import webhook
from corral.sinks.webhook import Sender
from corral.store import Store

HORIZON = 300.0


@dataclass
class Receiver:
    """Answers ``/status/CODE?retry_after=V``; holds ``/hold/...`` requests
    until ``release`` is set, counting how many it holds at once."""

    url: str
    release: threading.Event = field(default_factory=threading.Event)
    held: int = 0
    most_held: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Every delivery connects at once: the default listen backlog of 5 drops
    # connections on a loaded machine (then ReadError, not the status asked for).
    request_queue_size = 128


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver("")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            parts = urlsplit(self.path)
            status = 200
            if parts.path.startswith("/hold"):
                with rec.lock:
                    rec.held += 1
                    rec.most_held = max(rec.most_held, rec.held)
                rec.release.wait(30)
                with rec.lock:
                    rec.held -= 1
            elif parts.path.startswith("/status/"):
                status = int(parts.path.rsplit("/", 1)[1])
            self.send_response(status)
            for value in parse_qs(parts.query).get("retry_after", []):
                self.send_header("Retry-After", value)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = _Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rec.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield rec
    finally:
        rec.release.set()
        server.shutdown()
        server.server_close()


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _http_date(seconds_from_now: float) -> str:
    return format_datetime(datetime.now(UTC) + timedelta(seconds=seconds_from_now), usegmt=True)


# (case, path, state after the first attempt, next attempt after it in seconds: (low, high))
CASES: list[tuple[str, str, str, tuple[float, float] | None]] = [
    ("200 delivered", "/status/200", "delivered", None),
    ("429 retried", "/status/429", "pending", (0.0, 5.0)),
    ("408 retried", "/status/408", "pending", (0.0, 5.0)),
    ("503 retried", "/status/503", "pending", (0.0, 5.0)),
    ("400 given up", "/status/400", "failed", None),
    ("404 given up", "/status/404", "failed", None),
    ("Retry-After seconds", "/status/429?retry_after=120", "pending", (118.0, 121.0)),
    ("Retry-After on a 503", "/status/503?retry_after=90", "pending", (88.0, 91.0)),
    (
        "Retry-After HTTP-date",
        "/status/429?retry_after={in_200s}",
        "pending",
        (196.0, 202.0),
    ),
    ("Retry-After date passed", "/status/503?retry_after={60s_ago}", "pending", (0, 5)),
    ("Retry-After junk", "/status/429?retry_after=soon", "pending", (0.0, 5.0)),
    ("past the horizon", f"/status/429?retry_after={int(HORIZON) + 60}", "failed", None),
    (
        "HTTP-date past the horizon",
        "/status/503?retry_after={past_the_horizon}",
        "failed",
        None,
    ),
]


async def _run(sender: Sender) -> asyncio.Task[None]:
    return asyncio.create_task(sender.run())


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_retries_backoff_retry_after_and_the_horizon(
    store: Store, receiver: Receiver
) -> None:
    dates = {
        "in_200s": _http_date(200),
        "60s_ago": _http_date(-60),
        "past_the_horizon": _http_date(HORIZON + 60),
    }
    jobs = {}
    for name, path, _, _ in CASES:
        url = receiver.url + path.format(**dates).replace(" ", "%20")
        spec = JobCreate(command="true", webhook={"url": url})
        jobs[name] = (await store.jobs.create(spec))[0].id
    task = await _run(Sender(store, default_secret="s" * 32, horizon=HORIZON, timeout=5))
    try:
        rows: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 20
        while len(rows) < len(CASES) and time.monotonic() < deadline:
            for name, job_id in jobs.items():
                [row] = await store.outbox.list(job_id=job_id, attempts=True)
                if row["attempts"] >= 1:
                    rows[name] = row
            await asyncio.sleep(0.05)
    finally:
        await _stop(task)
    wrong = []
    for name, path, state, delay in CASES:
        row = rows.get(name)
        if row is None:
            wrong.append(f"{name}: never attempted")
            continue
        code = int(urlsplit(path).path.rsplit("/", 1)[1])
        if row["state"] != state or row["attempt_log"][0]["status"] != code:
            wrong.append(f"{name}: {row['state']} after {row['attempt_log']}, not {state}")
        if delay is not None and row["state"] == "pending":
            last = _utc(row["attempt_log"][-1]["at"])
            wait = (_utc(row["next_attempt_at"]) - last).total_seconds()
            if not delay[0] <= wait <= delay[1]:
                wrong.append(f"{name}: next attempt in {wait:.1f}s, not {delay}")
    assert wrong == []


async def test_at_most_per_url_deliveries_in_flight_to_one_url(
    store: Store, receiver: Receiver
) -> None:
    held = [
        (await store.jobs.create(JobCreate(command="true", webhook=f"{receiver.url}/hold")))[0].id
        for _ in range(webhook.PER_URL * 2 + 1)
    ]
    other = (await store.jobs.create(JobCreate(command="true", webhook=f"{receiver.url}/ok")))[0]
    task = await _run(Sender(store, default_secret="s" * 32, concurrency=16, timeout=20))
    try:
        # The other URL is delivered while the held one is at its cap ...
        for _ in range(200):
            [row] = await store.outbox.list(job_id=other.id)
            if row["state"] == "delivered" and receiver.held == webhook.PER_URL:
                break
            await asyncio.sleep(0.05)
        assert row["state"] == "delivered"
        await asyncio.sleep(0.3)  # time enough for the sender to start more, were it to
        assert receiver.held == receiver.most_held == webhook.PER_URL
        # ... and once the receiver answers, the rest go, never more at once.
        receiver.release.set()
        for _ in range(200):
            rows = [r for j in held for r in await store.outbox.list(job_id=j)]
            if all(r["state"] == "delivered" for r in rows):
                break
            await asyncio.sleep(0.05)
        assert [r["state"] for r in rows] == ["delivered"] * len(held)
        assert receiver.most_held == webhook.PER_URL
    finally:
        await _stop(task)
