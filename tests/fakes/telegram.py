"""A fake Telegram Bot API server speaking the real wire format
(https://core.telegram.org/bots/api): ``POST /bot<token>/<method>`` with a
JSON (or form) body, method names case-insensitive; answers
``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code": N,
"description": "...", "parameters": {"retry_after": S}}``.

- ``getUpdates`` (offset, limit 1-100, timeout): a long poll that answers as
  soon as an update is there or after ``timeout`` seconds; updates below
  ``offset`` are confirmed and never returned again; a second poll ends the
  first with 409 ("Conflict: terminated by other getUpdates request ...").
- ``sendMessage`` (chat_id, text, message_thread_id): refuses what Telegram
  refuses: no chat_id, an empty text, a text over 4096 characters (UTF-16
  code units, as Telegram counts), a chat the bot never met.
- A wrong token is 401 "Unauthorized"; an unknown method 404 "Not Found".

The test side: ``user_says(chat_id, text)`` queues an incoming message,
``sent`` holds what the bot sent, ``fail(429, retry_after=2)`` scripts the
next answers of a method, ``refuse_sends(502)`` fails every sendMessage
until called with None. A real HTTP server on loopback, in a thread.

    with FakeTelegram() as tg:
        tg.user_says(42, "hello")
        tg.wait_sent(1)
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

LIMIT = 4096
CONFLICT = (
    "Conflict: terminated by other getUpdates request; "
    "make sure that only one bot instance is running"
)
BOT = {"id": 7000001, "is_bot": True, "first_name": "corral", "username": "corral_test_bot"}


@dataclass
class _Failure:
    code: int
    description: str
    retry_after: int | None = None


class FakeTelegram:
    def __init__(self, token: str = "7000001:AAFakeTokenForTests_abcdefghijklmn") -> None:
        self.token = token
        self.updates: list[dict[str, Any]] = []  # not yet confirmed
        self.sent: list[dict[str, Any]] = []  # messages the bot sent
        self.refused: list[tuple[str, dict[str, Any], str]] = []  # (method, params, why)
        self.polls = 0  # getUpdates calls answered
        self.offsets: list[int | None] = []  # the offset of each getUpdates
        self.chats: dict[int, dict[str, Any]] = {}
        self._next_update = 100_000
        self._next_message = 1
        self._script: dict[str, deque[_Failure]] = {}
        self._refuse_sends: int | None = None
        self._poll_generation = 0
        self._cond = threading.Condition()
        self._server: ThreadingHTTPServer | None = None

    # -- the test's side -----------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def user_says(
        self,
        chat_id: int,
        text: str,
        *,
        user_id: int | None = None,
        chat_type: str = "private",
        thread_id: int | None = None,
    ) -> dict[str, Any]:
        """A user writes to the bot: an update for getUpdates. Returns the update."""
        with self._cond:
            user = {"id": user_id or chat_id, "is_bot": False, "first_name": f"user{user_id}"}
            chat = {"id": chat_id, "type": chat_type}
            if chat_type == "private":
                chat["first_name"] = user["first_name"]
            else:
                chat["title"] = f"group {chat_id}"
            self.chats[chat_id] = chat
            message: dict[str, Any] = {
                "message_id": self._next_message,
                "from": user,
                "chat": chat,
                "date": int(time.time()),
                "text": text,
            }
            if text.startswith("/"):
                word = text.split()[0]
                message["entities"] = [
                    {
                        "offset": 0,
                        "length": len(word.encode("utf-16-le")) // 2,
                        "type": "bot_command",
                    }
                ]
            if thread_id is not None:
                message["message_thread_id"] = thread_id
                message["is_topic_message"] = True
            self._next_message += 1
            update = {"update_id": self._next_update, "message": message}
            self._next_update += 1
            self.updates.append(update)
            self._cond.notify_all()
            return update

    def fail(
        self, method: str, code: int, *, retry_after: int | None = None, times: int = 1
    ) -> None:
        """The next ``times`` calls of ``method`` fail with ``code``."""
        description = {
            429: f"Too Many Requests: retry after {retry_after or 1}",
            500: "Internal Server Error",
            502: "Bad Gateway",
            403: "Forbidden: bot was blocked by the user",
            409: CONFLICT,
        }.get(code, "Bad Request")
        with self._cond:
            queue = self._script.setdefault(method.lower(), deque())
            for _ in range(times):
                queue.append(_Failure(code, description, retry_after if code == 429 else None))

    def refuse_sends(self, code: int | None) -> None:
        """Fail every sendMessage with ``code`` (None: accept them again)."""
        with self._cond:
            self._refuse_sends = code

    def sent_to(self, chat_id: int) -> list[str]:
        with self._cond:
            return [m["text"] for m in self.sent if m["chat"]["id"] == chat_id]

    def wait_sent(self, n: int, *, chat_id: int | None = None, timeout: float = 30.0) -> list[str]:
        """Wait until ``n`` messages were sent (to ``chat_id``); returns their texts."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                texts = [
                    m["text"] for m in self.sent if chat_id is None or m["chat"]["id"] == chat_id
                ]
                if len(texts) >= n:
                    return texts
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(texts)} messages sent, not {n}: {texts!r}")
                self._cond.wait(left)

    def wait_polled(self, offset: int, timeout: float = 30.0) -> None:
        """Wait until a getUpdates came with at least ``offset`` (updates below it confirmed)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(o is not None and o >= offset for o in self.offsets):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no getUpdates with offset >= {offset}: {self.offsets}")
                self._cond.wait(left)

    def start(self) -> FakeTelegram:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self  # type: ignore[attr-defined]
        # poll_interval: how long close() waits for the loop (0.5 s by default)
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def close(self) -> None:
        if self._server is not None:
            with self._cond:
                self._poll_generation += 1
                self._cond.notify_all()
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeTelegram:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the Bot API's side --------------------------------------------------------------

    def _scripted(self, method: str) -> _Failure | None:
        queue = self._script.get(method)
        return queue.popleft() if queue else None

    def get_updates(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        try:
            offset = int(params["offset"]) if params.get("offset") is not None else None
            limit = int(params.get("limit", 100))
            timeout = int(params.get("timeout", 0))
        except (TypeError, ValueError):
            return _error(400, "Bad Request: wrong parameter value")
        if not 1 <= limit <= 100:
            limit = 100  # Telegram clamps it
        with self._cond:
            self.offsets.append(offset)
            self._cond.notify_all()
            failure = self._scripted("getupdates")
            if failure is not None:
                return _failure(failure)
            if offset is not None:
                self.updates = [u for u in self.updates if u["update_id"] >= offset]
            self._poll_generation += 1
            mine = self._poll_generation
            deadline = time.monotonic() + timeout
            while not self.updates:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
                if self._poll_generation != mine:
                    return _error(409, CONFLICT)
            self.polls += 1
            return 200, {"ok": True, "result": list(self.updates[:limit])}

    def send_message(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._cond:
            failure = self._scripted("sendmessage")
            if failure is None and self._refuse_sends is not None:
                failure = _Failure(self._refuse_sends, "Internal Server Error")
            chat_id = params.get("chat_id")
            text = params.get("text")
            why: str | None = None
            if failure is not None:
                self.refused.append(("sendMessage", params, failure.description))
                return _failure(failure)
            if chat_id in (None, ""):
                why = "Bad Request: chat_id is empty"
            elif not isinstance(text, str) or not text.strip():
                why = "Bad Request: message text is empty"
            elif len(text.encode("utf-16-le")) // 2 > LIMIT:
                why = "Bad Request: message is too long"
            else:
                try:
                    chat = self.chats.get(int(chat_id))
                except (TypeError, ValueError):
                    chat = None
                if chat is None:
                    why = "Bad Request: chat not found"
            if why is not None:
                self.refused.append(("sendMessage", params, why))
                return _error(400, why)
            assert isinstance(text, str)
            message: dict[str, Any] = {
                "message_id": self._next_message,
                "from": BOT,
                "chat": chat,
                "date": int(time.time()),
                "text": text,
            }
            if params.get("message_thread_id") is not None:
                message["message_thread_id"] = int(params["message_thread_id"])
                message["is_topic_message"] = True
            self._next_message += 1
            self.sent.append(message)
            self._cond.notify_all()
            return 200, {"ok": True, "result": message}


def _error(
    code: int, description: str, retry_after: int | None = None
) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if retry_after is not None:
        body["parameters"] = {"retry_after": retry_after}
    return code, body


def _failure(f: _Failure) -> tuple[int, dict[str, Any]]:
    return _error(f.code, f.description, f.retry_after)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, status: int, data: dict[str, Any]) -> None:
        raw = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _params(self) -> dict[str, Any] | None:
        parts = urlsplit(self.path)
        params: dict[str, Any] = {k: v[0] for k, v in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if raw and kind == "application/json":
            try:
                body = json.loads(raw)
            except ValueError:
                return None
            if not isinstance(body, dict):
                return None
            params.update(body)
        elif raw and kind == "application/x-www-form-urlencoded":
            params.update({k: v[0] for k, v in parse_qs(raw.decode()).items()})
        return params

    def _handle(self) -> None:
        fake: FakeTelegram = self.server.fake  # type: ignore[attr-defined]
        path = urlsplit(self.path).path
        prefix, _, method = path.rpartition("/")
        if not prefix.startswith("/bot"):
            self._answer(*_error(404, "Not Found"))
            return
        if prefix.removeprefix("/bot") != fake.token:
            self._answer(*_error(401, "Unauthorized"))
            return
        params = self._params()
        if params is None:
            self._answer(*_error(400, "Bad Request: can't parse JSON"))
            return
        method = method.lower()
        if method == "getupdates":
            self._answer(*fake.get_updates(params))
        elif method == "sendmessage":
            self._answer(*fake.send_message(params))
        elif method == "getme":
            self._answer(200, {"ok": True, "result": BOT})
        else:
            self._answer(*_error(404, "Not Found"))

    do_GET = _handle
    do_POST = _handle
