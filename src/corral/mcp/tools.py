"""The operator MCP server's tools: each one call (or a few) of the Python
client, so the tools do exactly what the API does with the caller's key, and
a refusal is the API's own message.

Each tool declares the permission it needs (``read``, ``write``, ``admin``,
as the API's roles grant them): a viewer key lists only the ``read`` tools.
The list of ``TOOLS`` is what the server registers and what the docs' tool
table is generated from (docs/_reference.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context
from pydantic import Field

from corral.client import AsyncClient, RunTimeout
from corral.models import Event

Permission = Literal["read", "write", "admin"]
Json = dict[str, Any]

# The caller's client: the server sets it (http.py, stdio.py) and tools take it here.
ClientOf = Callable[[Context], Awaitable[AsyncClient]]

JobId = Annotated[str, Field(description="The job's id, or a unique prefix (4+ hex digits).")]
Prompt = Annotated[str | None, Field(description="What the agent should do (Markdown).")]
Command = Annotated[
    str | None, Field(description="A shell command instead of a prompt (runs with `sh -c`).")
]
Provider = Annotated[
    str | None, Field(description="The provider to run it on (default: routing decides).")
]

# A wait longer than this would outlive most MCP clients' tool-call timeouts.
MAX_WAIT = 600.0


@dataclass(frozen=True)
class Tool:
    fn: Callable[..., Awaitable[Any]]
    permission: Permission
    title: str

    @property
    def name(self) -> str:
        return self.fn.__name__

    @property
    def read_only(self) -> bool:
        return self.permission == "read"


TOOLS: list[Tool] = []


def tool(permission: Permission, title: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        TOOLS.append(Tool(fn, permission, title))
        return fn

    return register


async def client(ctx: Context) -> AsyncClient:
    """The client of the key that made this call (``CorralMCP.client_of``)."""
    of: ClientOf = ctx.mcp_server.client_of  # type: ignore[attr-defined]
    return await of(ctx)


def _json(item: Any) -> Any:
    if isinstance(item, list):
        return [_json(i) for i in item]
    if isinstance(item, Event):
        return item.to_dict()
    dump = getattr(item, "model_dump", None)
    return dump(mode="json") if dump is not None else item


def _fields(**fields: Any) -> Json:
    return {k: v for k, v in fields.items() if v is not None}


# -- jobs -----------------------------------------------------------------------------


@tool("write", "Submit a job")
async def submit_job(
    ctx: Context,
    prompt: Prompt = None,
    command: Command = None,
    provider: Provider = None,
    repo: Annotated[
        str | None, Field(description="A git repository (absolute path or URL) to work in.")
    ] = None,
    base: Annotated[str | None, Field(description="The branch or commit to start from.")] = None,
    priority: Annotated[int | None, Field(ge=0, le=9, description="0 is most urgent.")] = None,
    labels: Annotated[list[str] | None, Field(description="Labels for the job.")] = None,
    title: Annotated[str | None, Field(description="A short title.")] = None,
    timeout: Annotated[
        float | None, Field(gt=0, description="Seconds the job may run before it is stopped.")
    ] = None,
    session_id: Annotated[
        str | None, Field(description="Run as the next turn of this session.")
    ] = None,
    idempotency_key: Annotated[
        str | None, Field(description="Submitting the same key again returns that job.")
    ] = None,
) -> Json:
    """Submit a job: a prompt for an agent (routing picks the provider unless
    `provider` names one) or a shell `command`. Answers at once with the job's
    id; follow it with wait_job, get_job and job_logs."""
    c = await client(ctx)
    fields = _fields(
        preferred_ai=provider,
        repo=repo,
        base=base,
        priority=priority,
        labels=labels,
        title=title,
        timeout=timeout,
        session_id=session_id,
        idempotency_key=idempotency_key,
    )
    accepted = await c.submit(prompt, command=command, source="mcp", **fields)
    return _json(accepted)  # type: ignore[no-any-return]


@tool("read", "Get a job")
async def get_job(ctx: Context, job_id: JobId) -> Json:
    """One job: state, attempt, result or error, usage, cost, timings, and
    `waiting_for` when it waits for a person to answer a question."""
    return _json(await (await client(ctx)).get(job_id))  # type: ignore[no-any-return]


@tool("read", "List jobs")
async def list_jobs(
    ctx: Context,
    state: Annotated[
        list[Literal["queued", "assigned", "running", "done", "failed", "cancelled"]] | None,
        Field(description="Only jobs in these states."),
    ] = None,
    session_id: Annotated[str | None, Field(description="Only this session's jobs.")] = None,
    limit: Annotated[int, Field(ge=1, le=500, description="At most this many.")] = 20,
    before: Annotated[
        str | None, Field(description="The id of the last job of the previous page.")
    ] = None,
) -> Json:
    """Jobs, newest first (id, state, provider, title, attempt, timings)."""
    jobs = await (await client(ctx)).list(
        state=list(state or []), session_id=session_id, limit=limit, before=before
    )
    return {
        "jobs": _json(jobs),
        "next_before": jobs[-1].id if len(jobs) == limit else None,
    }


@tool("read", "Wait for a job")
async def wait_job(
    ctx: Context,
    job_id: JobId,
    timeout: Annotated[
        float, Field(gt=0, le=MAX_WAIT, description="Seconds to wait at most.")
    ] = 60.0,
) -> Json:
    """Wait until the job ends (done, failed, cancelled) or `timeout` passes;
    answers the job and `ended` (false: it still runs, wait again)."""
    c = await client(ctx)
    job_id = (await c.get(job_id)).id  # the whole id of a prefix
    try:
        job = await c.wait(job_id, timeout=timeout)
    except RunTimeout:
        return {"ended": False, "job": _json(await c.get(job_id))}
    return {"ended": True, "job": _json(job)}


@tool("write", "Cancel a job")
async def cancel_job(ctx: Context, job_id: JobId) -> Json:
    """Cancel a job; a running one has its whole process tree stopped."""
    return _json(await (await client(ctx)).cancel(job_id))  # type: ignore[no-any-return]


@tool("write", "Retry a job")
async def retry_job(ctx: Context, job_id: JobId) -> Json:
    """Run an ended (failed or cancelled) job once more."""
    return _json(await (await client(ctx)).retry(job_id))  # type: ignore[no-any-return]


@tool("read", "A job's output and events")
async def job_logs(
    ctx: Context,
    job_id: JobId,
    lines: Annotated[int, Field(ge=1, le=5000, description="At most this many.")] = 100,
    since: Annotated[
        int | None,
        Field(ge=0, description="Answer the events after this seq instead of the last lines."),
    ] = None,
) -> Json:
    """The job's last `lines` lines of output (shell lines, the agent's
    messages); with `since`, its events after that seq (pass `next_since`
    back to read on)."""
    events = await (await client(ctx)).job_event_list(job_id, since or 0)
    if since is not None:
        events = events[:lines]
    next_since = (events[-1].seq if events else None) or since or 0
    if since is not None:
        return {"events": _json(events), "next_since": next_since}
    text = [line for e in events if (line := _line(e)) is not None]
    return {"lines": text[-lines:], "next_since": next_since}


def _line(event: Event) -> str | None:
    """What `corral jobs logs` shows of an event (None: nothing)."""
    if event.type == "output":
        return str(event.payload.get("line", ""))
    if event.type == "agent.message":
        return str(event.payload.get("text", ""))
    if event.type == "job.question":
        return f"[asks] {event.payload.get('question', '')}"
    if event.type == "job.answer":
        return f"[answer] {event.payload.get('text') or 'no answer'}"
    return None


# -- sessions and people ---------------------------------------------------------------


@tool("write", "Send a follow-up turn")
async def send_turn(
    ctx: Context,
    session_id: Annotated[str, Field(description="The session (or a unique prefix).")],
    prompt: Prompt = None,
    command: Command = None,
    provider: Provider = None,
) -> Json:
    """A follow-up turn in a session: a new job that continues the same
    conversation (on the session's provider unless `provider` names another)."""
    c = await client(ctx)
    fields = _fields(preferred_ai=provider)
    accepted = await c.turn(session_id, prompt, command=command, source="mcp", **fields)
    return _json(accepted)  # type: ignore[no-any-return]


@tool("write", "Answer a waiting job")
async def answer(
    ctx: Context,
    job_id: JobId,
    text: Annotated[str, Field(min_length=1, description="The answer, as the agent reads it.")],
    question_id: Annotated[
        str | None, Field(description="The question (default: the one `waiting_for` shows).")
    ] = None,
) -> Json:
    """Answer the question a running job waits on (its `waiting_for`, see
    get_job); the asking agent goes on with `text`."""
    c = await client(ctx)
    return _json(await c.answer(job_id, text, question_id=question_id))  # type: ignore[no-any-return]


@tool("read", "Explain routing")
async def route(
    ctx: Context,
    prompt: Prompt = None,
    command: Command = None,
    provider: Provider = None,
    needs_local_agent: Annotated[
        bool | None, Field(description="A local CLI agent must do it.")
    ] = None,
    allow_delegation: Annotated[
        bool | None, Field(description="False: never a remote provider.")
    ] = None,
    complexity_hint: Annotated[
        Literal["low", "medium", "high"] | None, Field(description="May pick a model tier.")
    ] = None,
) -> Json:
    """Where a job with these fields would run: the provider, the rule that
    fired and why the earlier rules did not (nothing is submitted)."""
    fields = _fields(
        prompt=prompt,
        command=command,
        preferred_ai=provider,
        needs_local_agent=needs_local_agent,
        allow_delegation=allow_delegation,
        complexity_hint=complexity_hint,
    )
    return _json(await (await client(ctx)).route(**fields))  # type: ignore[no-any-return]


# -- the control plane ------------------------------------------------------------------


@tool("read", "Status")
async def status(ctx: Context) -> Json:
    """The kill switch, paused providers, job counts and runners."""
    return _json(await (await client(ctx)).status())  # type: ignore[no-any-return]


@tool("admin", "Pause (kill switch)")
async def pause(ctx: Context) -> Json:
    """Kill switch on: no job starts; running jobs finish, submissions queue."""
    return {"paused": await (await client(ctx)).pause()}


@tool("admin", "Resume")
async def resume(
    ctx: Context,
    provider: Annotated[
        str | None, Field(description="Lift this provider's quota pause instead.")
    ] = None,
) -> Json:
    """Kill switch off: queued jobs start again (or, with `provider`, lift
    that provider's quota pause)."""
    c = await client(ctx)
    if provider is not None:
        return {"provider": provider, "was_paused": await c.resume_provider(provider)}
    return {"paused": await c.resume()}


# -- agent daemons -----------------------------------------------------------------------


@tool("read", "List agent daemons")
async def list_agents(ctx: Context) -> Json:
    """Every agent daemon: status, pid, uptime, restarts, runner."""
    return {"agents": _json(await (await client(ctx)).agents())}


@tool("write", "Start, stop or restart an agent daemon")
async def agent_action(
    ctx: Context,
    name: Annotated[str, Field(description="The agent daemon's name.")],
    action: Annotated[Literal["start", "stop", "restart"], Field(description="What to do.")],
) -> Json:
    """Start, stop or restart an agent daemon (answers once its runner did)."""
    return _json(await (await client(ctx)).agent_action(name, action))  # type: ignore[no-any-return]


@tool("read", "An agent daemon's log")
async def agent_logs(
    ctx: Context,
    name: Annotated[str, Field(description="The agent daemon's name.")],
    n: Annotated[int, Field(ge=1, le=10_000, description="The last this many lines.")] = 200,
) -> Json:
    """An agent daemon's last `n` lines of output."""
    return {"lines": _json(await (await client(ctx)).agent_logs(name, n))}
