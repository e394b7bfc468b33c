"""A fake T3 Code server (github.com/pingdotgg/t3code): the orchestration
HTTP API a client drives it with, enforcing the real contract. A real HTTP
server on loopback, in a thread.

- ``POST /api/orchestration/dispatch`` takes one bare command object
  (packages/contracts/src/orchestration.ts ``ClientOrchestrationCommand``) and
  answers ``{"sequence": N}``; implemented: ``project.create``,
  ``thread.create``, ``thread.turn.start``, ``thread.turn.interrupt``. A
  refused command is HTTP 400 ``{"error": "..."}`` as in
  apps/server/src/orchestration/http.ts: a missing ``type`` or an unknown one,
  a missing or malformed required field, a project that exists already
  (``requireProjectAbsent``), a thread or project id that does not exist
  (``requireProject``/``requireThread``), a thread id in use. A reused
  ``commandId`` is refused too; T3 answers an exact repeat of an accepted
  command with its original sequence (command receipts) instead, so the fake
  is stricter: it catches a client that replays commands.
- ``GET /api/orchestration/snapshot`` serves the read model
  (``OrchestrationReadModel``: ``snapshotSequence``, ``projects``,
  ``threads`` with ``messages``, ``latestTurn``, ``session``,
  ``activities``, ``updatedAt``).
- Both want ``Authorization: Bearer <fake.token>``; anything else is 401
  ``{"error": "Unauthorized request."}``. The token check holds ``fake.lock``,
  so a test rotates atomically with ``with fake.lock: <rewrite the client's
  token file>; fake.token = "new"``.

Turns are simulated on the clock, as T3 projects them: a started turn is
first pending (T3 keeps a pending turn start out of ``latestTurn``; the
thread's ``session`` is ``starting``) for ``pending_seconds``, then running
(``latestTurn.state`` ``running``, a streaming partial assistant message) for
``turn_seconds``, then ``completed`` with the scripted reply as the assistant
message (``fake.reply("text")``; default ``ok``), or ``error`` when scripted
(``fake.fail_next_turn("message")``: ``session.lastError`` and an error
activity carry the message). A turn started while another runs on the thread
waits for it. Every accepted command is kept in ``fake.commands``.

    with FakeT3() as fake:
        fake.reply("done it")
        fake.turn_seconds = 4
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# ClientOrchestrationCommand's types: the ones the fake does not implement are 501.
KNOWN_TYPES = frozenset(
    {
        "project.create",
        "project.meta.update",
        "project.delete",
        "thread.create",
        "thread.delete",
        "thread.archive",
        "thread.unarchive",
        "thread.meta.update",
        "thread.runtime-mode.set",
        "thread.interaction-mode.set",
        "thread.turn.start",
        "thread.turn.interrupt",
        "thread.approval.respond",
        "thread.user-input.respond",
        "thread.checkpoint.revert",
        "thread.session.stop",
    }
)
RUNTIME_MODES = frozenset({"approval-required", "auto-accept-edits", "auto", "full-access"})
INTERACTION_MODES = frozenset({"default", "plan"})


def iso(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Invalid(Exception):
    """A command T3 refuses: HTTP 400 with this message."""


@dataclass
class _Turn:
    turn_id: str
    message_id: str
    requested_at: str  # the command's createdAt, as T3 keeps it
    start: float  # monotonic: when it leaves the queue
    pending: float
    seconds: float
    reply: str
    error: str | None
    wall: datetime  # wall clock at ``start``
    assistant_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    interrupted: float | None = None

    def phase(self, now: float) -> str:
        if self.interrupted is not None and self.interrupted <= now:
            return "interrupted"
        if now < self.start + self.pending:
            return "pending"
        if now < self.start + self.pending + self.seconds:
            return "running"
        return "error" if self.error is not None else "completed"

    def at(self, offset: float) -> str:
        return iso(self.wall + timedelta(seconds=offset))


@dataclass
class _Thread:
    data: dict[str, Any]  # the static part of OrchestrationThread
    messages: list[dict[str, Any]] = field(default_factory=list)  # user messages
    turns: list[_Turn] = field(default_factory=list)


class FakeT3:
    def __init__(self, token: str = "t3-token") -> None:
        self.lock = threading.RLock()
        self._token = token
        self.turn_seconds = 0.5
        self.pending_seconds = 0.1
        # Seconds to hold the HTTP answer to an accepted command, by type: the
        # command is applied at once and its answer comes late (a client killed
        # meanwhile never learns that it was accepted).
        self.answer_after: dict[str, float] = {}
        self.commands: list[dict[str, Any]] = []  # accepted, in order
        self.rejected: list[tuple[int, str, Any]] = []  # (status, error, body)
        self.tokens_seen: list[str | None] = []
        self._replies: deque[str] = deque()
        self._failures: deque[str] = deque()
        self._sequence = 0
        self._command_ids: set[str] = set()
        self._projects: dict[str, dict[str, Any]] = {}
        self._threads: dict[str, _Thread] = {}
        self._server: ThreadingHTTPServer | None = None

    # --- what tests script and read ---------------------------------------------------

    @property
    def token(self) -> str:
        return self._token

    @token.setter
    def token(self, value: str) -> None:
        with self.lock:
            self._token = value

    def reply(self, text: str) -> None:
        """The assistant's reply of the next turn that completes (default ``ok``)."""
        with self.lock:
            self._replies.append(text)

    def fail_next_turn(self, message: str) -> None:
        """The next started turn ends in ``error`` with ``message``."""
        with self.lock:
            self._failures.append(message)

    def finish_turns(self) -> None:
        """Running turns complete now (a test that holds a turn open with a
        long ``turn_seconds`` lets it end when it is ready)."""
        with self.lock:
            now = time.monotonic()
            for thread in self._threads.values():
                for turn in thread.turns:
                    if turn.phase(now) in ("pending", "running"):
                        turn.pending = 0
                        turn.seconds = max(0.0, now - turn.start)

    def count(self, type: str, **fields: Any) -> int:
        """Accepted commands of ``type`` whose fields include ``fields``."""
        with self.lock:
            return sum(
                1
                for c in self.commands
                if c["type"] == type and all(c.get(k) == v for k, v in fields.items())
            )

    def thread(self, thread_id: str) -> dict[str, Any] | None:
        for t in self.snapshot()["threads"]:
            if t["id"] == thread_id:
                found: dict[str, Any] = t
                return found
        return None

    # --- the read model ----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            now = time.monotonic()
            threads = [self._render(t, now) for t in self._threads.values()]
            stamps = [p["updatedAt"] for p in self._projects.values()]
            stamps += [t["updatedAt"] for t in threads]
            return {
                "snapshotSequence": self._sequence,
                "projects": [dict(p) for p in self._projects.values()],
                "threads": threads,
                "updatedAt": max(stamps) if stamps else iso(datetime.now(UTC)),
            }

    def _render(self, thread: _Thread, now: float) -> dict[str, Any]:
        out = dict(thread.data)
        messages = list(thread.messages)
        activities: list[dict[str, Any]] = []
        latest: dict[str, Any] | None = None
        session: dict[str, Any] | None = None
        updated = out["updatedAt"]
        for turn in thread.turns:
            phase = turn.phase(now)
            if phase == "pending":
                session = _session(out["id"], "starting", None, None, turn.requested_at)
                continue
            started = turn.at(turn.pending)
            ended = turn.at(turn.pending + turn.seconds)
            if phase == "interrupted" and turn.interrupted is not None:
                ended = turn.at(turn.interrupted - turn.start)
            latest = {
                "turnId": turn.turn_id,
                "state": phase,
                "requestedAt": turn.requested_at,
                "startedAt": started,
                "completedAt": None if phase == "running" else ended,
                "assistantMessageId": None,
            }
            if phase in ("running", "completed"):
                done = phase == "completed"
                latest["assistantMessageId"] = turn.assistant_id if done else None
                messages.append(
                    {
                        "id": turn.assistant_id,
                        "role": "assistant",
                        "text": turn.reply if done else turn.reply[: len(turn.reply) // 2],
                        "turnId": turn.turn_id,
                        "streaming": not done,
                        "createdAt": started,
                        "updatedAt": ended if done else started,
                    }
                )
            if phase == "error":
                activities.append(
                    {
                        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, turn.turn_id)),
                        "tone": "error",
                        "kind": "runtime.error",
                        "summary": turn.error,
                        "payload": {"message": turn.error},
                        "turnId": turn.turn_id,
                        "createdAt": ended,
                    }
                )
            status = {"running": "running", "completed": "ready", "error": "error"}.get(
                phase, "interrupted"
            )
            session = _session(
                out["id"],
                status,
                turn.turn_id if phase == "running" else None,
                turn.error if phase == "error" else None,
                started if phase == "running" else ended,
            )
            updated = max(updated, latest["completedAt"] or started)
        out.update(
            latestTurn=latest,
            messages=sorted(messages, key=lambda m: (m["createdAt"], m["id"])),
            activities=activities,
            session=session,
            updatedAt=updated,
        )
        return out

    # --- commands ----------------------------------------------------------------------

    def dispatch(self, command: Any) -> tuple[int, dict[str, Any]]:
        """Decide one command: (HTTP status, body)."""
        with self.lock:
            try:
                events = self._decide(command)
            except Invalid as exc:
                self.rejected.append((400, str(exc), command))
                return 400, {"error": str(exc)}
            except NotImplementedError as exc:
                self.rejected.append((501, str(exc), command))
                return 501, {"error": str(exc)}
            self._sequence += events
            self.commands.append(command)
            return 200, {"sequence": self._sequence}

    def _decide(self, c: Any) -> int:
        if not isinstance(c, dict):
            raise Invalid("Invalid orchestration command payload: not a JSON object.")
        kind = c.get("type")
        if kind is None:
            raise Invalid("Invalid orchestration command payload: missing `type`.")
        if kind not in KNOWN_TYPES:
            raise Invalid(f"Invalid orchestration command payload: unknown type {kind!r}.")
        handler = getattr(self, "_" + str(kind).replace(".", "_").replace("-", "_"), None)
        if handler is None:
            raise NotImplementedError(f"fake T3 does not implement {kind}")
        command_id = _text(c, "commandId")
        # The shape first (as T3's schema decode does), then the receipts, then invariants.
        check = handler(c)
        if command_id in self._command_ids:
            raise Invalid(f"Command '{command_id}' was already dispatched.")
        self._command_ids.add(command_id)
        events: int = check()
        return events

    def _project_create(self, c: dict[str, Any]) -> Any:
        project_id = _text(c, "projectId")
        title = _text(c, "title")
        root = _text(c, "workspaceRoot")
        created = _iso(c, "createdAt")
        _optional_bool(c, "createWorkspaceRootIfMissing")
        if c.get("defaultModelSelection") is not None:
            _model_selection(c, "defaultModelSelection")

        def apply() -> int:
            if project_id in self._projects:
                raise Invalid(f"Project '{project_id}' already exists.")
            self._projects[project_id] = {
                "id": project_id,
                "title": title,
                "workspaceRoot": root,
                "defaultModelSelection": c.get("defaultModelSelection"),
                "scripts": [],
                "createdAt": created,
                "updatedAt": created,
                "deletedAt": None,
            }
            return 1

        return apply

    def _thread_create(self, c: dict[str, Any]) -> Any:
        thread_id = _text(c, "threadId")
        project_id = _text(c, "projectId")
        title = _text(c, "title")
        selection = _model_selection(c, "modelSelection")
        runtime = _choice(c, "runtimeMode", RUNTIME_MODES)
        interaction = _choice(c, "interactionMode", INTERACTION_MODES, default="default")
        branch = _nullable_text(c, "branch")
        worktree = _nullable_text(c, "worktreePath")
        created = _iso(c, "createdAt")

        def apply() -> int:
            project = self._projects.get(project_id)
            if project is None or project["deletedAt"] is not None:
                raise Invalid(f"Project '{project_id}' does not exist.")
            if thread_id in self._threads:
                raise Invalid(f"Thread '{thread_id}' already exists.")
            self._threads[thread_id] = _Thread(
                {
                    "id": thread_id,
                    "projectId": project_id,
                    "title": title,
                    "modelSelection": selection,
                    "runtimeMode": runtime,
                    "interactionMode": interaction,
                    "branch": branch,
                    "worktreePath": worktree,
                    "latestTurn": None,
                    "createdAt": created,
                    "updatedAt": created,
                    "archivedAt": None,
                    "deletedAt": None,
                    "messages": [],
                    "proposedPlans": [],
                    "activities": [],
                    "checkpoints": [],
                    "session": None,
                }
            )
            return 1

        return apply

    def _thread_turn_start(self, c: dict[str, Any]) -> Any:
        thread_id = _text(c, "threadId")
        message = c.get("message")
        if not isinstance(message, dict):
            raise Invalid("Invalid orchestration command payload: `message` must be an object.")
        message_id = _text(message, "messageId", "message.")
        if message.get("role") != "user":
            raise Invalid("Invalid orchestration command payload: `message.role` must be 'user'.")
        text = message.get("text")
        if not isinstance(text, str):
            raise Invalid("Invalid orchestration command payload: `message.text` must be a string.")
        if not isinstance(message.get("attachments"), list):
            raise Invalid(
                "Invalid orchestration command payload: `message.attachments` must be an array."
            )
        if "modelSelection" in c:
            _model_selection(c, "modelSelection")
        _choice(c, "runtimeMode", RUNTIME_MODES)
        _choice(c, "interactionMode", INTERACTION_MODES)
        created = _iso(c, "createdAt")

        def apply() -> int:
            thread = self._threads.get(thread_id)
            if thread is None or thread.data["deletedAt"] is not None:
                raise Invalid(f"Thread '{thread_id}' does not exist.")
            if any(m["id"] == message_id for m in thread.messages):
                raise Invalid(f"Message '{message_id}' already exists on thread '{thread_id}'.")
            now = time.monotonic()
            start = now
            for turn in thread.turns:  # one turn at a time per thread
                if turn.interrupted is None:
                    start = max(start, turn.start + turn.pending + turn.seconds)
            thread.messages.append(
                {
                    "id": message_id,
                    "role": "user",
                    "text": text,
                    "turnId": None,
                    "streaming": False,
                    "createdAt": created,
                    "updatedAt": created,
                }
            )
            thread.turns.append(
                _Turn(
                    turn_id=str(uuid.uuid4()),
                    message_id=message_id,
                    requested_at=created,
                    start=start,
                    pending=self.pending_seconds,
                    seconds=self.turn_seconds,
                    reply=self._replies.popleft() if self._replies else "ok",
                    error=self._failures.popleft() if self._failures else None,
                    wall=datetime.now(UTC) + timedelta(seconds=start - now),
                )
            )
            thread.data["updatedAt"] = created
            return 2  # thread.message-sent, thread.turn-start-requested

        return apply

    def _thread_turn_interrupt(self, c: dict[str, Any]) -> Any:
        thread_id = _text(c, "threadId")
        turn_id = c.get("turnId")
        if turn_id is not None and (not isinstance(turn_id, str) or not turn_id.strip()):
            raise Invalid("Invalid orchestration command payload: `turnId` must be a string.")
        _iso(c, "createdAt")

        def apply() -> int:
            thread = self._threads.get(thread_id)
            if thread is None:
                raise Invalid(f"Thread '{thread_id}' does not exist.")
            now = time.monotonic()
            for turn in thread.turns:
                if (turn_id is None or turn.turn_id == turn_id) and turn.phase(now) in (
                    "pending",
                    "running",
                ):
                    turn.interrupted = now
            return 1

        return apply

    # --- serving -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeT3:
        handler = type("_Bound", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        # poll_interval: how long close() waits for the loop (0.5 s by default)
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeT3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _session(
    thread_id: str, status: str, turn: str | None, error: str | None, at: str
) -> dict[str, Any]:
    return {
        "threadId": thread_id,
        "status": status,
        "providerName": "codex",
        "runtimeMode": "full-access",
        "activeTurnId": turn,
        "lastError": error,
        "updatedAt": at,
    }


def _text(c: dict[str, Any], key: str, prefix: str = "") -> str:
    value = c.get(key)
    if not isinstance(value, str) or not value.strip():
        raise Invalid(
            f"Invalid orchestration command payload: `{prefix}{key}` must be a non-empty string."
        )
    return value


def _nullable_text(c: dict[str, Any], key: str) -> str | None:
    if key not in c:
        raise Invalid(f"Invalid orchestration command payload: missing `{key}` (may be null).")
    return None if c[key] is None else _text(c, key)


def _iso(c: dict[str, Any], key: str) -> str:
    value = _text(c, key)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise Invalid(f"Invalid orchestration command payload: `{key}` must be an ISO date-time.")
    return value


def _choice(
    c: dict[str, Any], key: str, allowed: frozenset[str], default: str | None = None
) -> str:
    value = c.get(key, default)
    if value not in allowed:
        raise Invalid(
            f"Invalid orchestration command payload: `{key}` must be one of {sorted(allowed)}."
        )
    return str(value)


def _optional_bool(c: dict[str, Any], key: str) -> None:
    if key in c and not isinstance(c[key], bool):
        raise Invalid(f"Invalid orchestration command payload: `{key}` must be a boolean.")


def _model_selection(c: dict[str, Any], key: str) -> dict[str, Any]:
    """ModelSelection: ``{instanceId, model}``, or the legacy ``{provider, model}``."""
    value = c.get(key)
    ok = (
        isinstance(value, dict)
        and isinstance(value.get("model"), str)
        and value["model"].strip()
        and any(
            isinstance(value.get(k), str) and value[k].strip() for k in ("instanceId", "provider")
        )
    )
    if not ok:
        raise Invalid(
            f"Invalid orchestration command payload: `{key}` must be "
            "{instanceId|provider, model}."
        )
    assert isinstance(value, dict)
    return dict(value)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeT3
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _json(self, status: int, data: Any) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization")
        token = (
            header[len("Bearer ") :].strip() if header and header.startswith("Bearer ") else None
        )
        with self.fake.lock:
            self.fake.tokens_seen.append(token)
            ok = token is not None and token == self.fake.token
        if not ok:
            self._json(401, {"error": "Unauthorized request."})
        return ok

    def do_GET(self) -> None:
        if not self._authorized():
            return
        if self.path.split("?")[0].rstrip("/") == "/api/orchestration/snapshot":
            return self._json(200, self.fake.snapshot())
        self._json(404, {"error": "Not Found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if not self._authorized():
            return
        if self.path.split("?")[0].rstrip("/") != "/api/orchestration/dispatch":
            return self._json(404, {"error": "Not Found"})
        try:
            command = json.loads(raw or b"null")
        except ValueError:
            return self._json(400, {"error": "Invalid orchestration command payload."})
        status, body = self.fake.dispatch(command)
        hold = (
            self.fake.answer_after.get(command.get("type")) if isinstance(command, dict) else None
        )
        if status == 200 and hold:
            time.sleep(hold)
        self._json(status, body)
