"""A fake OpenAI-compatible chat server (what Ollama's /v1, vLLM and llama.cpp
serve): ``POST /v1/chat/completions`` (JSON, or SSE chunks ending with
``data: [DONE]``, usage in a last chunk when ``stream_options.include_usage``),
``GET /v1/models`` and ``POST /v1/embeddings``, with bearer auth and
scriptable replies and errors. A real HTTP server on loopback, in a thread.

    with FakeOpenAI() as fake:
        fake.reply("Paris", match="capital")
        fake.fail(429, retry_after=30)
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class _Reply:
    text: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    delay: float = 0.0  # seconds between streamed pieces


@dataclass
class _Failure:
    status: int
    message: str
    retry_after: float | None = None
    echo_key: bool = False  # as some servers do: "invalid key: <the key sent>"


ARGUMENT_FRAGMENT = 7  # characters of a tool call's arguments per streamed chunk


def tool_call_chunks(index: int, call: dict[str, Any]) -> list[dict[str, Any]]:
    """A tool call as the real API streams it: a first delta with its
    ``index``, ``id``, ``type`` and the function's ``name`` (``arguments``
    empty), then only ``index`` and a fragment of ``arguments`` per chunk —
    the client concatenates them (the fragments are not JSON by themselves)."""
    function = call.get("function", {})
    arguments = function.get("arguments", "")
    first = {
        "index": index,
        "id": call.get("id"),
        "type": call.get("type", "function"),
        "function": {"name": function.get("name", ""), "arguments": ""},
    }
    rest = [
        {"index": index, "function": {"arguments": arguments[at : at + ARGUMENT_FRAGMENT]}}
        for at in range(0, len(arguments), ARGUMENT_FRAGMENT)
    ]
    return [first, *rest]


class FakeOpenAI:
    def __init__(self, api_key: str = "sk-fake", models: tuple[str, ...] = ("qwen2.5:7b",)) -> None:
        self.api_key = api_key
        self.models = models
        self.requests: list[dict[str, Any]] = []  # chat request bodies
        self.embed_requests: list[dict[str, Any]] = []
        self.refused: list[str] = []  # why each invalid chat request was refused (400)
        self.stopped_early = False  # the client closed a stream before its end
        self._script: deque[tuple[str | None, _Reply | _Failure]] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def reply(
        self,
        text: str,
        *,
        tool_calls: list[dict[str, Any]] | None = None,
        delay: float = 0.0,
        match: str | None = None,
    ) -> None:
        with self._lock:
            self._script.append((match, _Reply(text, tool_calls or [], delay)))

    def fail(
        self,
        status: int,
        message: str = "fake error",
        *,
        retry_after: float | None = None,
        match: str | None = None,
        echo_key: bool = False,
    ) -> None:
        with self._lock:
            self._script.append((match, _Failure(status, message, retry_after, echo_key)))

    def _next(self, body: dict[str, Any]) -> _Reply | _Failure:
        raw = json.dumps(body)
        with self._lock:
            self.requests.append(body)
            for i, (match, step) in enumerate(self._script):
                if match is None or match in raw:
                    del self._script[i]
                    return step
        return _Reply("ok")

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> FakeOpenAI:
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

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


ROLES = ("system", "developer", "user", "assistant", "tool", "function")


def invalid_chat_request(body: Any) -> tuple[str, str | None, str | None] | None:
    """Why the real ``POST /v1/chat/completions`` would answer 400
    invalid_request_error, as ``(message, param, code)`` (None: it takes it):
    ``model`` (a string) and ``messages`` (a non-empty array) are required;
    each message is an object with a known ``role`` (a ``tool`` message also
    names its ``tool_call_id``); ``stream`` is a boolean."""
    if not isinstance(body, dict):
        return "We could not parse the JSON body of your request.", None, None
    if "model" not in body:
        return "you must provide a model parameter", None, None
    if not isinstance(body["model"], str):
        return "Invalid type for 'model': expected a string.", "model", "invalid_type"
    if "messages" not in body:
        return "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
    messages = body["messages"]
    if not isinstance(messages, list):
        return "Invalid type for 'messages': expected an array.", "messages", "invalid_type"
    if not messages:
        return (
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            "messages",
            "empty_array",
        )
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            return f"Invalid type for '{where}': expected an object.", where, "invalid_type"
        if "role" not in message:
            return (
                f"Missing required parameter: '{where}.role'.",
                f"{where}.role",
                ("missing_required_parameter"),
            )
        if message["role"] not in ROLES:
            return (
                f"Invalid value: '{message['role']}'. Supported values are: 'system', "
                "'assistant', 'user', 'function', 'tool', and 'developer'.",
                f"{where}.role",
                "invalid_value",
            )
        if message["role"] == "tool" and "tool_call_id" not in message:
            return (
                f"Missing required parameter: '{where}.tool_call_id'.",
                f"{where}.tool_call_id",
                "missing_required_parameter",
            )
    if "stream" in body and not isinstance(body["stream"], bool):
        return "Invalid type for 'stream': expected a boolean.", "stream", "invalid_type"
    return None


def _tokens(value: Any) -> int:
    return max(1, len(json.dumps(value)) // 4)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenAI
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        kind = {401: "invalid_api_key", 404: "not_found", 429: "rate_limit_exceeded"}
        self._json(
            status,
            {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": kind.get(status),
                }
            },
            headers,
        )

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {self.fake.api_key}":
            self._error(401, "Incorrect API key provided")
            return False
        return True

    def do_GET(self) -> None:
        if not self._authorized():
            return
        if self.path.rstrip("/") == "/v1/models":
            data = [
                {"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"}
                for m in self.fake.models
            ]
            return self._json(200, {"object": "list", "data": data})
        self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            body = None
        if not self._authorized():
            return
        path = self.path.split("?")[0].rstrip("/")
        if path == "/v1/embeddings" and isinstance(body, dict) and "input" in body:
            self.fake.embed_requests.append(body)
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            data = [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": [round((len(str(x)) + k) / 100, 3) for k in range(4)],
                }
                for i, x in enumerate(inputs)
            ]
            usage = {"prompt_tokens": _tokens(inputs), "total_tokens": _tokens(inputs)}
            return self._json(
                200, {"object": "list", "data": data, "model": body["model"], "usage": usage}
            )
        if path != "/v1/chat/completions":
            return self._error(404, f"no route {self.path}")
        refused = invalid_chat_request(body)
        if refused is not None:
            message, param, code = refused
            with self.fake._lock:
                self.fake.refused.append(message)
            return self._json(
                400,
                {
                    "error": {
                        "message": message,
                        "type": "invalid_request_error",
                        "param": param,
                        "code": code,
                    }
                },
            )
        if body.get("model") not in self.fake.models:
            return self._error(404, f"model '{body.get('model')}' not found")
        step = self.fake._next(body)
        if isinstance(step, _Failure):
            headers = {"retry-after": str(step.retry_after)} if step.retry_after else {}
            message = step.message
            if step.echo_key:
                sent = self.headers.get("Authorization", "").removeprefix("Bearer ")
                message = f"{message}: {sent}"
            return self._error(step.status, message, headers)
        ident = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        created = int(time.time())
        usage = {
            "prompt_tokens": _tokens(body["messages"]),
            "completion_tokens": _tokens(step.text),
            "total_tokens": _tokens(body["messages"]) + _tokens(step.text),
        }
        message: dict[str, Any] = {"role": "assistant", "content": step.text}
        finish = "stop"
        if step.tool_calls:
            message["tool_calls"] = step.tool_calls
            finish = "tool_calls"
        if not body.get("stream"):
            return self._json(
                200,
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": body["model"],
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": usage,
                },
            )
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def chunk(
            delta: dict[str, Any],
            finish_reason: str | None = None,
            use: dict[str, Any] | None = None,
            choices: bool = True,
        ) -> None:
            data: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body["model"],
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
                if choices
                else [],
            }
            if use is not None:
                data["usage"] = use
            raw = f"data: {json.dumps(data)}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(raw), raw))
            self.wfile.flush()

        # vLLM's stream_options.continuous_usage_stats: every chunk carries the
        # usage so far (prompt tokens, completion tokens streamed until then).
        continuous = bool((body.get("stream_options") or {}).get("continuous_usage_stats"))
        sent = ""

        def so_far() -> dict[str, Any] | None:
            if not continuous:
                return None
            done = _tokens(sent) if sent else 0
            prompt = usage["prompt_tokens"]
            return {
                "prompt_tokens": prompt,
                "completion_tokens": done,
                "total_tokens": prompt + done,
            }

        chunk({"role": "assistant", "content": ""}, use=so_far())
        words = step.text.split(" ")
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            sent += piece
            try:
                chunk({"content": piece}, use=so_far())
            except (BrokenPipeError, ConnectionResetError):
                self.fake.stopped_early = True
                return
            if step.delay:
                time.sleep(step.delay)
        for i, call in enumerate(step.tool_calls):
            for piece in tool_call_chunks(i, call):
                chunk({"tool_calls": [piece]})
        chunk({}, finish)
        if (body.get("stream_options") or {}).get("include_usage"):
            chunk({}, use=usage, choices=False)
        done = b"data: [DONE]\n\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(done), done))
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
