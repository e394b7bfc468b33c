"""Bus across control-plane replicas: PostgreSQL LISTEN/NOTIFY.

Local subscribers are served by an in-process MemoryBus. Every transaction
that queues bus messages also sends them with ``pg_notify`` on channel
``corral_events_v1``, so they reach the other replicas exactly when the rows
commit. A session's events travel as "events up to seq N"; each replica reads
them from the log once and fans them out to its own subscribers. Ephemeral
events travel inline (they are never stored) while they fit in a notification.
A replica that misses notifications (listener reconnecting) loses nothing:
SSE subscribers re-read the log on a gap and every few idle seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import sqlalchemy as sa

from corral.bus.memory import MemoryBus, Subscription
from corral.models import Event
from corral.protocol import topics

log = logging.getLogger(__name__)

_MAX_PAYLOAD = 7000  # PostgreSQL refuses notifications over 8000 bytes
# One NOTIFY per payload, in the array's order (a function scan yields its rows in order).
_NOTIFY = f"SELECT pg_notify('{topics.CHANNEL}', p) FROM unnest(CAST($1 AS text[])) AS p"
_SEEN_MAX = 10_000
STOP_WAIT = 5.0  # seconds stop() gives the reads under way

Fetch = Callable[[str, int], Awaitable[list[Event]]]


class PostgresBus:
    def __init__(self, dsn: str, fetch: Fetch) -> None:
        self._dsn = dsn  # asyncpg's form: postgresql://...
        self._fetch = fetch
        self.origin = uuid.uuid4().hex
        self.local = MemoryBus()
        self._seen: OrderedDict[str, int] = OrderedDict()  # session -> last seq fanned out
        self._locks: dict[str, asyncio.Lock] = {}
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._catching_up: set[asyncio.Task[None]] = set()

    # Bus protocol
    def publish(self, topic: str, message: list[Event] | str) -> None:
        if isinstance(message, list):
            self._mark(topic, message)
        self.local.publish(topic, message)

    def subscribe(self, *topics: str, maxsize: int = 1000) -> Subscription:
        return self.local.subscribe(*topics, maxsize=maxsize)

    # Called inside each write transaction, just before it commits.
    def notify_in(self, conn: sa.Connection, messages: list[tuple[str, Any]]) -> None:
        """All of a transaction's messages in one statement, in their order (a
        statement per message was a tenth of the server's CPU per job; issue #18)."""
        if messages:
            payloads = [self._encode(topic, message) for topic, message in messages]
            conn.exec_driver_sql(_NOTIFY, (payloads,))

    def _encode(self, topic: str, message: list[Event] | str) -> str:
        if isinstance(message, str):
            return json.dumps({"o": self.origin, "t": topic, "m": message})
        body: dict[str, Any] = {"o": self.origin, "t": topic}
        seqs = [e.seq for e in message if e.seq is not None]
        if seqs:
            body["s"] = max(seqs)
        live = [e.to_dict() for e in message if e.seq is None]
        if live:
            inline = json.dumps({**body, "e": live})
            if len(inline) <= _MAX_PAYLOAD:
                return inline
        return json.dumps(body)

    # Listening
    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="corral-pg-bus")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), 10)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()  # from here on no notification starts a read
        # Reads under way finish (briefly) rather than being cancelled: a read
        # cancelled while its pool opened a connection left that connection
        # open, never returned to the pool that is disposed next (a leaked
        # socket, found by CI as an unclosed-connection warning).
        if self._catching_up:
            _, late = await asyncio.wait(self._catching_up, timeout=STOP_WAIT)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            lost = asyncio.Event()
            try:
                self._conn = await asyncpg.connect(self._dsn)
                self._conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await self._conn.add_listener(topics.CHANNEL, self._on_notify)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("bus: cannot listen on PostgreSQL (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            self._connected.set()
            await lost.wait()
            self._connected.clear()
            log.warning("bus: lost the PostgreSQL listener connection; reconnecting")

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            data = json.loads(payload)
        except ValueError:
            return
        if data.get("o") == self.origin:
            return  # published locally at commit already
        topic = str(data.get("t", ""))
        if "m" in data:
            self.local.publish(topic, str(data["m"]))
            return
        if "e" in data:
            self.local.publish(topic, [Event.from_dict(e) for e in data["e"]])
        session_id = topics.session_of(topic)
        if "s" in data and session_id is not None:
            task = asyncio.create_task(self._catch_up(topic, session_id, int(data["s"])))
            self._catching_up.add(task)  # the loop keeps only a weak reference
            task.add_done_callback(self._catching_up.discard)

    async def _catch_up(self, topic: str, session_id: str, upto: int) -> None:
        lock = self._locks.setdefault(session_id, asyncio.Lock())
        try:
            async with lock:
                since = self._seen.get(topic, upto - 1)
                if upto <= since:
                    return
                events = await self._fetch(session_id, since)
                if events:
                    self.publish(topic, events)
        except Exception:  # a failed read is recovered by subscribers re-reading the log
            log.exception("bus: could not read new events of %s", session_id)
        finally:
            if not lock.locked():
                self._locks.pop(session_id, None)

    def _mark(self, topic: str, events: list[Event]) -> None:
        seqs = [e.seq for e in events if e.seq is not None]
        if not seqs:
            return
        self._seen[topic] = max(self._seen.get(topic, 0), max(seqs))
        self._seen.move_to_end(topic)
        if len(self._seen) > _SEEN_MAX:
            self._seen.popitem(last=False)
