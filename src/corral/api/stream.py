"""Server-sent events over a session's log.

Subscribe first, then back-fill from the database after the client's last
seq, then stream live, skipping seqs already sent and back-filling again on a
gap. A subscriber that overflows its buffer is disconnected; it reconnects
with Last-Event-ID and loses nothing."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from sse_starlette import EventSourceResponse

from corral.errors import BadRequest
from corral.jobs import TERMINAL
from corral.models import INT32_MAX, Event
from corral.protocol import topics
from corral.store import Store

# Every subscriber of a session receives the same Event objects from the bus:
# encode each once, not once per subscriber.
_ENCODED: OrderedDict[tuple[str, str], str] = OrderedDict()
_ENCODED_MAX = 4096


def encode(event: Event) -> str:
    key = (event.session_id, event.event_id)
    text = _ENCODED.get(key)
    if text is None:
        text = event.to_json()
        _ENCODED[key] = text
        if len(_ENCODED) > _ENCODED_MAX:
            _ENCODED.popitem(last=False)
    return text


def sse(event: Event) -> dict[str, Any]:
    message: dict[str, Any] = {"data": encode(event)}
    if event.seq is not None:
        message["id"] = str(event.seq)
    return message


async def follow(
    store: Store,
    session_id: str,
    *,
    since: int,
    buffer: int,
    job_id: str | None = None,
    internal: bool = False,
    poll: float = 5.0,
) -> AsyncIterator[Event]:
    """Every event of the session after ``since``, once each, in seq order,
    then live ones. With ``job_id``: only that job's, ending with its final state."""

    def wanted(ev: Event) -> bool:
        return (job_id is None or ev.job_id == job_id) and (internal or not ev.internal)

    async def ended(ev: Event) -> bool:
        if job_id is None or ev.type != "job.state" or ev.job_id != job_id:
            return False
        if ev.payload.get("to") not in TERMINAL:
            return False
        return (await store.jobs.get(job_id)).state in TERMINAL

    last = since
    with store.bus.subscribe(topics.session(session_id), maxsize=buffer) as sub:
        while True:
            # Back-fill everything committed after `last`.
            while True:
                batch = await store.events.list(session_id, since=last, limit=500, internal=True)
                for ev in batch:
                    last = ev.seq or last
                    if wanted(ev):
                        yield ev
                        if await ended(ev):
                            return
                if len(batch) < 500:
                    break
            # Live, until a gap or an overflow sends us back to the log.
            while True:
                messages = await sub.get(timeout=poll)
                if sub.overflowed:
                    return
                gap = False
                for message in messages:
                    if not isinstance(message, list):
                        continue
                    for ev in message:
                        if ev.seq is None:
                            if wanted(ev):
                                yield ev
                            continue
                        if ev.seq <= last:
                            continue
                        if ev.seq != last + 1:
                            gap = True
                            break
                        last = ev.seq
                        if wanted(ev):
                            yield ev
                            if await ended(ev):
                                return
                    if gap:
                        break
                if gap or not messages:
                    break  # back-fill (on timeout too: cheap insurance)


def last_event_id(request: Request, since: int) -> int:
    """Where a (re)connecting client resumes: its Last-Event-ID, or ``since``."""
    raw = request.headers.get("last-event-id")
    if raw is None or not raw.strip():
        return since
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest("Last-Event-ID must be an event seq (an integer)") from None
    if not 0 <= value <= INT32_MAX:
        raise BadRequest(f"Last-Event-ID must be an event seq, 0 to {INT32_MAX}")
    return max(value, since)


def response(events: AsyncIterator[Event], *, ping: float) -> EventSourceResponse:
    """``events`` as a server-sent event stream with keep-alive comments."""

    async def messages() -> AsyncIterator[dict[str, Any]]:
        async for ev in events:
            yield sse(ev)

    return response_of(messages(), ping=ping)


def response_of(messages: AsyncIterator[dict[str, Any]], *, ping: float) -> EventSourceResponse:
    """SSE ``messages`` (``data``, optional ``id`` and ``event``) with keep-alive comments."""
    return EventSourceResponse(
        messages,
        ping=int(max(1, ping)),
        send_timeout=30,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
