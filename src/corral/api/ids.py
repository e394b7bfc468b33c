"""Job and session ids in paths and filters: a whole id, or a unique prefix
of 4 or more hex digits (as `corral jobs ls` shows them); an ambiguous
prefix is a 409 naming the candidates.

Routes list these after their credential (``who``): the key is checked
first, and a runner key (which may read only the jobs its runner holds)
gets no prefix lookup at all, so no other job's id is revealed to it."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query

from corral.api.deps import Svc, principal
from corral.auth import Principal, Role

_HELP = "The id, or a unique prefix of it (4 or more hex digits)."


async def _job_id(
    job_id: Annotated[str, Path(description=_HELP)],
    svc: Svc,
    who: Annotated[Principal, Depends(principal)],
) -> str:
    if who.role is Role.RUNNER:
        return job_id
    return await svc.store.jobs.resolve(job_id)


async def _session_id(
    session_id: Annotated[str, Path(description=_HELP)],
    svc: Svc,
    who: Annotated[Principal, Depends(principal)],
) -> str:
    if who.role is Role.RUNNER:
        return session_id
    return await svc.store.sessions.resolve(session_id)


async def _session_filter(
    svc: Svc,
    who: Annotated[Principal, Depends(principal)],
    session_id: Annotated[str | None, Query(description="Only this session's. " + _HELP)] = None,
) -> str | None:
    if session_id is None or who.role is Role.RUNNER:
        return session_id
    return await svc.store.sessions.resolve(session_id)


async def _job_filter(
    svc: Svc,
    who: Annotated[Principal, Depends(principal)],
    job_id: Annotated[str | None, Query(description="Only this job's. " + _HELP)] = None,
) -> str | None:
    if job_id is None or who.role is Role.RUNNER:
        return job_id
    return await svc.store.jobs.resolve(job_id)


JobId = Annotated[str, Depends(_job_id)]
SessionId = Annotated[str, Depends(_session_id)]
SessionFilter = Annotated[str | None, Depends(_session_filter)]
JobFilter = Annotated[str | None, Depends(_job_filter)]
