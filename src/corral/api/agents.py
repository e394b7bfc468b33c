"""Agent daemons over HTTP.

For people: status, start/stop/restart, reload, logs (JSON, and SSE as lines
arrive) and an SSE feed of status changes. For runners (runner key): the long
poll for the agents a runner hosts, and the report of what they do. The
database is between the two (store/agents.py), so any replica answers for any
agent, and a control plane that restarts leaves a remote runner's daemons
running."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from corral import redact
from corral.api import stream
from corral.api.deps import Reader, RunnerKey, Svc, Writer
from corral.api.runners import owned_runner, poll_wait
from corral.auth import Role
from corral.errors import ConfigError, Conflict, Forbidden, InvalidInput
from corral.models import Agent, AgentDetail, AgentLine, AgentsReloaded
from corral.protocol import (
    AgentPoll,
    AgentReport,
    AgentsReported,
    DesiredAgent,
    DesiredAgents,
    paths,
    topics,
)
from corral.store.agents import EMBEDDED, EMBEDDED_KEY, AgentRecord

router = APIRouter(tags=["agents"])

# A waiting poll claims again this often: an `embedded` agent whose host went
# away is taken over by another embedded runner.
RECHECK_SECONDS = 5.0
# How long a report trusts what the last one learnt of its runner (its
# registration and the agents it hosts) before reading it again.
HOST_CACHE_SECONDS = 5.0
START_WAIT = 10.0
RESTART_WAIT = 30.0


def _config(rec: AgentRecord) -> dict[str, Any]:
    data = dict(rec.config)
    data["env"] = dict.fromkeys(data.get("env", {}), "********")  # values may be secrets
    return data


@router.get("/agents", response_model=list[Agent])
async def list_agents(svc: Svc, who: Reader) -> list[dict[str, Any]]:
    """Every configured agent: status, pid, uptime, restarts, last exit code,
    runner, whether its runner is connected, messages handled in 24 h."""
    return [r.view() for r in await svc.store.agents.list()]


@router.get("/agents/{name}", response_model=AgentDetail)
async def get_agent(name: str, svc: Svc, who: Reader) -> dict[str, Any]:
    """One agent: status, its configuration (env values masked), last 200 lines."""
    rec = await svc.store.agents.get(name)
    return {**rec.view(), "config": _config(rec), "logs": await svc.store.agents.lines(name, 200)}


@router.post("/agents/reload", response_model=AgentsReloaded)
async def reload_agents(svc: Svc, who: Writer) -> dict[str, list[str]]:
    """Read the configuration again: new agents start, removed ones stop,
    changed ones restart, the rest keep running (also on SIGHUP)."""
    try:
        return await svc.reload_agents()
    except ConfigError as exc:
        raise InvalidInput(exc.message) from exc


async def _act(
    svc: Svc, name: str, action: str, done: Callable[[AgentRecord], bool], wait: float
) -> AgentRecord:
    """Record the action, then wait (up to ``wait`` seconds) until the host has
    applied it and ``done`` holds. Returns at once if the host is away."""
    with svc.store.bus.subscribe(topics.agent_state(name), maxsize=100) as sub:
        rec = await svc.store.agents.act(name, action)
        seq = rec.seq
        deadline = time.monotonic() + wait
        while rec.connected and not (rec.applied_seq >= seq and done(rec)):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await sub.get(timeout=min(remaining, 1.0))
            rec = await svc.store.agents.get(name)
    return rec


def _answer(rec: AgentRecord) -> Any:
    """200 once applied; 202 while the host has not applied it (yet)."""
    if rec.applied_seq < rec.seq:
        return JSONResponse(rec.view(), status_code=202)
    return rec.view()


@router.post(
    "/agents/{name}/start",
    response_model=Agent,
    responses={202: {"description": "Recorded; its runner applies it when it connects."}},
)
async def start_agent(name: str, svc: Svc, who: Writer) -> Any:
    """Start it (also out of ``fatal``); answers once its runner started it."""
    return _answer(await _act(svc, name, "start", lambda r: True, START_WAIT))


@router.post(
    "/agents/{name}/stop",
    response_model=Agent,
    responses={202: {"description": "Recorded; its runner applies it when it connects."}},
)
async def stop_agent(name: str, svc: Svc, who: Writer) -> Any:
    """Stop it and its whole process tree (stop_signal, SIGKILL after stop_timeout)."""
    rec = await svc.store.agents.get(name)
    wait = float(rec.config.get("stop_timeout", 10.0)) + START_WAIT
    stopped = ("stopped", "exited", "fatal")
    return _answer(await _act(svc, name, "stop", lambda r: r.status in stopped, wait))


@router.post("/agents/{name}/restart", response_model=Agent)
async def restart_agent(name: str, svc: Svc, who: Writer) -> dict[str, Any]:
    """Stop, start, and answer once the new process runs (409 saying why if it
    does not, or if its runner is not connected)."""
    rec = await svc.store.agents.get(name)
    wait = float(rec.config.get("stop_timeout", 10.0)) + RESTART_WAIT
    rec = await _act(svc, name, "restart", lambda r: r.status != "starting", wait)
    if not rec.connected:
        where = f"runner {rec.host or rec.runner!r}"
        raise Conflict(f"agent {name}: {where} is not connected; it restarts when it connects")
    if rec.applied_seq < rec.seq or rec.status != "running":
        raise Conflict(f"agent {name} is {rec.status}: {rec.message or 'not running'}")
    return rec.view()


@router.get("/agents/{name}/logs", response_model=list[AgentLine])
async def agent_logs(
    name: str, svc: Svc, who: Reader, n: Annotated[int, Query(ge=0, le=1000)] = 200
) -> list[dict[str, Any]]:
    """The last ``n`` lines (``offset``, ``at``, ``stream``, ``line``) as stored.
    The live feeds hear a line a moment before it is stored: one just streamed
    may not be here yet."""
    return await svc.store.agents.lines(name, n)


@router.get("/sse/agents/{name}/logs")
async def follow_logs(
    name: str,
    request: Request,
    svc: Svc,
    who: Reader,
    n: Annotated[int, Query(ge=0, le=1000)] = 0,
) -> Response:
    """Lines as they are written (``id`` is the line offset: reconnect with
    Last-Event-ID to resume); first the last ``n`` lines."""
    await svc.store.agents.get(name)
    after = stream.last_event_id(request, 0) if request.headers.get("last-event-id") else None

    async def lines() -> AsyncIterator[dict[str, Any]]:
        async for item in _follow(svc, name, after, n):
            yield {"id": str(item["offset"]), "data": json.dumps(item)}

    return _sse(lines(), svc)


class MessageCreate(BaseModel):
    """A message for an agent daemon."""

    model_config = {"extra": "forbid"}

    text: str = Field(min_length=1, max_length=65_536, description="What to tell it.")


class MessageQueued(BaseModel):
    id: str = Field(description="The message's id (its stdin line carries it).")
    agent: str
    seq: int = Field(description="Its number: messages are written in this order.")


@router.post("/agents/{name}/message", status_code=202, response_model=MessageQueued)
async def message_agent(name: str, body: MessageCreate, svc: Svc, who: Writer) -> dict[str, Any]:
    """Send an agent daemon configured with ``stdin = "messages"`` a message: its
    runner writes ``{"corral": {"message": {"id", "text"}}}`` as a line to its stdin
    (in order, once it runs; 409 if it does not take messages)."""
    return await svc.store.agents.send(name, body.text)


@router.get("/sse/agents/{name}/messages")
async def follow_messages(
    name: str,
    request: Request,
    svc: Svc,
    who: Reader,
    n: Annotated[int, Query(ge=0, le=1000)] = 0,
) -> Response:
    """The replies of an agent daemon as it prints them (stdout lines
    ``{"corral": {"reply": ...}}``): events ``reply`` with ``{reply, at, offset}``
    (``id`` is the line offset: reconnect with Last-Event-ID); first those among
    the last ``n`` lines."""
    await svc.store.agents.get(name)
    after = stream.last_event_id(request, 0) if request.headers.get("last-event-id") else None

    async def replies() -> AsyncIterator[dict[str, Any]]:
        async for item in _follow(svc, name, after, n):
            reply = _reply(item)
            if reply is not None:
                data = {"reply": reply, "at": item["at"], "offset": item["offset"]}
                yield {"id": str(item["offset"]), "event": "reply", "data": json.dumps(data)}

    return _sse(replies(), svc)


def _reply(item: dict[str, Any]) -> Any:
    """The reply a log line carries, or None."""
    line = item["line"]
    if item["stream"] != "stdout" or not line.startswith('{"corral"'):
        return None
    try:
        data = json.loads(line)
        return data["corral"]["reply"]
    except (ValueError, TypeError, KeyError):
        return None


async def _follow(svc: Svc, name: str, after: int | None, n: int) -> AsyncIterator[dict[str, Any]]:
    """An agent's log lines from ``after`` (None: the last ``n``), then as they come."""
    agents = svc.store.agents
    with svc.store.bus.subscribe(topics.agent_log(name), maxsize=svc.settings.sse_buffer) as sub:
        if after is None:
            sent = (await agents.get(name)).log_offset
            backlog = await agents.lines(name, n) if n else []
        else:
            sent, backlog = after, await agents.lines(name, after=after)
        for item in backlog:
            yield item
        if backlog:
            sent = max(sent, backlog[-1]["offset"])
        while not sub.overflowed:
            got: list[Any] = await sub.get(timeout=svc.settings.sse_ping)
            fresh: list[dict[str, Any]] = []
            gap = not got  # a quiet while: look in the database (a lost notification)
            for message in got:
                inline = json.loads(message).get("lines")  # else {"upto": N}: too big
                expect = fresh[-1]["offset"] if fresh else sent
                new = [x for x in inline or () if x["offset"] > expect]
                if inline is None or (new and new[0]["offset"] != expect + 1):
                    gap = True
                    break
                fresh += new
            if gap:
                fresh = await agents.lines(name, after=sent)
            for item in fresh:
                if item["offset"] > sent:
                    sent = item["offset"]
                    yield item


