"""A fake of the OpenAI Responses API that the real `codex exec` CLI can run against.

A real HTTP server on 127.0.0.1 (stdlib, one thread per connection) that speaks
the wire format: OpenAI's JSON error shape, `text/event-stream` streaming with
the real event sequence, bearer auth. Tests script the model's responses; see
tests/fakes/CODEX_NOTES.md for how the CLI behaves against it.

    with FakeResponses() as fake:
        fake.reply(text("I will write it"), shell("echo hi > a.txt"))
        fake.reply(text("done"))
        ...  # run `codex exec` with a provider whose base_url is fake.url
        assert fake.requests[1]["input"][-1]["type"] == "function_call_output"
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

Item = dict[str, Any]

# codex 0.169's tools for a model such as gpt-5.5 (see CODEX_NOTES.md).
SHELL_TOOL = "exec_command"  # function tool, arguments {"cmd": "<shell string>", ...}
PATCH_TOOL = "apply_patch"  # custom (freeform, lark grammar) tool, input = patch text


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def text(value: str) -> Item:
    """An assistant message output item."""
    return {
        "id": _id("msg"),
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": value}],
    }


def function_call(name: str, arguments: dict[str, Any], call_id: str | None = None) -> Item:
    """A function_call output item (the call_id is generated when not given)."""
    return {
        "id": _id("fc"),
        "type": "function_call",
        "status": "completed",
        "arguments": json.dumps(arguments),
        "call_id": call_id or _id("call"),
        "name": name,
    }


def shell(command: str, *, workdir: str | None = None, yield_time_ms: int | None = None) -> Item:
    """A call of codex's shell tool (`exec_command`) running `command` with the user's shell."""
    arguments: dict[str, Any] = {"cmd": command}
    if workdir is not None:
        arguments["workdir"] = workdir
    if yield_time_ms is not None:
        arguments["yield_time_ms"] = yield_time_ms
    return function_call(SHELL_TOOL, arguments)


def apply_patch(patch: str, call_id: str | None = None) -> Item:
    """A call of codex's freeform `apply_patch` tool ("*** Begin Patch ... *** End Patch")."""
    return {
        "id": _id("ctc"),
        "type": "custom_tool_call",
        "status": "completed",
        "call_id": call_id or _id("call"),
        "name": PATCH_TOOL,
        "input": patch,
    }


def codex_config(base_url: str, *, env_key: str = "FAKE_API_KEY", model: str = "gpt-5.5") -> str:
    """A $CODEX_HOME/config.toml that points codex 0.169 at `base_url` and nowhere else.

    `plugins = false` stops the plugin sync (github.com, api.github.com,
    chatgpt.com) and `analytics.enabled = false` the event upload
    (ab.chatgpt.com); the zero retries make HTTP errors fail the turn at once.
    """
    return f"""\
model = "{model}"
model_provider = "fake"

[model_providers.fake]
name = "fake"
base_url = "{base_url}"
env_key = "{env_key}"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0

[features]
plugins = false

[analytics]
enabled = false
"""


@dataclass
class _Reply:
    output: list[Item]


@dataclass
class _Failure:
    status: int
    error: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _StreamFailure:
    error: dict[str, Any]


@dataclass
class _Hang:
    midstream: bool = False


_Step = _Reply | _Failure | _StreamFailure | _Hang

_STATUS_ERRORS: dict[int, tuple[str, str | None]] = {  # status -> (type, code)
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", None),
}


@dataclass
class Seen:
    """One HTTP request the fake received."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any
    kind: str  # "turn" (main loop), "aux" (other /responses calls), "models", "other"


def request_kind(headers: dict[str, str]) -> str:
    """codex's own label for a /responses request ("turn", "compaction", ...).

    codex sends it in the `x-codex-turn-metadata` JSON header; a request
    without it is treated as a turn.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        metadata = json.loads(lowered.get("x-codex-turn-metadata", "{}"))
    except ValueError:
        return "turn"
    kind = metadata.get("request_kind", "turn") if isinstance(metadata, dict) else "turn"
    return str(kind)


