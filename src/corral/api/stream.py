"""Server-sent events over a session's log.

Subscribe first, then back-fill from the database after the client's last
seq, then stream live, skipping seqs already sent and back-filling again on a
gap. A subscriber that overflows its buffer is disconnected; it reconnects
with Last-Event-ID and loses nothing. Events ready together (a back-fill
page, the events of one write) go to the client as one send; live ones that
continue the log go from the bus publish straight to the client (``Direct``).
The response itself (frames, keep-alive, disconnects) is ``corral.api.sse``."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from typing import Literal

from fastapi import Request

from corral.api.sse import Direct, EventStream, frame, message
from corral.bus import BusMessage
from corral.errors import BadRequest
from corral.jobs import TERMINAL
from corral.models import INT32_MAX, Event
from corral.protocol import topics
from corral.services import Streams
from corral.store import Store

# Every subscriber of a session receives the same Event objects from the bus:
# encode each event's frame once, not once per subscriber.
_FRAMES: OrderedDict[tuple[str, str], bytes] = OrderedDict()
_FRAMES_MAX = 4096


def encode(event: Event) -> bytes:
    """``event`` as an SSE frame (its seq is the frame's id)."""
    key = (event.session_id, event.event_id)
    data = _FRAMES.get(key)
    if data is None:
        data = frame(event.to_json(), id=None if event.seq is None else str(event.seq))
        _FRAMES[key] = data
        if len(_FRAMES) > _FRAMES_MAX:
            _FRAMES.popitem(last=False)
    return data


def _wanted(ev: Event, job_id: str | None, internal: bool) -> bool:
    return (job_id is None or ev.job_id == job_id) and (internal or not ev.internal)


def _final(ev: Event, job_id: str | None) -> bool:
    """``ev`` is the followed job's move to a final state."""
    return (
        job_id is not None
        and ev.job_id == job_id
        and ev.type == "job.state"
        and ev.payload.get("to") in TERMINAL
    )


Stop = Literal["gap", "end"] | None


def _take(
    events: list[Event], last: int, job_id: str | None, internal: bool
) -> tuple[list[Event], int, Stop]:
    """What of one live write goes to a client that has had up to seq
    ``last``: ``(out, last, stop)``; ``stop`` is "gap" (a seq is missing:
    back to the log) or "end" (the job's final state, the last of ``out``)."""
    out: list[Event] = []
    for ev in events:
        if ev.seq is None:
            if _wanted(ev, job_id, internal):
                out.append(ev)
            continue
        if ev.seq <= last:
            continue
        if ev.seq != last + 1:
            return out, last, "gap"
        last = ev.seq
        if _wanted(ev, job_id, internal):
            out.append(ev)
            # Live, just committed: the end (a retry is a later transaction).
            # Not read again: a read per job's stream (issue #18).
            if _final(ev, job_id):
                return out, last, "end"
    return out, last, None


async def follow(
    store: Store,
    session_id: str,
    *,
    since: int,
    buffer: int,
    job_id: str | None = None,
    internal: bool = False,
    poll: float = 5.0,
    direct: Direct[list[Event]] | None = None,
) -> AsyncIterator[list[Event]]:
    """Every event of the session after ``since``, once each, in seq order,
    then live ones; in batches, each what was ready at once (a back-fill page,
    the events of one write). With ``job_id``: only that job's, ending with its
    final state.

    With ``direct``: while this generator waits for live events, a write that
    continues the log without a gap or an end goes to ``direct.write`` from
    the publisher's call, not through a wake-up of the stream's task (one
    task step per subscriber and event was most of an SSE delivery's CPU;
    issue #18). Anything else takes the path above."""

    async def ended(ev: Event) -> bool:
        """A stored terminal state is the end if the job is still there (an
        operator may have retried it since)."""
        if job_id is None or not _final(ev, job_id):
            return False
        return (await store.jobs.get(job_id)).state in TERMINAL

    last = since

    def deliver(message: BusMessage) -> bool:
        nonlocal last
        write = direct.write if direct is not None else None
        if write is None or not isinstance(message, list):
            return False
        out, to, stop = _take(message, last, job_id, internal)
        if stop is not None or (out and not write(out)):
            return False
        last = to
        return True

    with store.bus.subscribe(topics.session(session_id), maxsize=buffer) as sub:
        if direct is not None:
            sub.deliver = deliver
        while True:
            # Back-fill everything committed after `last`.
            while True:
                batch = await store.events.list(session_id, since=last, limit=500, internal=True)
                out: list[Event] = []
                for ev in batch:
                    last = ev.seq or last
                    if _wanted(ev, job_id, internal):
                        out.append(ev)
                        if await ended(ev):
                            yield out
                            return
                if out:
                    yield out
                if len(batch) < 500:
                    break
            # Live, until a gap or an overflow sends us back to the log.
            while True:
                messages = await sub.get(timeout=poll)
                if sub.overflowed:
                    return
                stop: Stop = None
                out = []
                for message in messages:
                    if isinstance(message, list):
                        got, last, stop = _take(message, last, job_id, internal)
                        out += got
                        if stop is not None:
                            break
                if out:
                    yield out
                if stop == "end":
                    return
                if stop is not None or not messages:
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


def encode_all(events: list[Event]) -> bytes:
    """A batch of events as one write: a live batch reaches every subscriber
    in one send, not one per event (each send crosses the middleware and the
    socket; issue #18)."""
    if len(events) == 1:
        return encode(events[0])
    return b"".join([encode(ev) for ev in events])


def response(
    store: Store,
    session_id: str,
    *,
    since: int,
    buffer: int,
    ping: float,
    streams: Streams,
    job_id: str | None = None,
    internal: bool = False,
) -> EventStream[list[Event]]:
    """``follow`` as a server-sent event stream with keep-alive comments."""
    direct: Direct[list[Event]] = Direct()
    events = follow(
        store,
        session_id,
        since=since,
        buffer=buffer,
        job_id=job_id,
        internal=internal,
        direct=direct,
    )
    return EventStream(events, encode_all, ping=ping, streams=streams, direct=direct)


def response_of(
    messages: AsyncIterator[Mapping[str, str]], *, ping: float, streams: Streams
) -> EventStream[Mapping[str, str]]:
    """SSE ``messages`` (``data``, optional ``id`` and ``event``) with keep-alive comments."""
    return EventStream(messages, message, ping=ping, streams=streams)