@router.get("/sse/status")
async def follow_status(svc: Svc, who: Reader) -> Response:
    """Every agent as it is now (one ``agent`` event each, as in ``GET
    /agents``), then its status changes as they happen (``status`` events).
    The feed listens before it reads, so no change falls between the two."""

    async def changes() -> AsyncIterator[dict[str, Any]]:
        with svc.store.bus.subscribe(topics.AGENTS, maxsize=svc.settings.sse_buffer) as sub:
            for rec in await svc.store.agents.list():
                yield {"event": "agent", "data": json.dumps(rec.view())}
            while not sub.overflowed:
                for change in await sub.get(timeout=svc.settings.sse_ping):
                    yield {"event": "status", "data": change}

    return _sse(changes(), svc)


def _sse(messages: AsyncIterator[Mapping[str, str]], svc: Svc) -> Response:
    return stream.response_of(messages, ping=svc.settings.sse_ping, streams=svc.streams)


# -- the runner side ------------------------------------------------------------------


@router.post(paths.AGENTS, response_model=DesiredAgents)
async def poll_agents(
    runner_id: str, body: AgentPoll, request: Request, svc: Svc, who: RunnerKey
) -> DesiredAgents:
    """Long-poll (up to ``wait`` seconds) for the agents this runner hosts:
    answers when they differ from ``version``."""
    runner = await owned_runner(runner_id, svc, who)
    if EMBEDDED in body.aliases and who.name != EMBEDDED_KEY and who.role is not Role.ADMIN:
        raise Forbidden(f"only the embedded runner of `corral serve` hosts {EMBEDDED!r} agents")
    deadline = time.monotonic() + min(body.wait, poll_wait(svc.settings))
    with svc.store.bus.subscribe(
        topics.AGENTS_DESIRED, topics.SERVER_STOPPING, maxsize=1000
    ) as sub:
        while True:
            desired = [
                DesiredAgent.model_validate(a)
                for a in await svc.store.agents.desired(runner.name, body.aliases, body.hosting)
            ]
            # log_offset moves with every line: not a change for the host.
            fixed = [a.model_dump(exclude={"log_offset"}) for a in desired]
            digest = hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()
            remaining = deadline - time.monotonic()
            # Stopping: answer now, the runner's next poll goes to another replica.
            stop = svc.stopping or await request.is_disconnected()
            if digest != body.version or remaining <= 0 or stop:
                return DesiredAgents(version=digest, agents=desired)
            await sub.get(timeout=min(remaining, RECHECK_SECONDS))


