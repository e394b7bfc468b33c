"""Server-sent events over a session's log.

Subscribe first, then back-fill from the database after the client's last
seq, then stream live, skipping seqs already sent and back-filling again on a
gap. A subscriber that overflows its buffer is disconnected; it reconnects
with Last-Event-ID and loses nothing. Events ready together (a back-fill
page, the events of one write) go to the client as one send. The response
itself (frames, keep-alive, disconnects) is ``corral.api.sse``."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping

from fastapi import Request

from corral.api.sse import EventStream, frame, message
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


async def follow(
    store: Store,
    session_id: str,
    *,
    since: int,
    buffer: int,
    job_id: str | None = None,
    internal: bool = False,
    poll: float = 5.0,
) -> AsyncIterator[list[Event]]:
    """Every event of the session after ``since``, once each, in seq order,
    then live ones; in batches, each what was ready at once (a back-fill page,
    the events of one write). With ``job_id``: only that job's, ending with its
    final state."""

    def wanted(ev: Event) -> bool:
        return (job_id is None or ev.job_id == job_id) and (internal or not ev.internal)

    def terminal(ev: Event) -> bool:
        return job_id is not None and ev.job_id == job_id and ev.payload.get("to") in TERMINAL

    async def ended(ev: Event) -> bool:
        """A stored terminal state is the end if the job is still there (an
        operator may have retried it since)."""
        if job_id is None or not terminal(ev):
            return False
        return (await store.jobs.get(job_id)).state in TERMINAL

    last = since
    with store.bus.subscribe(topics.session(session_id), maxsize=buffer) as sub:
        while True:
            # Back-fill everything committed after `last`.
            while True:
                batch = await store.events.list(session_id, since=last, limit=500, internal=True)
                out: list[Event] = []
                for ev in batch:
                    last = ev.seq or last
                    if wanted(ev):
                        out.append(ev)
                        if ev.type == "job.state" and await ended(ev):
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
                gap = False
                out = []
                for message in messages:
                    if not isinstance(message, list):
                        continue
                    for ev in message:
                        if ev.seq is None:
                            if wanted(ev):
                                out.append(ev)
                            continue
                        if ev.seq <= last:
                            continue
                        if ev.seq != last + 1:
                            gap = True
                            break
                        last = ev.seq
                        if wanted(ev):
                            out.append(ev)
                            # Live, just committed: the end (a retry is a later
                            # transaction). Not read again: a read per job's
                            # stream (issue #18).
                            if ev.type == "job.state" and terminal(ev):
                                yield out
                                return
                    if gap:
                        break
                if out:
                    yield out
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


def encode_all(events: list[Event]) -> bytes:
    """A batch of events as one write: a live batch reaches every subscriber
    in one send, not one per event (each send crosses the middleware and the
    socket; issue #18)."""
    if len(events) == 1:
        return encode(events[0])
    return b"".join([encode(ev) for ev in events])


def response(
    events: AsyncIterator[list[Event]], *, ping: float, streams: Streams
) -> EventStream[list[Event]]:
    """Batches of ``events`` as a server-sent event stream with keep-alive comments."""
    return EventStream(events, encode_all, ping=ping, streams=streams)


def response_of(
    messages: AsyncIterator[Mapping[str, str]], *, ping: float, streams: Streams
) -> EventStream[Mapping[str, str]]:
    """SSE ``messages`` (``data``, optional ``id`` and ``event``) with keep-alive comments."""
    return EventStream(messages, message, ping=ping, streams=streams)
