"""The chat sender: sends what the chat outbox owes, on one replica at a time.

Messages of one conversation go in order (the next waits until the one
before it is delivered or given up), at least once: a row stays pending until
its channel took it, across restarts (it is a row, written in the
transaction that ended its turn). Per channel kind:

- ``bridge``: a POST of the row's body (``{channel_id, user_id, thread_id,
  text, job_id, kind}`` plus its ``id``) to ``outbound_url``, signed with the
  channel's secret exactly like corral's webhooks (``X-Corral-Signature``,
  ``X-Corral-Delivery`` = the row id, the same on every retry: receivers drop
  duplicates by it). 2xx is delivered; 408, 429, 5xx and no answer are
  retried; any other 4xx gives up.
- ``telegram``: ``sendMessage`` of each piece (a text over Telegram's 4096
  characters is split), plain text; the pieces sent are recorded, so a retry
  goes on from the first piece not sent. Flood control (429) waits its
  ``retry_after``; 400/403 (chat not found, bot blocked) give up.

Retries back off exponentially with jitter until ``horizon`` seconds after the
row was written."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
from collections.abc import Sequence
from datetime import UTC, datetime

import httpx

from corral import __version__, chat, retrying
from corral.chat import BridgeChannel, ChannelSettings, TelegramChannel
from corral.errors import CorralError
from corral.jobs import backoff
from corral.protocol import topics
from corral.store import Store
from corral.store.chat import Due
from corral.telegram import Bot, TelegramError
from corral.webhooks import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, sign

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0  # looks again at least this often (retries coming due, other replicas)
RETRY_BASE = 1.0
RETRY_CAP = 600.0
RETRYABLE = frozenset({408, 429})


class _Failed(Exception):
    def __init__(self, error: str, *, retry: bool, retry_after: float | None, parts: int) -> None:
        super().__init__(error)
        self.error = error
        self.retry = retry
        self.retry_after = retry_after
        self.parts = parts


class ChatSender:
    def __init__(
        self,
        store: Store,
        channels: Sequence[ChannelSettings],
        *,
        timeout: float = 10.0,
        horizon: float = 86400.0,
        concurrency: int = 16,
    ) -> None:
        self.store = store
        self.channels = {c.name: c for c in channels}
        self.timeout = timeout
        self.horizon = horizon
        self.concurrency = concurrency
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._busy: set[tuple[str, str]] = set()  # conversations with a send in flight
        self._finished_during_read: set[int] = set()
        self._wake = asyncio.Event()

    async def run(self) -> None:
        headers = {"User-Agent": f"corral-chat/{__version__}"}
        sub = self.store.bus.subscribe(topics.CHAT, maxsize=10_000)
        async with httpx.AsyncClient(timeout=self.timeout, headers=headers) as http:
            try:
                while True:
                    await self._fill(http)
                    if sub.overflowed:
                        sub.close()
                        sub = self.store.bus.subscribe(topics.CHAT, maxsize=10_000)
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
            due = await self.store.chat.due(
                datetime.now(UTC), limit=room + len(self._inflight) + 32
            )
        except CorralError as exc:
            log.warning("chat sender: cannot read the outbox: %s", exc.message)
            return
        for d in due:
            if len(self._inflight) >= self.concurrency:
                break
            key = (d.channel, d.conversation)
            if d.seq in self._inflight or key in self._busy or d.seq in self._finished_during_read:
                continue
            self._busy.add(key)
            task = asyncio.create_task(self._send(http, d), name=f"corral-chat-{d.id}")
            self._inflight[d.seq] = task
            task.add_done_callback(functools.partial(self._done, d))

    def _done(self, d: Due, _task: asyncio.Task[None]) -> None:
        self._inflight.pop(d.seq, None)
        self._finished_during_read.add(d.seq)
        self._busy.discard((d.channel, d.conversation))
        self._wake.set()

    async def _send(self, http: httpx.AsyncClient, d: Due) -> None:
        channel = self.channels.get(d.channel)
        parts = d.parts_sent
        error: str | None = None
        try:
            if channel is None or not channel.enabled:
                raise _Failed(
                    f"no enabled channel {d.channel!r} in the configuration",
                    retry=False,
                    retry_after=None,
                    parts=parts,
                )
            if isinstance(channel, BridgeChannel):
                await self._bridge(http, channel, d)
            else:
                parts = await self._telegram(http, channel, d)
            outcome, wait = "delivered", 0.0
        except _Failed as exc:
            error, parts = exc.error[:500], exc.parts
            now = datetime.now(UTC)
            wait = backoff(d.attempts + 1, base=RETRY_BASE, cap=RETRY_CAP)
            if exc.retry_after is not None:
                wait = max(wait, min(exc.retry_after, RETRY_CAP))
            age = (now - d.created_at).total_seconds()
            outcome = "retry" if exc.retry and age + wait <= self.horizon else "failed"
            log.info("chat message %s to %s: %s (%s)", d.id, d.channel, error, outcome)
        for pause in (0.1, 0.5, 2.0, 5.0):
            try:
                await self.store.chat.record(
                    d.seq,
                    at=datetime.now(UTC),
                    outcome=outcome,
                    error=error,
                    parts_sent=parts,
                    retry_in=wait,
                )
                return
            except CorralError as exc:  # the database is away: try again shortly
                log.warning("chat sender: cannot record %s: %s", d.id, exc.message)
                await asyncio.sleep(pause)

    async def _bridge(self, http: httpx.AsyncClient, channel: BridgeChannel, d: Due) -> None:
        body = json.dumps(d.body, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            DELIVERY_HEADER: d.id,
            EVENT_HEADER: f"chat.{d.kind}",
            SIGNATURE_HEADER: sign(body, channel.secret.get_secret_value()),
        }
        try:
            resp = await http.post(channel.outbound_url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise _Failed(
                f"{type(exc).__name__}: {exc}", retry=True, retry_after=None, parts=0
            ) from None
        status = resp.status_code
        if 200 <= status < 300:
            return
        retry = status >= 500 or status in RETRYABLE
        raise _Failed(
            f"HTTP {status}: {resp.text[:200]}",
            retry=retry,
            retry_after=retrying.retry_after(resp.headers.get("retry-after")),
            parts=0,
        )

    async def _telegram(self, http: httpx.AsyncClient, channel: TelegramChannel, d: Due) -> int:
        token = os.environ.get(channel.token_env)
        if not token:
            raise _Failed(
                f"${channel.token_env} (the bot token of channel {channel.name!r}) is not set",
                retry=True,
                retry_after=None,
                parts=d.parts_sent,
            )
        bot = Bot(http, channel.api_url, token)
        pieces = chat.split(str(d.body.get("text") or "")) or ["(empty)"]
        thread = d.body.get("thread_id")
        sent = d.parts_sent
        for piece in pieces[sent:]:
            try:
                await bot.send_message(
                    _chat_id(str(d.body["channel_id"])),
                    piece,
                    thread_id=int(thread) if thread else None,
                )
            except TelegramError as exc:
                raise _Failed(
                    exc.message, retry=exc.retryable, retry_after=exc.retry_after, parts=sent
                ) from None
            sent += 1
        return sent


def _chat_id(value: str) -> int | str:
    """Telegram chat ids are integers; ``@channelname`` also works."""
    with contextlib.suppress(ValueError):
        return int(value)
    return value