@router.post(paths.AGENTS_REPORT, response_model=AgentsReported)
async def report_agents(
    runner_id: str, body: AgentReport, svc: Svc, who: RunnerKey
) -> AgentsReported:
    """Status, status changes, log lines and message counts of the agents this
    runner hosts. Names it does not host are listed back in ``not_hosted``."""
    now = time.monotonic()
    for x in body.lines:  # an agent printing its own token: known secrets are not kept
        x.line = redact.text(x.line)
    known = svc.agent_hosts.get((runner_id, who.key_id))
    if known is not None and known[0] > now:
        name, hosted = known[1], known[2]
        # Lines of agents it is known to host go to this replica's followers
        # now; storing them (and telling other replicas) follows.
        by_agent: dict[str, list[dict[str, Any]]] = {}
        for x in body.lines:
            if x.agent in hosted:
                by_agent.setdefault(x.agent, []).append(x.model_dump())
        for agent, batch in by_agent.items():
            svc.store.bus.publish(topics.agent_log(agent), json.dumps({"lines": batch}))
    else:
        name = (await owned_runner(runner_id, svc, who)).name
    not_hosted, hosted = await svc.store.agents.report(
        name,
        {k: v.model_dump() for k, v in body.states.items()},
        [c.model_dump() for c in body.changes],
        [x.model_dump() for x in body.lines],
        body.messages,
        release=body.release,
    )
    if len(svc.agent_hosts) > 10_000:
        svc.agent_hosts.clear()
    if body.release:
        svc.agent_hosts.pop((runner_id, who.key_id), None)
    else:
        svc.agent_hosts[(runner_id, who.key_id)] = (now + HOST_CACHE_SECONDS, name, hosted)
    return AgentsReported(not_hosted=not_hosted)
