"""A fake of the Anthropic Messages API that the real `claude` CLI can run against.

A real HTTP server on 127.0.0.1 (stdlib, one thread per connection) that speaks
the wire format: JSON errors, `text/event-stream` streaming, the event sequence
of the real API. Tests script the assistant turns; see tests/fakes/CLAUDE_NOTES.md
for how the CLI behaves against it.

    with FakeAnthropic() as fake:
        fake.reply(text("I will write it"), tool_use("Bash", {"command": "echo hi > a.txt"}))
        fake.reply(text("done"))
        ...  # run `claude -p` with ANTHROPIC_BASE_URL=fake.url, ANTHROPIC_API_KEY=fake.api_key
        assert fake.requests[1]["messages"][-1]["content"][0]["type"] == "tool_result"
"""

from __future__ import annotations

import gzip
import json
import logging
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

Block = dict[str, Any]


def text(value: str) -> Block:
    """A text content block."""
    return {"type": "text", "text": value}


def tool_use(name: str, input: dict[str, Any], id: str | None = None) -> Block:
    """A tool_use content block (the id is generated when not given)."""
    return {
        "type": "tool_use",
        "id": id or f"toolu_{uuid.uuid4().hex[:24]}",
        "name": name,
        "input": input,
    }


@dataclass
class _Reply:
    content: list[Block]
    input_tokens: int | None = None
    output_tokens: int | None = None
    stop_reason: str | None = None


@dataclass
class _Failure:
    status: int
    error_type: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)


class _Hang:
    pass


_Step = _Reply | _Failure | _Hang

_STATUS_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


Kind = Literal["main", "aux", "count_tokens", "models", "other"]


