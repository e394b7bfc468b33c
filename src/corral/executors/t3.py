"""t3: delegate a job to a T3 Code server through its orchestration API.

T3 Code (github.com/pingdotgg/t3code) is driven by commands: ``POST
/api/orchestration/dispatch`` takes one bare command object (``type`` plus
its fields, validated against ``ClientOrchestrationCommand`` of
packages/contracts/src/orchestration.ts) and answers ``{"sequence": N}``;
a refused command is HTTP 400 ``{"error": "..."}``. ``GET
/api/orchestration/snapshot`` gives the read model (``OrchestrationReadModel``:
``projects`` with ``id``/``workspaceRoot``, ``threads`` with ``id``,
``projectId``, ``messages``, ``latestTurn`` and ``session``). Both want
``Authorization: Bearer <session token>`` (apps/server/src/auth); the token is
read from the provider's credential (api_key, api_key_env, token_file,
token_command) afresh for EVERY request, because it rotates, and a request
refused with 401/403 while the credential changed under it is sent once more
with the new one.

A job becomes one turn:

1. the project: the one whose id is the UUID5 (``uuid.NAMESPACE_URL``) of the
   workspace root, or else one with that ``workspaceRoot``; ``project.create``
   only when neither is in the snapshot. The workspace root is the job's
   ``repo`` (a path or URL, as given), else the runner's workdir;
2. ``thread.create`` (runtime mode ``full-access``, interaction mode
   ``default``, no branch or worktree), unless the session's earlier turn left
   a thread: a follow-up turn goes to the same thread;
3. ``thread.turn.start`` with the prompt as the user message.

Ids are minted here: ``commandId`` a fresh UUID4 per dispatch; ``threadId``
and ``messageId`` UUID5s of the job id (and attempt, for the message), so a
runner that takes the job over after a crash finds them in the snapshot even
if the handle never reached the server. The handle ``{"job", "thread",
"project", "message", "remote_job"}`` (``remote_job`` is the thread id, for
/api/delegated/status) is saved before the first dispatch. A run that finds
its user message already in the thread resumes (``remote.resumed``) and only
polls: never a second thread, never a second turn. (T3 itself answers a repeat
of an accepted ``commandId`` with the original sequence, see
OrchestrationEngine's command receipts, but a lost answer is better settled by
looking.)

Liveness comes from polling the snapshot (0.5 s backing off to 5 s). T3
writes the turn-start's ``createdAt`` as the turn's ``latestTurn.requestedAt``
and as the user message's ``createdAt``, so the latest turn is ours when it
was requested at or after our message; until then the turn is pending (T3
shows a pending turn start in no ``latestTurn``). ``latestTurn.state``:
completed -> done; running (and in_progress, pending) -> running; error
(errored) -> a failed run of class agent, with the thread session's
``lastError`` (or the turn's last error activity) as the message;
interrupted -> failed. The result is the text of the turn's assistant message
(``latestTurn.assistantMessageId``, else the turn's last assistant message).
``state`` changes are ``t3.state`` events.

Model: ``modelSelection`` is ``{"provider", "model"}``, the shape every T3
version accepts (newer ones promote ``provider`` to ``instanceId``):
``remote_provider`` of the provider (default ``codex``) and the job's model,
else the provider's ``model``/``models[0]``, else T3's default for that
provider (``gpt-5.4``, ``claude-sonnet-4-6``). A turn names a model only when
the job does.

Failures: 401/403 and other 4xx are bad input (failed at once with the
server's message), 429 a quota, connection errors and 5xx infrastructure
(snapshot reads are retried ``max_retries`` times first); an errored turn is
an agent failure (408/409 count as infrastructure, as for the chat
executors). The job's timeout and cancel send ``thread.turn.interrupt`` for
the turn (best effort) and stop following it.

Assumed rather than read in T3's source: the body of an auth refusal (401
with ``{"error"}`` or ``{"message"}``; either is read); the spellings
``errored``/``pending``/``in_progress`` (corral's design names them, T3's
``latestTurn.state`` has ``error``/``running`` only); that a job ``repo``
given as a URL is acceptable as ``workspaceRoot`` (T3 wants a path on its own
host: point such jobs at a checkout T3 can see); the UUID5 namespaces."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from corral.errors import ConfigError
from corral.executors.base import Context, failed, http_failed
from corral.executors.settings import ProviderSettings, RemoteSettings
from corral.models import Job, Outcome
from corral.protocol.handles import RemoteHandle

if TYPE_CHECKING:
    import httpx

DISPATCH = "/api/orchestration/dispatch"
SNAPSHOT = "/api/orchestration/snapshot"

# Ids corral derives (threads, messages) live under a namespace of their own.
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/corral/t3")

# T3's defaults (packages/contracts/src/model.ts DEFAULT_MODEL_BY_PROVIDER).
DEFAULT_PROVIDER = "codex"
DEFAULT_MODELS = {"codex": "gpt-5.4", "claudeAgent": "claude-sonnet-4-6"}
RUNTIME_MODE = "full-access"
INTERACTION_MODE = "default"

# latestTurn.state: T3 says running|completed|error|interrupted; the other
# spellings are accepted too, and any state not listed counts as running.
DONE = frozenset({"completed", "done", "idle", "ready"})
ERRORED = frozenset({"error", "errored", "failed"})
INTERRUPTED = frozenset({"interrupted", "stopped", "cancelled"})

POLL_FIRST = 0.5
POLL_MAX = 5.0
TITLE_MAX = 80


class T3Settings(RemoteSettings):
    """Delegates jobs to a T3 Code server through its orchestration API, a turn
    on a thread per job (the key: its bearer session token, re-read for every
    request)."""

    base_url: str | None = Field(None, description="The T3 server's URL.")
    model: str | None = Field(
        None, description="Model of a job that names none (default: T3's for remote_provider)."
    )
    remote_provider: str | None = Field(
        None, description="T3's provider that runs the turn: `codex` (default) or `claudeAgent`."
    )


class _Failed(Exception):
    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.error)
        self.outcome = outcome


def _now() -> str:
    """ISO-8601 in UTC with milliseconds, as T3's clients write it."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def project_id(root: str) -> str:
    """The T3 project id corral uses for a workspace root."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, root))


def thread_id(job_id: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"thread:{job_id}"))


def message_id(job: Job) -> str:
    # Per attempt: a retry after an agent error is a new turn on the same thread.
    return str(uuid.uuid5(NAMESPACE, f"message:{job.id}:{job.attempt}"))


class _Api:
    """HTTP to one T3 server: the credential re-read per request, errors as
    ``_Failed`` with the failure class already decided."""

    def __init__(self, http: httpx.AsyncClient, ctx: Context[T3Settings]) -> None:
        self.http = http
        self.settings = ctx.settings
        self.name = ctx.provider

    async def _credential(self) -> str | None:
        try:
            return await self.settings.credential()
        except ConfigError as exc:
            raise _Failed(failed("input", "credential", exc.message)) from None

    async def request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        import httpx

        for attempt in range(2):
            token = await self._credential()
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            try:
                resp = await self.http.request(method, path, json=body, headers=headers)
            except httpx.HTTPError as exc:
                raise _Failed(
                    failed("infra", "unreachable", f"{self.name}: {type(exc).__name__}: {exc}")
                ) from None
            # A token rotated while the request was in flight: once more with the new one.
            if (
                resp.status_code in (401, 403)
                and attempt == 0
                and await self._credential() != token
            ):
                continue
            break
        if resp.status_code >= 400:
            raise _Failed(http_failed(self.name, resp.status_code, _error_text(resp), resp.headers))
        try:
            return resp.json()
        except ValueError:
            raise _Failed(
                failed("infra", "bad_response", f"{self.name}: {path} answered no JSON")
            ) from None

    async def snapshot(self) -> dict[str, Any]:
        """The read model; connection errors and 5xx are retried a few times."""
        delay = 0.5
        for attempt in range(self.settings.max_retries + 1):
            try:
                data = await self.request("GET", SNAPSHOT)
            except _Failed as exc:
                if exc.outcome.failure != "infra" or attempt == self.settings.max_retries:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, POLL_MAX)
                continue
            if not isinstance(data, dict):
                break
            return data
        raise _Failed(failed("infra", "bad_response", f"{self.name}: malformed snapshot"))

    async def dispatch(self, command: dict[str, Any]) -> int | None:
        data = await self.request("POST", DISPATCH, command)
        seq = data.get("sequence") if isinstance(data, dict) else None
        return seq if isinstance(seq, int) else None


class T3Executor:
    kind: ClassVar[str] = "t3"
    settings: ClassVar[type[ProviderSettings]] = T3Settings
    local: ClassVar[bool] = False

    def __init__(self) -> None:
        self._inner: asyncio.Task[Outcome] | None = None
        self._api: _Api | None = None
        self._cancelled = False
        self._thread: str | None = None  # once a turn has been (or may have been) started
        self._turn: str | None = None  # T3's id of our turn, once it runs

    async def run(self, ctx: Context[T3Settings]) -> Outcome:
        s = ctx.settings
        if not s.base_url:
            return failed("input", "no_base_url", f"provider {ctx.provider!r} needs base_url")
        try:
            await s.credential()
        except ConfigError as exc:
            return failed("input", "credential", exc.message)
        text = _prompt(ctx.job)
        if not text:
            return failed("input", "no_prompt", "a t3 job needs a prompt")
        provider, model = _model(ctx)
        if not model:
            return failed(
                "input",
                "no_model",
                f"provider {ctx.provider!r}: no default model for T3 provider {provider!r}: "
                "set `model`",
            )
        ctx.started(None)
        base = s.base_url.rstrip("/") + "/"
        # Imported by the run: reading a provider table imports this module.
        import httpx

        async with httpx.AsyncClient(base_url=base, timeout=s.timeout) as http:
            self._api = _Api(http, ctx)
            self._inner = asyncio.ensure_future(self._drive(ctx, text, provider, model))
            try:
                if ctx.job.timeout:
                    return await asyncio.wait_for(asyncio.shield(self._inner), ctx.job.timeout)
                return await self._inner
            except TimeoutError:
                self._inner.cancel()
                await self._interrupt()
                return failed(
                    "agent", "timeout", f"timed out after {ctx.job.timeout:g}s (turn interrupted)"
                )
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._cancelled and not (task is not None and task.cancelling()):
                    return failed("agent", "cancelled", "cancelled")
                self._inner.cancel()
                raise
            finally:
                self._api = None

    async def cancel(self) -> None:
        self._cancelled = True
        await self._interrupt()
        if self._inner is not None:
            self._inner.cancel()

    async def _interrupt(self) -> None:
        """Ask T3 to stop our turn (best effort: the job ends either way)."""
        api, thread = self._api, self._thread
        if api is None or thread is None:
            return
        command: dict[str, Any] = {
            "type": "thread.turn.interrupt",
            "commandId": str(uuid.uuid4()),
            "threadId": thread,
            "createdAt": _now(),
        }
        if self._turn is not None:
            command["turnId"] = self._turn
        with contextlib.suppress(_Failed, TimeoutError):
            await asyncio.wait_for(api.dispatch(command), 10)

    async def _drive(
        self, ctx: Context[T3Settings], text: str, provider: str, model: str
    ) -> Outcome:
        try:
            return await self._start_or_resume(ctx, text, provider, model)
        except _Failed as exc:
            return exc.outcome

    async def _start_or_resume(
        self, ctx: Context[T3Settings], text: str, provider: str, model: str
    ) -> Outcome:
        assert self._api is not None
        api, job, url = self._api, ctx.job, ctx.settings.base_url
        handle = RemoteHandle.decode(ctx.handle)
        message = message_id(job)
        earlier = handle.thread
        thread_ref = earlier or thread_id(job.id)
        snap = await api.snapshot()
        thread = _by_id(snap.get("threads"), thread_ref)
        if (
            earlier is not None
            and handle.job != job.id
            and (thread is None or thread.get("deletedAt"))
        ):
            # The session's thread is gone from T3 (deleted): this turn starts a new one.
            ctx.emit("t3.thread_missing", {"thread": earlier})
            thread_ref = thread_id(job.id)
            thread = _by_id(snap.get("threads"), thread_ref)

        def save(project: str) -> None:
            ctx.save_handle(
                RemoteHandle(
                    job=job.id,
                    thread=thread_ref,
                    project=project,
                    message=message,
                    remote_job=thread_ref,
                ).encode()
            )

        if thread is not None and _message(thread, message) is not None:
            # Started before a crash: follow that turn, never start another.
            self._thread = thread_ref
            project = str(thread.get("projectId") or "")
            if handle.job != job.id:
                save(project)  # the first run's handle never reached the server
            ctx.emit("remote.resumed", {"thread": thread_ref, "project": project, "url": url})
            return await self._follow(ctx, thread_ref, message)

        created_project = created_thread = False
        if thread is None:
            root = job.repo or str(ctx.workdir)
            project, created_project = await self._ensure_project(snap, root)
            save(project)
            await api.dispatch(
                {
                    "type": "thread.create",
                    "commandId": str(uuid.uuid4()),
                    "threadId": thread_ref,
                    "projectId": project,
                    "title": _title(job, text),
                    "modelSelection": {"provider": provider, "model": model},
                    "runtimeMode": RUNTIME_MODE,
                    "interactionMode": INTERACTION_MODE,
                    "branch": None,
                    "worktreePath": None,
                    "createdAt": _now(),
                }
            )
            created_thread = True
        else:
            project = str(thread.get("projectId") or handle.project or "")
            save(project)
        turn: dict[str, Any] = {
            "type": "thread.turn.start",
            "commandId": str(uuid.uuid4()),
            "threadId": thread_ref,
            "message": {"messageId": message, "role": "user", "text": text, "attachments": []},
            "runtimeMode": RUNTIME_MODE,
            "interactionMode": INTERACTION_MODE,
            "createdAt": _now(),
        }
        if job.model:
            turn["modelSelection"] = {"provider": provider, "model": model}
        self._thread = thread_ref
        sequence = await api.dispatch(turn)
        ctx.emit(
            "remote.submitted",
            {
                "thread": thread_ref,
                "project": project,
                "url": url,
                "created_project": created_project,
                "created_thread": created_thread,
                "sequence": sequence,
            },
        )
        return await self._follow(ctx, thread_ref, message)

    async def _ensure_project(self, snap: Mapping[str, Any], root: str) -> tuple[str, bool]:
        """The project for ``root``: found in the snapshot, or created."""
        assert self._api is not None
        wanted = project_id(root)
        live = [
            p for p in snap.get("projects") or [] if isinstance(p, dict) and not p.get("deletedAt")
        ]
        for p in live:
            if p.get("id") == wanted:
                return wanted, False
        for p in live:
            if p.get("workspaceRoot") == root and isinstance(p.get("id"), str):
                return str(p["id"]), False
        await self._api.dispatch(
            {
                "type": "project.create",
                "commandId": str(uuid.uuid4()),
                "projectId": wanted,
                "title": PurePosixPath(root.rstrip("/")).name or root,
                "workspaceRoot": root,
                "createdAt": _now(),
            }
        )
        return wanted, True

    async def _follow(self, ctx: Context[T3Settings], thread_ref: str, message: str) -> Outcome:
        assert self._api is not None
        delay = POLL_FIRST
        last: tuple[str, str | None] | None = None
        while True:
            snap = await self._api.snapshot()
            thread = _by_id(snap.get("threads"), thread_ref)
            if thread is None or thread.get("deletedAt"):
                return failed("agent", "thread_deleted", f"T3 thread {thread_ref} was deleted")
            view = _turn_view(thread, message)
            if view.turn is not None:
                self._turn = view.turn
            if (view.raw, view.turn) != last:
                last = (view.raw, view.turn)
                delay = POLL_FIRST
                ctx.emit("t3.state", {"state": view.state, "t3_state": view.raw, "turn": view.turn})
            if view.state == "done":
                return Outcome(status="done", result=view.text)
            if view.state == "error":
                return failed(
                    "agent", "t3_turn_error", view.error or f"T3 turn {view.turn} errored"
                )
            if view.state == "interrupted":
                if self._cancelled:
                    return failed("agent", "cancelled", "cancelled")
                return failed("agent", "t3_interrupted", f"T3 turn {view.turn} was interrupted")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, POLL_MAX)


class _TurnView:
    __slots__ = ("error", "raw", "state", "text", "turn")

    def __init__(
        self,
        state: str,
        raw: str,
        turn: str | None = None,
        text: str | None = None,
        error: str | None = None,
    ) -> None:
        self.state = state  # pending | running | done | error | interrupted
        self.raw = raw  # what T3 said
        self.turn = turn
        self.text = text
        self.error = error


def _turn_view(thread: Mapping[str, Any], message: str) -> _TurnView:
    """Where our turn (the one our user message started) stands."""
    mine = _message(thread, message)
    if mine is None:
        return _TurnView("pending", "not_seen")
    since = _when(mine.get("createdAt"))
    latest = thread.get("latestTurn")
    if not isinstance(latest, dict) or _when(latest.get("requestedAt")) < since:
        session = thread.get("session")
        if (
            isinstance(session, dict)
            and session.get("status") == "error"
            and _when(session.get("updatedAt")) >= since
        ):
            return _TurnView("error", "session_error", error=_error_of(thread, None))
        return _TurnView("pending", "pending")
    raw = str(latest.get("state") or "")
    turn = latest.get("turnId") if isinstance(latest.get("turnId"), str) else None
    if raw in DONE:
        return _TurnView("done", raw, turn, text=_reply(thread, latest, turn))
    if raw in ERRORED:
        return _TurnView("error", raw, turn, error=_error_of(thread, turn))
    if raw in INTERRUPTED:
        return _TurnView("interrupted", raw, turn)
    return _TurnView("running", raw or "running", turn)  # running, in_progress, pending, ...


def _reply(thread: Mapping[str, Any], latest: Mapping[str, Any], turn: str | None) -> str:
    """The assistant's final message of the turn."""
    messages = [m for m in thread.get("messages") or [] if isinstance(m, dict)]
    wanted = latest.get("assistantMessageId")
    if wanted:
        for m in messages:
            if m.get("id") == wanted:
                return str(m.get("text") or "")
    own = [m for m in messages if m.get("role") == "assistant" and m.get("turnId") == turn]
    return str(own[-1].get("text") or "") if own else ""


