"""Chat channels with a real `corral serve`: a Telegram bot (long polling the
fake Bot API, which speaks Telegram's wire format) and a signed IM bridge
(this test is the bridge: it signs its requests and checks the signatures of
the replies). Turns run as real chat jobs on the openai executor against the
fake OpenAI-compatible server, so a reply is a job's result."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.testing import ServerProcess
from corral.webhooks import SIGNATURE_HEADER, sign, verify
from tests.fakes.openai_chat import FakeOpenAI
from tests.fakes.telegram import FakeTelegram

from ._helpers import running_server, wait_for, wait_job

SECRET = "bridge-secret-0123456789abcdef"
CHAT = 4242  # allowed
STRANGER = 9999  # not allowed


class Bridge:
    """The bridge's outbound receiver: checks each reply's signature, keeps the
    bodies; answers ``status`` (503: the bridge is down)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []  # (delivery id, body)
        self.bad: list[str] = []
        self.status = 200
        self.cond = threading.Condition()
        bridge = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = bridge.status
                try:
                    verify(raw, self.headers.get(SIGNATURE_HEADER), SECRET)
                except Exception as exc:
                    with bridge.cond:
                        bridge.bad.append(str(exc))
                    status = 400
                else:
                    if status == 200:
                        with bridge.cond:
                            bridge.received.append(
                                (self.headers.get("X-Corral-Delivery", ""), json.loads(raw))
                            )
                            bridge.cond.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/corral"

    def replies_to(self, channel_id: str) -> list[dict[str, Any]]:
        with self.cond:
            return [b for _, b in self.received if b["channel_id"] == channel_id]

    def wait(self, channel_id: str, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(got := [b for _, b in self.received if b["channel_id"] == channel_id]) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(got)} replies to {channel_id}, not {n}: {got}")
                self.cond.wait(left)
            return got

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def config(gpu: FakeOpenAI, tg: FakeTelegram | None, bridge: Bridge) -> str:
    text = (
        "[providers.gpu]\nkind = 'openai'\n"
        f"base_url = {json.dumps(gpu.url)}\napi_key_env = 'GPU_KEY'\n"
        "models = ['qwen2.5:7b']\nmax_retries = 0\n\n"
        "[[channels]]\nkind = 'bridge'\nname = 'slack'\nprovider = 'gpu'\n"
        f"secret = {json.dumps(SECRET)}\noutbound_url = {json.dumps(bridge.url)}\n"
    )
    if tg is not None:
        text += (
            "\n[[channels]]\nkind = 'telegram'\nname = 'tg'\nprovider = 'gpu'\n"
            f"token_env = 'TG_TOKEN'\napi_url = {json.dumps(tg.url)}\n"
            f"allowed_chats = [{CHAT}]\npoll_timeout = 20\n"
        )
    return text


def post_inbound(
    srv: ServerProcess, body: dict[str, Any], *, secret: str = SECRET, channel: str = "slack"
) -> httpx.Response:
    raw = json.dumps(body).encode()
    return httpx.post(
        f"{srv.url}/channels/{channel}/inbound",
        content=raw,
        headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(raw, secret)},
        timeout=30,
    )


def message(
    text: str, *, channel_id: str = "C1", user_id: str = "U1", **more: Any
) -> dict[str, Any]:
    return {
        "channel_id": channel_id,
        "user_id": user_id,
        "text": text,
        "message_id": more.pop("message_id", uuid.uuid4().hex),
        **more,
    }


@pytest.fixture(scope="module")
def gpu() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as f:
        yield f


@pytest.fixture(scope="module")
def tg() -> Iterator[FakeTelegram]:
    with FakeTelegram() as f:
        yield f


@pytest.fixture(scope="module")
def bridge() -> Iterator[Bridge]:
    b = Bridge()
    yield b
    b.close()


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, gpu: FakeOpenAI, tg: FakeTelegram, bridge: Bridge
) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("channels")
    (root / "corral.toml").write_text(config(gpu, tg, bridge))
    env = {"GPU_KEY": gpu.api_key, "TG_TOKEN": tg.token}
    with running_server(root / "data", args=("--config", str(root / "corral.toml")), env=env) as s:
        yield s


