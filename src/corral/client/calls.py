"""Every endpoint that is one request: what to send and how to read the
answer, as a ``Call``. Pure: both faces send them (see base.py)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter

from corral.models import (
    Agent,
    AgentDetail,
    AgentLine,
    AgentsReloaded,
    Artifact,
    BudgetStatus,
    Delivery,
    Event,
    Identity,
    Job,
    JobAccepted,
    JobPage,
    ModelTag,
    Question,
    RouteDecision,
    Runner,
    Schedule,
    Session,
    SessionDetail,
    Stats,
    Status,
    Tracker,
    UsageReport,
)

from .base import Call

M = TypeVar("M", bound=BaseModel)
V = TypeVar("V")
Read = Callable[[httpx.Response], V]


@functools.cache
def _one(model: type[M]) -> Read[M]:
    return lambda resp: model.model_validate_json(resp.content)


@functools.cache
def _many(model: type[M]) -> Read[list[M]]:
    adapter = TypeAdapter(list[model])  # type: ignore[valid-type]
    return lambda resp: list(adapter.validate_json(resp.content))


def _field(name: str, kind: Callable[[Any], V]) -> Read[V]:
    return lambda resp: kind(resp.json()[name])


def _seg(value: str) -> str:
    """A path segment: an id or a name never reaches another path."""
    return quote(str(value), safe="")


def _body(prompt: str | None, command: str | None, fields: dict[str, Any]) -> dict[str, Any]:
    body = {"prompt": prompt, "command": command, **fields}
    # A datetime (run_at) as ISO-8601; a naive one is sent as it is, and refused.
    return {
        k: v.isoformat() if isinstance(v, datetime) else v for k, v in body.items() if v is not None
    }


_JOB = _one(Job)
_ACCEPTED = _one(JobAccepted)


# -- jobs ----------------------------------------------------------------------


def submit(
    prompt: str | None = None,
    *,
    command: str | None = None,
    run_at: datetime | str | None = None,
    **fields: Any,
) -> Call[JobAccepted]:
    """Submit a job: a ``prompt`` for an agent (routing picks the provider)
    or a shell ``command``; not run before ``run_at`` (an aware datetime,
    or ISO-8601 text with a time zone); ``fields`` are the other job fields
    (``provider``, ``repo``, ``session_id``, ``webhook``...). Answers at once
    with its id."""
    body = _body(prompt, command, {**fields, "run_at": run_at})
    return Call("POST", "/jobs", _ACCEPTED, json=body)


def get(job_id: str) -> Call[Job]:
    """One job: state, attempt, result or error, usage, cost, timestamps."""
    return Call("GET", f"/jobs/{_seg(job_id)}", _JOB)


def _read_page(resp: httpx.Response) -> list[Job]:
    return JobPage.model_validate_json(resp.content).jobs


def list_jobs(
    *,
    state: list[str] | None = None,
    session_id: str | None = None,
    limit: int = 50,
    before: str | None = None,
) -> Call[list[Job]]:
    """Jobs, newest first; ``before`` (a job id) pages further back."""
    params: dict[str, Any] = {"limit": limit}
    if state:
        params["state"] = state
    if session_id:
        params["session_id"] = session_id
    if before:
        params["before"] = before
    return Call("GET", "/jobs", _read_page, params=params)


def cancel(job_id: str) -> Call[Job]:
    return Call("POST", f"/jobs/{_seg(job_id)}/cancel", _JOB)


def retry(job_id: str) -> Call[Job]:
    """One more attempt of an ended job."""
    return Call("POST", f"/jobs/{_seg(job_id)}/retry", _JOB)


def answer(job_id: str, text: str, *, question_id: str | None = None) -> Call[Question]:
    """Answer the question a job waits on (its ``waiting_for``); the asking
    agent gets ``text``. ``ApiError`` 409 ``not_waiting`` if it waits on none."""
    body = {"text": text, **({"question_id": question_id} if question_id else {})}
    return Call("POST", f"/jobs/{_seg(job_id)}/answer", _one(Question), json=body)


def route(**fields: Any) -> Call[RouteDecision]:
    """Where a job with ``fields`` would run, and why."""
    return Call("POST", "/route", _one(RouteDecision), json=fields)


def artifacts(job_id: str) -> Call[list[Artifact]]:
    """What the job left (e.g. ``diff.patch``, ``changes.json``)."""
    return Call("GET", f"/jobs/{_seg(job_id)}/artifacts", _many(Artifact))


def artifact(job_id: str, name: str) -> Call[bytes]:
    """One artifact's content."""
    return Call("GET", f"/jobs/{_seg(job_id)}/artifacts/{_seg(name)}", lambda r: r.content)


