"""The webhook sender: sends what the outbox holds, on one replica at a time.

Each delivery is one POST (signed, see ``corral.webhooks``) with its own task
and timeout, so a slow or dead endpoint never holds up the others: at most
``webhook_concurrency`` are in flight, at most ``PER_URL`` of them to one URL.
Deliveries of one job to one URL go in order: the next waits until the one
before it is delivered or given up. Connection errors, timeouts, 5xx, 408 and
429 are retried with exponential backoff and jitter (a ``Retry-After``, seconds or an HTTP-date, is
honoured) until ``webhook_retry_horizon``; any other 4xx gives up at once.
Unless private addresses are allowed, job webhooks connect through
``corral.egress`` (a delivery to a refused address fails at once,
"refused: ..."); server-wide endpoints are the admin's and go as configured.
Every attempt is recorded. Pending deliveries survive restarts: they are rows."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from datetime import UTC, datetime

import httpx

from corral import __version__, metrics, retrying, tracing
from corral.egress import guarded_transport
from corral.errors import CorralError, WebhookRefused
from corral.jobs import backoff
from corral.protocol import topics
from corral.store import Store
from corral.store.outbox import Due
from corral.webhooks import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, sign

log = logging.getLogger(__name__)

PER_URL = 4
POLL_SECONDS = 1.0  # looks again at least this often (retries coming due, other replicas)
RETRY_BASE = 1.0
RETRY_CAP = 600.0
RETRYABLE = frozenset({408, 429})


class Sender:
    def __init__(
        self,
        store: Store,
        *,
        default_secret: str,
        timeout: float = 10.0,
        horizon: float = 86400.0,
        concurrency: int = 16,
        allow_private: bool = True,
        trusted: frozenset[str] = frozenset(),
    ) -> None:
        self.store = store
        self.allow_private = allow_private
        self.trusted = trusted  # URLs of the server-wide endpoints
        self._jobs_http: httpx.AsyncClient | None = None
        self.outbox = store.outbox
        self.default_secret = default_secret
        self.timeout = timeout
        self.horizon = horizon
        self.concurrency = concurrency
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._per_url: dict[str, int] = {}
        self._busy_jobs: set[tuple[str, str]] = set()
        # Sends that finished while the outbox was being read: the read may
        # predate their outcome, so they must not be taken from it again.
        self._finished_during_read: set[int] = set()
        self._wake = asyncio.Event()

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=8)
        headers = {"User-Agent": f"corral-webhooks/{__version__}"}
        sub = self.store.bus.subscribe(topics.WEBHOOKS, maxsize=10_000)
        guarded = None if self.allow_private else guarded_transport(limits)
        async with (
            httpx.AsyncClient(timeout=self.timeout, limits=limits, headers=headers) as http,
            httpx.AsyncClient(
                timeout=self.timeout, limits=limits, transport=guarded, headers=headers
            ) as jobs,
        ):
            self._jobs_http = jobs
            try:
                while True:
                    await self._fill(http)
                    if sub.overflowed:  # it only said "something happened": start afresh
                        sub.close()
                        sub = self.store.bus.subscribe(topics.WEBHOOKS, maxsize=10_000)
                    waiter = asyncio.create_task(sub.get(timeout=POLL_SECONDS))
                    woke = asyncio.create_task(self._wake.wait())
                    await asyncio.wait({waiter, woke}, return_when=asyncio.FIRST_COMPLETED)
                    for t in (waiter, woke):
                        t.cancel()
                    self._wake.clear()
            finally:
                sub.close()
                for task in self._inflight.values():
                    task.cancel()
                await asyncio.gather(*self._inflight.values(), return_exceptions=True)

    async def _fill(self, http: httpx.AsyncClient) -> None:
        room = self.concurrency - len(self._inflight)
        if room <= 0:
            return
        self._finished_during_read.clear()
        try:
            due = await self.outbox.due(datetime.now(UTC), limit=room + len(self._inflight) + 32)
        except CorralError as exc:
            log.warning("webhook sender: cannot read the outbox: %s", exc.message)
            return
        for d in due:
            if len(self._inflight) >= self.concurrency:
                break
            key = (d.job_id, d.url)
            if d.seq in self._inflight or key in self._busy_jobs:
                continue
            if d.seq in self._finished_during_read:
                continue  # sent already: its row was read before its outcome was recorded
            if self._per_url.get(d.url, 0) >= PER_URL:
                continue
            self._busy_jobs.add(key)
            self._per_url[d.url] = self._per_url.get(d.url, 0) + 1
            task = asyncio.create_task(self._send(http, d), name=f"corral-webhook-{d.id}")
            self._inflight[d.seq] = task
            task.add_done_callback(functools.partial(self._done, d))

    def _done(self, d: Due, _task: asyncio.Task[None]) -> None:
        self._inflight.pop(d.seq, None)
        self._finished_during_read.add(d.seq)
        self._busy_jobs.discard((d.job_id, d.url))
        self._per_url[d.url] -= 1
        if not self._per_url[d.url]:
            del self._per_url[d.url]
        self._wake.set()

    async def _send(self, http: httpx.AsyncClient, d: Due) -> None:
        with tracing.span(
            "webhook",
            parent=d.traceparent,
            job_id=d.job_id,
            event=d.event,
            delivery_id=d.id,
            attempt=d.attempts + 1,
        ) as traceparent:
            await self._deliver(http, d, traceparent)

    async def _deliver(self, http: httpx.AsyncClient, d: Due, traceparent: str | None) -> None:
        body = json.dumps(d.body, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            DELIVERY_HEADER: d.id,
            EVENT_HEADER: d.event,
            SIGNATURE_HEADER: sign(body, d.secret or self.default_secret),
        }
        if traceparent is not None:
            headers[tracing.HEADER] = traceparent  # the receiver may join the job's trace
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        retry_after: float | None = None
        client = http if d.url in self.trusted or self._jobs_http is None else self._jobs_http
        refused = False
        try:
            resp = await client.post(d.url, content=body, headers=headers)
            status = resp.status_code
            if status >= 300:
                error = f"HTTP {status}: {resp.text[:200]}"
                retry_after = retrying.retry_after(resp.headers.get("retry-after"))
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500] or type(exc).__name__
        except WebhookRefused as exc:
            error, refused = f"refused: {exc.message}"[:500], True
        latency = (time.monotonic() - started) * 1000
        now = datetime.now(UTC)
        if status is not None and 200 <= status < 300:
            outcome, wait = "delivered", 0.0
        elif refused:
            outcome, wait = "failed", 0.0  # the address will not become public by retrying
        elif status is not None and 400 <= status < 500 and status not in RETRYABLE:
            outcome, wait = "failed", 0.0  # the receiver refused it: retrying cannot help
        else:
            wait = backoff(d.attempts + 1, base=RETRY_BASE, cap=RETRY_CAP)
            if retry_after is not None:
                wait = max(wait, min(retry_after, RETRY_CAP))
            age = (now - d.created_at).total_seconds()
            outcome = "retry" if age + wait <= self.horizon else "failed"
        tracing.annotate(status=status, outcome=outcome)
        if outcome != "delivered":
            tracing.failed(error or outcome)
            log.info(
                "webhook %s to %s: %s (%s)", d.id, d.url, error, outcome, extra={"job_id": d.job_id}
            )
        for pause in (0.1, 0.5, 2.0, 5.0):
            try:
                await self.outbox.record(
                    d.seq,
                    at=now,
                    status=status,
                    latency_ms=latency,
                    error=error,
                    outcome=outcome,
                    retry_in=wait,
                )
                metrics.webhook_attempt(outcome)
                return
            except CorralError as exc:  # the database is away: try again shortly
                log.warning("webhook sender: cannot record %s: %s", d.id, exc.message)
                await asyncio.sleep(pause)