@dataclass
class Seen:
    """One HTTP request the fake received (all of them, main loop or not)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any
    kind: Kind


def is_main_loop(body: dict[str, Any]) -> bool:
    """Whether a /v1/messages body is a turn of the agent's main loop (or a subagent's).

    The loop always offers the model its tools; the CLI's one-shot side requests
    (session titles, topic or quota probes: "toolFreeHelper" in the CLI's code)
    carry no `tools`. Forks that reuse the loop's prompt for the cache (e.g.
    `/compact`) do carry the tools and so count as main. See CLAUDE_NOTES.md.
    """
    return bool(body.get("tools"))


class FakeAnthropic:
    """The fake API server. Script main-loop answers with reply/fail/hang; an
    empty script answers "ok". Side requests are answered "ok" without using
    the script.

    requests:   JSON bodies of the main-loop /v1/messages requests, in order
    seen:       every HTTP request received
    unexpected: requests to endpoints the fake does not serve (answered 404)
    """

    def __init__(self, api_key: str = "sk-ant-test") -> None:
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []  # JSON bodies of main-loop requests
        self.seen: list[Seen] = []  # every request, in order
        self.unexpected: list[Seen] = []  # requests to endpoints the fake does not know
        self.refused: list[str] = []  # why each invalid /v1/messages request was refused (400)
        # (match, step): a step with a match is only used by a request whose
        # body contains that text (e.g. its job's prompt), so concurrent runs
        # each get their own script.
        self._script: deque[tuple[str | None, _Step]] = deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- scripting -----------------------------------------------------------

    def reply(
        self,
        *content: Block,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        stop_reason: str | None = None,
        match: str | None = None,
    ) -> None:
        """Enqueue one assistant message for the next main-loop request (with
        ``match``: the next one whose body contains that text).

        Usage defaults to a rough size estimate (~4 characters a token); the
        stop reason to `tool_use` when a tool_use block is present, else `end_turn`.
        """
        with self._lock:
            step = _Reply(list(content), input_tokens, output_tokens, stop_reason)
            self._script.append((match, step))

    def fail(
        self,
        status: int,
        *,
        headers: dict[str, str] | None = None,
        error_type: str | None = None,
        message: str | None = None,
        match: str | None = None,
    ) -> None:
        """Enqueue an error response for the next main-loop request."""
        kind = error_type or _STATUS_ERROR_TYPES.get(status, "api_error")
        with self._lock:
            step = _Failure(status, kind, message or f"fake {kind}", dict(headers or {}))
            self._script.append((match, step))

    def hang(self, match: str | None = None) -> None:
        """Enqueue: accept the next main-loop request and never answer it (until close)."""
        with self._lock:
            self._script.append((match, _Hang()))

    def _matched_step(self, body: dict[str, Any]) -> _Step:
        raw = json.dumps(body)
        with self._lock:
            for i, (match, step) in enumerate(self._script):
                if match is not None and match in raw:
                    del self._script[i]
                    return step
            return _Reply([text("ok")])

    def _next_step(self, body: dict[str, Any]) -> _Step:
        raw = json.dumps(body)
        with self._lock:
            for i, (match, step) in enumerate(self._script):
                if match is None or match in raw:
                    del self._script[i]
                    return step
            return _Reply([text("ok")])

    # -- lifecycle -----------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "FakeAnthropic is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeAnthropic:
        handler = type("_BoundHandler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # how long close() waits for the loop
            name="fake-anthropic",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()  # releases hung requests
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    fake: FakeAnthropic
    protocol_version = "HTTP/1.1"  # keep-alive, chunked streaming, like the real API

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("fake-anthropic: " + format, *args)

    # -- plumbing ------------------------------------------------------------

    def _read_body(self) -> Any:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.headers.get("content-encoding", "").lower() == "gzip":
            raw = gzip.decompress(raw)  # the CLI can gzip bodies (CLAUDE_CODE_GZIP_REQUEST_BODIES)
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        headers = {"request-id": _request_id(), **(headers or {})}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(
        self, status: int, error_type: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        rid = _request_id()
        body = {
            "type": "error",
            "error": {"type": error_type, "message": message},
            "request_id": rid,
        }
        self._send_json(status, body, {"request-id": rid, **(headers or {})})

    def _authorized(self) -> bool:
        key = self.headers.get("x-api-key")
        if key is None:
            auth = self.headers.get("authorization", "")
            key = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else None
        return key == self.fake.api_key

    def _record(self, body: Any, kind: Kind) -> Seen:
        parts = urlsplit(self.path)
        seen = Seen(self.command, parts.path, parts.query, dict(self.headers.items()), body, kind)
        with self.fake._lock:
            self.fake.seen.append(seen)
            if kind == "other":
                self.fake.unexpected.append(seen)
            if kind == "main":
                self.fake.requests.append(body)
        return seen

    # -- routes --------------------------------------------------------------

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith("/v1/models"):
            self._record(None, "models")
            if not self._authorized():
                return self._send_error(401, "authentication_error", "invalid x-api-key")
            return self._send_json(200, _models_page())
        self._record(None, "other")
        log.warning("fake-anthropic: unexpected GET %s", self.path)
        self._send_error(404, "not_found_error", f"Not found: {path}")

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        body = self._read_body()
        if path == "/v1/messages/count_tokens":
            self._record(body, "count_tokens")
            if not self._authorized():
                return self._send_error(401, "authentication_error", "invalid x-api-key")
            return self._send_json(200, {"input_tokens": _estimate_tokens(body)})
        if path != "/v1/messages":
            self._record(body, "other")
            log.warning("fake-anthropic: unexpected POST %s", self.path)
            return self._send_error(404, "not_found_error", f"Not found: {path}")
        if not isinstance(body, dict):
            self._record(body, "other")
            return self._send_error(400, "invalid_request_error", "body must be a JSON object")
        main = is_main_loop(body)
        self._record(body, "main" if main else "aux")
        if not self._authorized():
            return self._send_error(401, "authentication_error", "invalid x-api-key")
        refused = invalid_request(body)
        if refused is not None:
            with self.fake._lock:
                self.fake.refused.append(refused)
            return self._send_error(400, "invalid_request_error", refused)
        # A request without tools (a side request of the CLI, or a plain chat
        # job) only takes a step scripted with a ``match`` it contains.
        step = self.fake._next_step(body) if main else self.fake._matched_step(body)
        if isinstance(step, _Hang):
            self.fake._closing.wait()
            self.close_connection = True
            return None
        if isinstance(step, _Failure):
            return self._send_error(step.status, step.error_type, step.message, step.headers)
        message = _message(body, step)
        if body.get("stream"):
            return self._stream(message)
        return self._send_json(200, message)

    def _stream(self, message: dict[str, Any]) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("request-id", _request_id())
        self.end_headers()
        for event, data in _events(message):
            chunk = f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


# -- wire shapes -----------------------------------------------------------------


def invalid_request(body: dict[str, Any]) -> str | None:
    """Why the real Messages API would refuse ``body`` with 400
    invalid_request_error (None: it would take it). Checked as the API
    reference documents POST /v1/messages: ``model`` (string), ``max_tokens``
    (integer >= 0) and ``messages`` (a non-empty array) are required; each
    message has a ``role`` of ``user`` or ``assistant`` (or ``system``: the
    real ``claude`` CLI sends mid-conversation system messages, so the API
    takes them; no other role, such as OpenAI's ``tool``) and ``content``, a
    string or an array of content blocks each with a ``type``, non-empty in
    every message but an optional final assistant one (a prefill); a text
    block's ``text`` is a non-empty string. Consecutive turns of one role are
    combined by the API, not refused, so they are not refused here either."""
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            return f"{name}: Field required"
    if not isinstance(body["model"], str) or not body["model"]:
        return "model: Input should be a valid string"
    tokens = body["max_tokens"]
    if not isinstance(tokens, int) or isinstance(tokens, bool):
        return "max_tokens: Input should be a valid integer"
    if tokens < 0:
        return "max_tokens: Input should be greater than or equal to 0"
    messages = body["messages"]
    if not isinstance(messages, list):
        return "messages: Input should be a valid list"
    if not messages:
        return "messages: at least one message is required"
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            return f"{where}: Input should be a valid dictionary"
        if "role" not in message or "content" not in message:
            return f"{where}.{'role' if 'role' not in message else 'content'}: Field required"
        if message["role"] not in ("user", "assistant", "system"):
            return f"{where}.role: Input should be 'user' or 'assistant'"
        content = message["content"]
        last_assistant = i == len(messages) - 1 and message["role"] == "assistant"
        if isinstance(content, str):
            blocks: list[Any] = [] if not content else [{"type": "text", "text": content}]
        elif isinstance(content, list):
            blocks = content
        else:
            return f"{where}.content: Input should be a valid string or list"
        if not blocks and not last_assistant:
            return (
                f"{where}: all messages must have non-empty content except for the "
                "optional final assistant message"
            )
        for j, block in enumerate(blocks):
            if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                return f"{where}.content.{j}.type: Field required"
            if block["type"] == "text" and (
                not isinstance(block.get("text"), str) or not block["text"]
            ):
                return f"{where}.content.{j}: text content blocks must be non-empty"
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        return "system: Input should be a valid string or list"
    if "stream" in body and not isinstance(body["stream"], bool):
        return "stream: Input should be a valid boolean"
    return None


def _request_id() -> str:
    return f"req_{uuid.uuid4().hex[:24]}"


def _estimate_tokens(body: Any) -> int:
    return max(1, len(json.dumps(body)) // 4)


def _message(request: dict[str, Any], reply: _Reply) -> dict[str, Any]:
    content = reply.content
    output_tokens = reply.output_tokens or max(1, len(json.dumps(content)) // 4)
    input_tokens = reply.input_tokens or _estimate_tokens(request.get("messages", []))
    has_tool = any(block["type"] == "tool_use" for block in content)
    stop_reason = reply.stop_reason or ("tool_use" if has_tool else "end_turn")
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": request.get("model", "claude-sonnet-4-5"),
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
        },
    }


def _events(message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start}),
        ("ping", {"type": "ping"}),
    ]
    for index, block in enumerate(message["content"]):
        # Like the API, send each block's content in more than one delta.
        if block["type"] == "tool_use":
            empty = {**block, "input": {}}
            deltas = [
                {"type": "input_json_delta", "partial_json": part}
                for part in _halves(json.dumps(block["input"]))
            ]
        else:
            empty = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": part} for part in _halves(block["text"])]
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": empty},
            )
        )
        for delta in deltas:
            events.append(
                (
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def _halves(value: str) -> list[str]:
    cut = len(value) // 2
    return [part for part in (value[:cut], value[cut:]) if part] or [value]


def _models_page() -> dict[str, Any]:
    models = ["claude-sonnet-4-5-20250929", "claude-opus-4-1-20250805", "claude-haiku-4-5-20251001"]
    data = [
        {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
        for m in models
    ]
    return {"data": data, "has_more": False, "first_id": models[0], "last_id": models[-1]}