def event_page(path: str, since: int, limit: int) -> Call[tuple[list[Event], int]]:
    """One page of stored events after ``since`` and where the next one starts."""

    def read(resp: httpx.Response) -> tuple[list[Event], int]:
        data = resp.json()
        return [Event.from_dict(e) for e in data["events"]], int(data["next_since"])

    return Call("GET", path, read, params={"since": since, "limit": limit})


# -- sessions ------------------------------------------------------------------


def create_session(title: str | None = None) -> Call[Session]:
    return Call("POST", "/sessions", _one(Session), json={"title": title})


def session(session_id: str) -> Call[SessionDetail]:
    """A session and its turns (jobs)."""
    return Call("GET", f"/sessions/{_seg(session_id)}", _one(SessionDetail))


def turn(
    session_id: str, prompt: str | None = None, *, command: str | None = None, **fields: Any
) -> Call[JobAccepted]:
    """A follow-up turn (a job) in a session: a ``prompt`` or a shell
    ``command``, other fields (``run_at`` too) as for ``submit``."""
    path = f"/sessions/{_seg(session_id)}/turns"
    return Call("POST", path, _ACCEPTED, json=_body(prompt, command, fields))


# -- webhooks ------------------------------------------------------------------


def deliveries(job_id: str) -> Call[list[Delivery]]:
    """A job's webhook deliveries with their attempt logs, newest first."""
    return Call("GET", f"/jobs/{_seg(job_id)}/deliveries", _many(Delivery))


def all_deliveries(
    *, state: str | None = None, job_id: str | None = None, limit: int = 100
) -> Call[list[Delivery]]:
    """Deliveries of every job, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if state:
        params["state"] = state
    if job_id:
        params["job_id"] = job_id
    return Call("GET", "/webhooks/deliveries", _many(Delivery), params=params)


def redeliver(delivery_id: str) -> Call[Delivery]:
    """Send a delivery again (same delivery id: receivers may drop it)."""
    path = f"/webhooks/deliveries/{_seg(delivery_id)}/redeliver"
    return Call("POST", path, _one(Delivery))


def webhook_secret() -> Call[str]:
    """The server's default webhook secret (admin)."""
    return Call("GET", "/admin/webhook-secret", _field("secret", str))


# -- trackers ------------------------------------------------------------------


def trackers() -> Call[list[Tracker]]:
    """The configured issue trackers and how their intake is doing."""
    return Call("GET", "/trackers", _many(Tracker))


def tracker(name: str) -> Call[Tracker]:
    """One tracker, with the issues it took in."""
    return Call("GET", f"/trackers/{_seg(name)}", _one(Tracker))


def tracker_action(name: str, action: str) -> Call[Tracker]:
    """``sync`` (poll now), ``enable`` or ``disable`` a tracker."""
    if action not in ("sync", "enable", "disable"):
        raise ValueError(f"unknown tracker action {action!r}: sync, enable or disable")
    return Call("POST", f"/trackers/{_seg(name)}/{action}", _one(Tracker))


# -- runners -------------------------------------------------------------------


def runners() -> Call[list[Runner]]:
    """The active runners."""
    return Call("GET", "/runners", _many(Runner))


def forget_runner(name: str) -> Call[dict[str, Any]]:
    """Release a runner name from the key that registered it (admin): the
    next key to register under it owns it."""
    return Call("POST", f"/admin/runners/{_seg(name)}/forget", lambda resp: dict(resp.json()))


# -- the kill switch and status ------------------------------------------------


def pause() -> Call[bool]:
    """Kill switch on: no new leases; running jobs finish. True: paused."""
    return Call("POST", "/admin/pause", _field("paused", bool))


def resume() -> Call[bool]:
    """Kill switch off. False: not paused."""
    return Call("POST", "/admin/resume", _field("paused", bool))


def resume_provider(name: str) -> Call[bool]:
    """Lift a quota pause of provider ``name`` now; True if it was paused."""
    path = f"/admin/providers/{_seg(name)}/resume"
    return Call("POST", path, _field("was_paused", bool))


def whoami() -> Call[Identity]:
    """The key this client uses: its id, name and role."""
    return Call("GET", "/whoami", _one(Identity))


def status() -> Call[Status]:
    """The kill switch, quota pauses, job counts and runners."""
    return Call("GET", "/status", _one(Status))