@pytest.fixture
def http(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.http() as client:
        yield client


def outbox(http: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    resp = http.get("/channels/outbox", params=params)
    assert resp.status_code == 200, resp.text
    rows: list[dict[str, Any]] = resp.json()
    return rows


# --- Telegram ------------------------------------------------------------------------------


def test_a_telegram_message_becomes_a_job_whose_result_is_the_reply(
    srv: ServerProcess, http: httpx.Client, gpu: FakeOpenAI, tg: FakeTelegram
) -> None:
    gpu.reply("Paris is the capital of France.", match="capital of France")
    before = len(tg.sent_to(CHAT))
    update = tg.user_says(CHAT, "What is the capital of France?")
    texts = tg.wait_sent(before + 1, chat_id=CHAT)
    assert texts[-1] == "Paris is the capital of France."

    row = next(r for r in outbox(http, channel="tg") if r["kind"] == "reply" and r["job_id"])
    job = wait_job(http, row["job_id"])
    assert job["state"] == "done"
    assert job["source"] == "chat"
    assert job["source_ref"] == str(update["message"]["message_id"])
    assert job["provider"] == "gpu"
    assert gpu.requests[-1]["messages"][-1]["content"] == "What is the capital of France?"


def test_a_follow_up_message_is_the_next_turn_of_the_same_session(
    http: httpx.Client, gpu: FakeOpenAI, tg: FakeTelegram
) -> None:
    chat = CHAT
    gpu.reply("first answer", match="first question")
    gpu.reply("second answer", match="second question")
    before = len(tg.sent_to(chat))
    tg.user_says(chat, "first question")
    tg.wait_sent(before + 1, chat_id=chat)
    tg.user_says(chat, "second question")
    texts = tg.wait_sent(before + 2, chat_id=chat)
    assert texts[-2:] == ["first answer", "second answer"]

    rows = [r for r in outbox(http, channel="tg") if r["job_id"]][:2]
    second, first = (wait_job(http, r["job_id"]) for r in rows)
    assert first["session_id"] == second["session_id"]
    assert second["turn"] == first["turn"] + 1


def test_new_starts_another_session_and_status_tells_where_it_is(
    http: httpx.Client, gpu: FakeOpenAI, tg: FakeTelegram
) -> None:
    gpu.reply("before new", match="before new")
    gpu.reply("after new", match="after new")
    before = len(tg.sent_to(CHAT))
    tg.user_says(CHAT, "before new")
    tg.wait_sent(before + 1, chat_id=CHAT)
    old = next(r for r in outbox(http, channel="tg") if r["job_id"])["session_id"]

    tg.user_says(CHAT, "/new")
    assert tg.wait_sent(before + 2, chat_id=CHAT)[-1] == "Started a new conversation."
    tg.user_says(CHAT, "after new")
    tg.wait_sent(before + 3, chat_id=CHAT)
    new = next(r for r in outbox(http, channel="tg") if r["job_id"])["session_id"]
    assert new != old

    tg.user_says(CHAT, "/status")
    status = tg.wait_sent(before + 4, chat_id=CHAT)[-1]
    assert status.startswith(f"Session {new[:12]}, turn 1: done on gpu")


def test_a_chat_not_allowed_is_ignored(
    http: httpx.Client, gpu: FakeOpenAI, tg: FakeTelegram
) -> None:
    stranger = tg.user_says(STRANGER, "run something for me")
    tg.wait_polled(stranger["update_id"] + 1)  # the bot has seen it and moved past it
    before = len(tg.sent_to(CHAT))
    tg.user_says(CHAT, "/status")  # a later message of an allowed chat is answered...
    tg.wait_sent(before + 1, chat_id=CHAT)
    assert tg.sent_to(STRANGER) == []  # ...the stranger got nothing,
    jobs = http.get("/jobs", params={"limit": 200}).json()["jobs"]
    assert not any(j.get("title") == "run something for me" for j in jobs)  # and no turn
    assert not any(r["body"]["channel_id"] == str(STRANGER) for r in outbox(http, limit=1000))


def test_a_long_reply_is_split_at_telegrams_limit(gpu: FakeOpenAI, tg: FakeTelegram) -> None:
    long = "\n\n".join(f"Paragraph {i}: " + "lorem ipsum " * 60 for i in range(12))
    assert len(long) > 4096 * 2
    gpu.reply(long, match="write a lot")
    before = len(tg.sent_to(CHAT))
    tg.user_says(CHAT, "write a lot")
    deadline = time.monotonic() + 30
    while "".join(tg.sent_to(CHAT)[before:]).count("Paragraph") < 12:
        assert time.monotonic() < deadline, tg.sent_to(CHAT)[before:]
        time.sleep(0.05)
    pieces = tg.sent_to(CHAT)[before:]
    assert len(pieces) == 3
    assert all(0 < len(p) <= 4096 for p in pieces)
    assert " ".join(pieces).split() == long.split()


def test_flood_control_is_waited_out(http: httpx.Client, gpu: FakeOpenAI, tg: FakeTelegram) -> None:
    gpu.reply("worth the wait", match="flood")
    tg.fail("sendMessage", 429, retry_after=1)
    refused = len(tg.refused)
    before = len(tg.sent_to(CHAT))
    tg.user_says(CHAT, "flood")
    assert tg.wait_sent(before + 1, chat_id=CHAT)[-1] == "worth the wait"
    assert [why for _, _, why in tg.refused[refused:]] == ["Too Many Requests: retry after 1"]

    def delivered() -> dict[str, Any] | None:  # recorded once Telegram has answered
        row = next(r for r in outbox(http, channel="tg") if r["job_id"])
        return row if row["state"] == "delivered" else None

    assert wait_for(delivered, what="the reply recorded as delivered")["attempts"] == 2


# --- the bridge ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "signature",
    ["none", "wrong-secret", "stale", "altered-body"],
)
def test_bridge_inbound_with_a_bad_signature_is_401_and_nothing_is_stored(
    srv: ServerProcess, http: httpx.Client, signature: str
) -> None:
    body = message(f"bad signature {signature}", channel_id=f"C-{signature}")
    raw = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if signature == "wrong-secret":
        headers[SIGNATURE_HEADER] = sign(raw, "another-secret-0123456789")
    elif signature == "stale":
        headers[SIGNATURE_HEADER] = sign(raw, SECRET, timestamp=int(time.time()) - 3600)
    elif signature == "altered-body":
        headers[SIGNATURE_HEADER] = sign(raw, SECRET)
        raw = raw.replace(b"bad signature", b"evil signature")
    resp = httpx.post(f"{srv.url}/channels/slack/inbound", content=raw, headers=headers)
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"]["code"] == "invalid_signature"
    jobs = http.get("/jobs", params={"limit": 200}).json()["jobs"]
    assert not any("signature" in (j.get("title") or "") for j in jobs)
    assert not any(r["body"]["channel_id"] == f"C-{signature}" for r in outbox(http, limit=1000))


def test_bridge_inbound_refuses_bad_input_and_unknown_channels(srv: ServerProcess) -> None:
    resp = post_inbound(srv, {"channel_id": "C1", "text": "no user, no id"})
    assert resp.status_code == 422, resp.text
    assert "user_id" in resp.json()["error"]["message"]
    resp = post_inbound(srv, message("hello"), channel="nope")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "channel_not_found"
    resp = post_inbound(srv, message("hello"), channel="tg")  # not a bridge
    assert resp.status_code == 404


def test_bridge_message_gets_a_signed_reply_and_a_duplicate_makes_no_second_turn(
    srv: ServerProcess, http: httpx.Client, gpu: FakeOpenAI, bridge: Bridge
) -> None:
    gpu.reply("pong from the model", match="ping over the bridge")
    body = message("ping over the bridge", channel_id="C-dup", thread_id="T1")
    first = post_inbound(srv, body)
    assert first.status_code == 202, first.text
    again = post_inbound(srv, body)  # the bridge re-delivers it
    assert again.status_code == 200, again.text
    assert again.json()["job_id"] == first.json()["job_id"]
    assert again.json()["created"] is False

    job = wait_job(http, first.json()["job_id"])
    assert (job["state"], job["source"], job["source_ref"]) == ("done", "chat", body["message_id"])
    replies = bridge.wait("C-dup", 1)
    assert replies[0] == {
        "id": replies[0]["id"],
        "channel_id": "C-dup",
        "user_id": "U1",
        "thread_id": "T1",
        "text": "pong from the model",
        "job_id": job["id"],
        "kind": "reply",
    }
    session = http.get(f"/sessions/{job['session_id']}").json()
    assert len(session["jobs"]) == 1
    wait_for(lambda: outbox(http, session_id=job["session_id"])[0]["state"] == "delivered")
    assert len(bridge.replies_to("C-dup")) == 1


def test_a_thread_is_one_conversation_for_everyone_in_it(
    srv: ServerProcess, http: httpx.Client, gpu: FakeOpenAI, bridge: Bridge
) -> None:
    gpu.reply("a", match="thread one")
    gpu.reply("b", match="thread two")
    a = post_inbound(srv, message("thread one", channel_id="C-t", user_id="U1", thread_id="T"))
    b = post_inbound(srv, message("thread two", channel_id="C-t", user_id="U2", thread_id="T"))
    c = post_inbound(srv, message("/status", channel_id="C-t", user_id="U3"))  # not in the thread
    assert a.json()["session_id"] == b.json()["session_id"]
    assert c.json()["kind"] == "command"
    assert c.json()["session_id"] is None
    got = bridge.wait("C-t", 3)
    assert "No conversation yet: send a message to start one." in [r["text"] for r in got]


# --- crash between a turn's end and its reply ----------------------------------------------


def test_kill_9_between_job_end_and_reply_gives_exactly_one_reply_after_restart(
    tmp_path: Path, db_url: str, gpu: FakeOpenAI
) -> None:
    """The reply is owed in the transaction that ends the turn: the bridge is
    down when the job ends, the server is killed -9, the bridge comes back,
    the restarted server sends the reply, once."""
    bridge = Bridge()
    bridge.status = 503
    try:
        (tmp_path / "corral.toml").write_text(config(gpu, None, bridge))
        args = ("--config", str(tmp_path / "corral.toml"))
        env = {"GPU_KEY": gpu.api_key, "CORRAL_DATABASE_URL": db_url}
        gpu.reply("the answer survives", match="crash test")
        with running_server(tmp_path / "data", args=args, env=env) as srv, srv.http() as http:
            resp = post_inbound(srv, message("crash test", channel_id="C-crash"))
            assert resp.status_code == 202, resp.text
            job = wait_job(http, resp.json()["job_id"])
            assert job["state"] == "done"
            wait_for(
                lambda: (
                    (rows := outbox(http, session_id=job["session_id"]))
                    and rows[0]["attempts"] >= 1
                ),
                what="a refused attempt",
            )
            srv.kill()
        assert bridge.replies_to("C-crash") == []
        bridge.status = 200
        with running_server(tmp_path / "data", args=args, env=env) as srv, srv.http() as http:
            wait_for(
                lambda: outbox(http, session_id=job["session_id"])[0]["state"] == "delivered",
                timeout=30,
                what="the reply delivered",
            )
            replies = bridge.replies_to("C-crash")
            assert [r["text"] for r in replies] == ["the answer survives"]
            assert [r["job_id"] for r in replies] == [job["id"]]
    finally:
        bridge.close()