class FakeResponses:
    def __init__(self, api_key: str = "sk-test", model: str = "gpt-5.5") -> None:
        self.api_key = api_key
        self.model = model  # listed by GET /v1/models
        self.requests: list[dict[str, Any]] = []  # JSON bodies of main-loop (turn) requests
        self.seen: list[Seen] = []  # every request, in order
        self.unexpected: list[Seen] = []  # requests to endpoints the fake does not know
        self._script: deque[_Step] = deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- scripting -----------------------------------------------------------

    def reply(self, *output: Item) -> None:
        """Enqueue one model response (its output items) for the next turn request."""
        with self._lock:
            self._script.append(_Reply(list(output)))

    def fail(
        self,
        status: int,
        *,
        headers: dict[str, str] | None = None,
        message: str | None = None,
        type: str | None = None,
        code: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Enqueue an HTTP error with OpenAI's JSON error body for the next turn request.

        `extra` adds fields to the error object, e.g. the ChatGPT backend's usage
        limit: `type="usage_limit_reached", extra={"plan_type": "plus", "resets_at": ts}`.
        """
        default_type, default_code = _STATUS_ERRORS.get(status, ("server_error", None))
        error = {
            "message": message or f"fake error {status}",
            "type": type or default_type,
            "param": None,
            "code": code if code is not None else default_code,
            **(extra or {}),
        }
        with self._lock:
            self._script.append(_Failure(status, error, dict(headers or {})))

    def fail_stream(self, code: str, message: str) -> None:
        """Enqueue a 200 stream that ends in `response.failed` with this error."""
        with self._lock:
            self._script.append(_StreamFailure({"code": code, "message": message}))

    def hang(self, *, midstream: bool = False) -> None:
        """Enqueue: accept the next turn request and never answer it (until close).

        With `midstream`, send the 200 headers, `response.created` and
        `response.in_progress` first, then stall.
        """
        with self._lock:
            self._script.append(_Hang(midstream))

    def _next_step(self) -> _Step:
        with self._lock:
            return self._script.popleft() if self._script else _Reply([text("ok")])

    @property
    def pending(self) -> int:
        """Scripted steps not consumed yet."""
        with self._lock:
            return len(self._script)

    # -- lifecycle -----------------------------------------------------------

    @property
    def url(self) -> str:
        """The provider base_url for codex (it appends /responses and /models)."""
        assert self._server is not None, "FakeResponses is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def start(self) -> FakeResponses:
        handler = type("_BoundHandler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # quick shutdown()
            name="fake-responses",
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

    def __enter__(self) -> FakeResponses:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    fake: FakeResponses
    protocol_version = "HTTP/1.1"  # keep-alive, chunked streaming, like the real API

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("fake-responses: " + format, *args)

    # -- plumbing ------------------------------------------------------------

    def _read_body(self) -> Any:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
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
        self.send_header("x-request-id", _id("req"))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(
        self, status: int, error: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        self._send_json(status, {"error": error}, headers)

    def _not_found(self, path: str) -> None:
        error = {
            "message": f"Invalid URL ({self.command} {path})",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
        self._send_error(404, error)

    def _authorized(self) -> bool:
        if self.headers.get("authorization", "") == f"Bearer {self.fake.api_key}":
            return True
        error = {
            "message": "Incorrect API key provided. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
        self._send_error(401, error)
        return False

    def _record(self, body: Any, kind: str) -> None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        seen = Seen(self.command, urlsplit(self.path).path, headers, body, kind)
        with self.fake._lock:
            self.fake.seen.append(seen)
            if kind == "other":
                self.fake.unexpected.append(seen)
            if kind == "turn":
                self.fake.requests.append(body)

    # -- routes --------------------------------------------------------------

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path.rstrip("/") == "/v1/models":
            self._record(None, "models")
            if self._authorized():
                self._send_json(200, _models_page(self.fake.model))
            return
        self._record(None, "other")
        log.warning("fake-responses: unexpected GET %s", self.path)
        self._not_found(path)

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        body = self._read_body()
        if path != "/v1/responses" or not isinstance(body, dict):
            self._record(body, "other")
            log.warning("fake-responses: unexpected POST %s", self.path)
            return self._not_found(path)
        turn = request_kind(dict(self.headers.items())) == "turn"
        self._record(body, "turn" if turn else "aux")
        if not self._authorized():
            return None
        step = self.fake._next_step() if turn else _Reply([text("ok")])
        if isinstance(step, _Hang):
            if step.midstream:
                self._stream(_events(body, _Reply([]))[:2], finish=False)
            self.fake._closing.wait()
            self.close_connection = True
            return None
        if isinstance(step, _Failure):
            return self._send_error(step.status, step.error, step.headers)
        if not body.get("stream"):
            return self._send_json(200, _response(body, step, "completed"))
        self._stream(_events(body, step))

    def _stream(self, events: list[dict[str, Any]], finish: bool = True) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("x-request-id", _id("req"))
        self.end_headers()
        for number, event in enumerate(events):
            event["sequence_number"] = number
            chunk = f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        if finish:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()


# -- wire shapes -----------------------------------------------------------------


def _tokens(value: Any) -> int:
    return max(1, len(json.dumps(value)) // 4)


def _response(
    request: dict[str, Any], step: _Reply | _StreamFailure, status: str
) -> dict[str, Any]:
    """A Response object; `usage` and `output` are filled in only once it is finished."""
    done = status == "completed"
    output = step.output if isinstance(step, _Reply) and done else []
    usage = None
    if done:
        input_tokens, output_tokens = _tokens(request.get("input")), _tokens(output)
        usage = {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        }
    return {
        "id": _id("resp"),
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "error": step.error if isinstance(step, _StreamFailure) and status == "failed" else None,
        "incomplete_details": None,
        "instructions": request.get("instructions"),
        "model": request.get("model", "gpt-5.5"),
        "output": output,
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "reasoning": request.get("reasoning"),
        "store": request.get("store", False),
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": [],  # the real API echoes them; codex ignores them
        "usage": usage,
    }


def _item_events(index: int, item: Item) -> list[dict[str, Any]]:
    """The events that stream one output item: added, its deltas, done."""
    ids = {"item_id": item["id"], "output_index": index}
    kind = item["type"]
    if kind == "message":
        started: Item = {**item, "status": "in_progress", "content": []}
    elif kind == "function_call":
        started = {**item, "status": "in_progress", "arguments": ""}
    elif kind == "custom_tool_call":
        started = {**item, "status": "in_progress", "input": ""}
    else:
        started = item
    events: list[dict[str, Any]] = [
        {"type": "response.output_item.added", "output_index": index, "item": started}
    ]
    if kind == "message":
        for content_index, part in enumerate(item["content"]):
            at = {**ids, "content_index": content_index}
            value = part["text"]
            events.append(
                {"type": "response.content_part.added", **at, "part": {**part, "text": ""}}
            )
            events.extend(
                {"type": "response.output_text.delta", **at, "delta": piece, "logprobs": []}
                for piece in _pieces(value)
            )
            events.append(
                {"type": "response.output_text.done", **at, "text": value, "logprobs": []}
            )
            events.append({"type": "response.content_part.done", **at, "part": part})
    elif kind == "function_call":
        events.extend(
            {"type": "response.function_call_arguments.delta", **ids, "delta": piece}
            for piece in _pieces(item["arguments"])
        )
        events.append(
            {
                "type": "response.function_call_arguments.done",
                **ids,
                "name": item["name"],
                "arguments": item["arguments"],
            }
        )
    elif kind == "custom_tool_call":
        events.extend(
            {"type": "response.custom_tool_call_input.delta", **ids, "delta": piece}
            for piece in _pieces(item["input"])
        )
        events.append(
            {"type": "response.custom_tool_call_input.done", **ids, "input": item["input"]}
        )
    events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    return events


def _events(request: dict[str, Any], step: _Reply | _StreamFailure) -> list[dict[str, Any]]:
    started = _response(request, step, "in_progress")
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
    ]
    if isinstance(step, _StreamFailure):
        finished = {**_response(request, step, "failed"), "id": started["id"]}
        return [*events, {"type": "response.failed", "response": finished}]
    for index, item in enumerate(step.output):
        events.extend(_item_events(index, item))
    finished = {**_response(request, step, "completed"), "id": started["id"]}
    return [*events, {"type": "response.completed", "response": finished}]


def _pieces(value: str, size: int = 16) -> list[str]:
    """Split a streamed string into deltas (one empty delta for an empty string)."""
    return [value[i : i + size] for i in range(0, len(value), size)] or [""]


def _models_page(model: str) -> dict[str, Any]:
    data = [{"id": model, "object": "model", "created": 1_700_000_000, "owned_by": "openai"}]
    return {"object": "list", "data": data}