def usage(
    *,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    group_by: list[str] | None = None,
    provider: str | None = None,
    model: str | None = None,
    label: str | None = None,
    source: str | None = None,
) -> Call[UsageReport]:
    """Cost, tokens, jobs and run time of the jobs that ended in ``[start,
    end)``, summed per ``group_by`` (provider, model, label, source, day)."""
    params: dict[str, Any] = {"group_by": ",".join(group_by or ["provider"])}
    for name, value in (("from", start), ("to", end)):
        if value is not None:
            params[name] = value.isoformat() if isinstance(value, datetime) else value
    for name, value in (("provider", provider), ("model", model), ("label", label)):
        if value is not None:
            params[name] = value
    if source is not None:
        params["source"] = source
    return Call("GET", "/usage", _one(UsageReport), params=params)


def stats(
    *,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    bucket: str = "hour",
    group_by: str = "state",
) -> Call[Stats]:
    """Jobs finished in ``[start, end)`` per ``bucket`` (minute, hour, day) and
    per ``group_by`` (state, provider): counts, cost, tokens; queue wait and
    run time percentiles."""
    params: dict[str, Any] = {"bucket": bucket, "group_by": group_by}
    for name, value in (("from", start), ("to", end)):
        if value is not None:
            params[name] = value.isoformat() if isinstance(value, datetime) else value
    return Call("GET", "/stats", _one(Stats), params=params)


def budgets() -> Call[list[BudgetStatus]]:
    """Each budget's spend against its limit in its current period."""
    return Call("GET", "/budgets", _many(BudgetStatus))


# -- agent daemons -------------------------------------------------------------


def agents() -> Call[list[Agent]]:
    """Every agent daemon: status, pid, uptime, restarts, runner."""
    return Call("GET", "/agents", _many(Agent))


def agent(name: str) -> Call[AgentDetail]:
    """One agent: status, configuration (env values masked), recent lines."""
    return Call("GET", f"/agents/{_seg(name)}", _one(AgentDetail))


def agent_action(name: str, action: str) -> Call[Agent]:
    """``start``, ``stop`` or ``restart`` an agent daemon."""
    return Call("POST", f"/agents/{_seg(name)}/{_seg(action)}", _one(Agent))


def reload_agents() -> Call[AgentsReloaded]:
    """Apply ``[agents.*]`` changes of the server's configuration."""
    return Call("POST", "/agents/reload", _one(AgentsReloaded))


def agent_logs(name: str, n: int = 200) -> Call[list[AgentLine]]:
    """An agent's last ``n`` lines."""
    return Call("GET", f"/agents/{_seg(name)}/logs", _many(AgentLine), params={"n": n})


# -- schedules -----------------------------------------------------------------


def schedules() -> Call[list[Schedule]]:
    """Every cron schedule: enabled, next and last slot, counts."""
    return Call("GET", "/schedules", _many(Schedule))


def schedule(name: str) -> Call[Schedule]:
    return Call("GET", f"/schedules/{_seg(name)}", _one(Schedule))


def run_schedule(name: str) -> Call[JobAccepted]:
    """Submit a schedule's job now, outside its slots."""
    return Call("POST", f"/schedules/{_seg(name)}/run", _ACCEPTED)


def enable_schedule(name: str) -> Call[Schedule]:
    """Fire a schedule's slots from now on (wins over its configuration)."""
    return Call("POST", f"/schedules/{_seg(name)}/enable", _one(Schedule))


def disable_schedule(name: str) -> Call[Schedule]:
    """Fire none of a schedule's slots until it is enabled again."""
    return Call("POST", f"/schedules/{_seg(name)}/disable", _one(Schedule))


# -- the Ollama-compatible endpoints -------------------------------------------


_TAGS = TypeAdapter(list[ModelTag])


def _read_tags(resp: httpx.Response) -> list[ModelTag]:
    return _TAGS.validate_python(resp.json()["models"])


def tags() -> Call[list[ModelTag]]:
    """The models of the server's chat providers (``GET /api/tags``)."""
    return Call("GET", "/api/tags", _read_tags)


def embed(input: str | list[str], model: str | None = None) -> Call[list[list[float]]]:
    """Embeddings from the server's embedding provider (``POST /api/embed``)."""
    body = {"input": input, **({"model": model} if model else {})}
    return Call("POST", "/api/embed", _field("embeddings", list), json=body)


def chat(model: str, messages: list[dict[str, Any]], **fields: Any) -> Call[dict[str, Any]]:
    """One chat turn through a queued chat job (``POST /api/chat``; ``fields``
    such as ``options``, ``tools``, ``think``): the assistant message."""
    body = {"model": model, "messages": messages, "stream": False, **fields}
    return Call("POST", "/api/chat", _field("message", dict), json=body, unbounded=True)
