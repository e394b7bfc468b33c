"""Sessions: conversations whose turns are jobs; their event log and stream."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from corral.api import stream
from corral.api.deps import Reader, Svc, Writer
from corral.api.ids import SessionId
from corral.api.schemas import EventPage, SessionCreate, TurnCreate
from corral.errors import BadRequest
from corral.intake.submit import submit
from corral.models import INT32_MAX, JobAccepted, Session, SessionDetail

router = APIRouter(tags=["sessions"])


@router.post("/sessions", status_code=201, response_model=Session)
async def create_session(body: SessionCreate, svc: Svc, who: Writer) -> Session:
    """A new, empty session."""
    return await svc.store.sessions.create(body.title)


@router.get("/sessions", response_model=list[Session])
async def list_sessions(
    svc: Svc,
    who: Reader,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[
        str | None, Query(max_length=64, description="The last session id of the previous page.")
    ] = None,
) -> list[Session]:
    """Sessions, newest first (keyset pages: pass the last id as ``before``)."""
    if before is not None:
        before = await svc.store.sessions.resolve(before)
    return [r.session for r in await svc.store.sessions.page(limit=limit, before=before)]


@router.get("/sessions/{session_id}", response_model=SessionDetail)
async def get_session(svc: Svc, who: Reader, session_id: SessionId) -> SessionDetail:
    """A session and its turns."""
    session = await svc.store.sessions.get(session_id)
    jobs = await svc.store.jobs.list(session_id=session_id, limit=500)
    return SessionDetail(**session.model_dump(), jobs=sorted(jobs, key=lambda j: j.turn))


@router.post(
    "/sessions/{session_id}/turns",
    status_code=202,
    response_model=JobAccepted,
    responses={200: {"model": JobAccepted, "description": "A known idempotency_key: that job."}},
)
async def add_turn(
    body: TurnCreate, svc: Svc, who: Writer, session_id: SessionId, response: Response
) -> JobAccepted:
    """A follow-up turn (a job body); it stays on the session's provider unless it names
    another."""
    if body.session_id not in (None, session_id):
        raise BadRequest("session_id in the body differs from the path")
    spec = body.model_copy(update={"session_id": session_id})
    job, created = await submit(svc, spec)
    if not created:
        response.status_code = 200
    return JobAccepted(job_id=job.id, session_id=job.session_id, state=job.state, created=created)


@router.get("/sessions/{session_id}/events", response_model=EventPage)
async def session_events(
    svc: Svc,
    who: Reader,
    session_id: SessionId,
    since: Annotated[int, Query(ge=0, le=INT32_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
    internal: bool = False,
) -> EventPage:
    """The session's event log after seq `since`."""
    await svc.store.sessions.get(session_id)
    items = await svc.store.events.list(session_id, since=since, limit=limit, internal=internal)
    next_since = items[-1].seq if items and items[-1].seq else since
    return EventPage(events=[e.to_dict() for e in items], next_since=next_since)


@router.get("/sessions/{session_id}/stream")
async def session_stream(
    request: Request,
    svc: Svc,
    who: Reader,
    session_id: SessionId,
    since: Annotated[int, Query(ge=0, le=INT32_MAX)] = 0,
    internal: bool = False,
) -> Response:
    """SSE: every event after Last-Event-ID (or ``since``), then live ones."""
    await svc.store.sessions.get(session_id)
    return stream.response(
        svc.store,
        session_id,
        since=stream.last_event_id(request, since),
        buffer=svc.settings.sse_buffer,
        internal=internal,
        ping=svc.settings.sse_ping,
        streams=svc.streams,
    )
