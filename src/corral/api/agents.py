"""Agent daemons over HTTP: status, start/stop/restart, reload, logs (JSON
and SSE straight from the pipes), and an SSE feed of status changes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from sse_starlette import EventSourceResponse

from corral.api import stream
from corral.api.deps import Reader, Svc, Writer
from corral.daemons import STATUS_TOPIC, Supervisor, log_topic
from corral.errors import ConfigError, CorralError, InvalidInput

router = APIRouter(tags=["agents"])


class AgentsDisabled(CorralError):
    """Agent daemons run inside `corral serve` (this app has no supervisor)."""

    status = 404
    code = "agents_disabled"


def _sup(svc: Svc) -> Supervisor:
    if svc.agents is None:
        raise AgentsDisabled()
    return svc.agents


def _config(sup: Supervisor, name: str) -> dict[str, Any]:
    data = sup.get(name).settings.model_dump(mode="json")
    data["env"] = dict.fromkeys(data["env"], "********")  # values may be secrets
    return data


@router.get("/agents")
async def list_agents(svc: Svc, who: Reader) -> list[dict[str, Any]]:
    """Every configured agent: status, pid, uptime, restarts, last exit code."""
    return [d.view() for d in _sup(svc).daemons.values()]


@router.get("/agents/{name}")
async def get_agent(name: str, svc: Svc, who: Reader) -> dict[str, Any]:
    """One agent: status, its configuration (env values masked), last 200 lines."""
    sup = _sup(svc)
    return {**sup.get(name).view(), "config": _config(sup, name), "logs": sup.tail(name, 200)}


@router.post("/agents/reload")
async def reload_agents(svc: Svc, who: Writer) -> dict[str, list[str]]:
    """Read the configuration again: new agents start, removed ones stop,
    changed ones restart, the rest keep running (also on SIGHUP)."""
    try:
        wanted = svc.reload_agents()
    except ConfigError as exc:
        raise InvalidInput(exc.message) from exc
    return await _sup(svc).reload(wanted)


@router.post("/agents/{name}/start")
async def start_agent(name: str, svc: Svc, who: Writer) -> dict[str, Any]:
    return (await _sup(svc).start_agent(name)).view()


@router.post("/agents/{name}/stop")
async def stop_agent(name: str, svc: Svc, who: Writer) -> dict[str, Any]:
    """Stop it and its whole process tree (stop_signal, SIGKILL after stop_timeout)."""
    return (await _sup(svc).stop_agent(name)).view()


@router.post("/agents/{name}/restart")
async def restart_agent(name: str, svc: Svc, who: Writer) -> dict[str, Any]:
    """Stop, start, and answer once the new process runs (409 saying why if it does not)."""
    return (await _sup(svc).restart_agent(name)).view()


@router.get("/agents/{name}/logs")
async def agent_logs(
    name: str, svc: Svc, who: Reader, n: Annotated[int, Query(ge=0, le=1000)] = 200
) -> list[dict[str, Any]]:
    """The last ``n`` lines (``offset``, ``at``, ``stream``, ``line``)."""
    return _sup(svc).tail(name, n)


@router.get("/sse/agents/{name}/logs")
async def follow_logs(
    name: str,
    request: Request,
    svc: Svc,
    who: Reader,
    n: Annotated[int, Query(ge=0, le=1000)] = 0,
) -> EventSourceResponse:
    """Lines as they are written (``id`` is the line offset: reconnect with
    Last-Event-ID to resume); first the last ``n`` lines."""
    sup = _sup(svc)
    sup.get(name)
    after = stream.last_event_id(request, 0) if request.headers.get("last-event-id") else None

    async def lines() -> AsyncIterator[dict[str, Any]]:
        with sup.bus.subscribe(log_topic(name), maxsize=svc.settings.sse_buffer) as sub:
            sent = 0
            for item in sup.tail(name, n, after=after):
                sent = item["offset"]
                yield {"id": str(item["offset"]), "data": json.dumps(item)}
            while not sub.overflowed:
                got: list[Any] = await sub.get(timeout=svc.settings.sse_ping)
                for item in got:
                    if item["offset"] > sent:
                        sent = item["offset"]
                        yield {"id": str(sent), "data": json.dumps(item)}

    return _sse(lines(), svc)


@router.get("/sse/status")
async def follow_status(svc: Svc, who: Reader) -> EventSourceResponse:
    """Status changes of every agent, as they happen."""
    sup = _sup(svc)

    async def changes() -> AsyncIterator[dict[str, Any]]:
        with sup.bus.subscribe(STATUS_TOPIC, maxsize=svc.settings.sse_buffer) as sub:
            while not sub.overflowed:
                changes_now: list[Any] = await sub.get(timeout=svc.settings.sse_ping)
                for change in changes_now:
                    yield {"event": "status", "data": json.dumps(change)}

    return _sse(changes(), svc)


def _sse(messages: AsyncIterator[dict[str, Any]], svc: Svc) -> EventSourceResponse:
    return EventSourceResponse(
        messages,
        ping=int(max(1, svc.settings.sse_ping)),
        send_timeout=30,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