def _error_of(thread: Mapping[str, Any], turn: str | None) -> str | None:
    session = thread.get("session")
    if isinstance(session, dict) and session.get("lastError"):
        return str(session["lastError"])
    for activity in reversed(thread.get("activities") or []):
        if (
            isinstance(activity, dict)
            and activity.get("tone") == "error"
            and (turn is None or activity.get("turnId") in (turn, None))
        ):
            return str(activity.get("summary") or "")
    return None


def _message(thread: Mapping[str, Any], message: str) -> dict[str, Any] | None:
    for m in thread.get("messages") or []:
        if isinstance(m, dict) and m.get("id") == message:
            return m
    return None


def _by_id(items: Any, ident: str) -> dict[str, Any] | None:
    for item in items or []:
        if isinstance(item, dict) and item.get("id") == ident:
            return item
    return None


_EPOCH = datetime.min.replace(tzinfo=UTC)


def _when(value: Any) -> datetime:
    if not isinstance(value, str):
        return _EPOCH
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return _EPOCH
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _prompt(job: Job) -> str:
    if job.prompt:
        return job.prompt
    if job.command:
        return job.command
    for m in reversed(job.messages or []):
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            return str(m["content"])
    return ""


def _model(ctx: Context[T3Settings]) -> tuple[str, str | None]:
    s = ctx.settings
    provider = s.remote_provider or DEFAULT_PROVIDER
    model = ctx.job.model or s.model or (s.models[0] if s.models else None)
    return provider, model or DEFAULT_MODELS.get(provider)


def _title(job: Job, text: str) -> str:
    lines = (job.title or text).strip().splitlines()
    title = lines[0].strip() if lines else ""
    if len(title) > TITLE_MAX:
        title = title[: TITLE_MAX - 1].rstrip() + "…"
    return title or f"corral job {job.id}"


def _error_text(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:500] or resp.reason_phrase
    if isinstance(body, dict):
        err = body.get("error", body.get("message"))
        if isinstance(err, dict):
            err = err.get("message") or err.get("detail")
        if err:
            return str(err)
    return json.dumps(body)[:500]
