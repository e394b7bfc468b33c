"""What an agent working on a chat turn can do in that chat, through a real
`corral serve` (SQLite and PostgreSQL) and the runner's own link (this test
leases the turn itself, as a runner would, and speaks for its agent): its
``ask_human`` question goes to the conversation and the user's next message
there answers it; ``send_message`` (POST /worker/messages) reaches the
bridge, once per message id, only within its own conversation; the turn's
result follows, all in order."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.models import Outcome
from corral.protocol import AnswerWait, ChatSend, Completion, QuestionAsk
from corral.runner.link import HttpLink, Refused
from corral.testing import ServerProcess

from ._helpers import running_server
from .test_channels import SECRET, Bridge, message, post_inbound
from .test_gateway import _answer, _gateway


@pytest.fixture
def bridge() -> Iterator[Bridge]:
    b = Bridge()
    yield b
    b.close()


@pytest.fixture
def srv(tmp_path: Path, db_url: str, bridge: Bridge) -> Iterator[ServerProcess]:
    (tmp_path / "corral.toml").write_text(
        "[runner]\nembedded = false\n\n"
        "[providers.gpu]\nkind = 'openai'\nbase_url = 'http://127.0.0.1:9/v1'\n"
        "api_key = 'unused'\nmodels = ['m']\n\n"
        "[providers.tool]\nkind = 'shell'\n\n"
        "[[channels]]\nkind = 'bridge'\nname = 'slack'\nprovider = 'gpu'\n"
        f"secret = {json.dumps(SECRET)}\noutbound_url = {json.dumps(bridge.url)}\n"
    )
    args = ("--config", str(tmp_path / "corral.toml"))
    with running_server(tmp_path / "data", args=args, database_url=db_url) as s:
        yield s


async def lease(api: httpx.AsyncClient, provider: str) -> dict[str, Any]:
    body = {"name": f"hand-{provider}", "providers": [provider], "slots": 1}
    resp = await api.post("/runners/register", json=body)
    assert resp.status_code == 200, resp.text
    runner_id = resp.json()["runner_id"]
    resp = await api.post(f"/runners/{runner_id}/lease", json={"max_jobs": 1, "wait": 10})
    assert resp.status_code == 200, resp.text
    [item] = resp.json()["jobs"]
    return dict(item)


async def test_an_agent_asks_the_chat_messages_it_and_replies(
    srv: ServerProcess, api: httpx.AsyncClient, link: HttpLink, bridge: Bridge
) -> None:
    chat = {"channel_id": "C-agent", "user_id": "U1", "thread_id": "T1"}
    resp = post_inbound(srv, message("deploy the app", **chat))
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]
    item = await lease(api, "gpu")
    assert item["job"]["id"] == job_id
    worker = link.worker(item["token"])

    # ask_human: the question goes to the conversation...
    question = QuestionAsk(question="Which environment?", options=["staging", "prod"])
    await worker.ask(question)
    [asked] = bridge.wait("C-agent", 1)
    assert (asked["kind"], asked["job_id"], asked["thread_id"]) == ("question", job_id, "T1")
    assert asked["text"] == "Which environment?\n\nstaging / prod"
    # ...someone else in the thread does not answer it; its user's next message does.
    other = post_inbound(srv, message("prod!", **{**chat, "user_id": "U2"}))
    assert other.json()["kind"] == "turn"  # a turn of its own, queued behind this one
    answer = message("staging", **chat)
    got = post_inbound(srv, answer)
    assert got.status_code == 200, got.text
    assert (got.json()["kind"], got.json()["job_id"]) == ("answer", job_id)
    again = post_inbound(srv, answer)  # re-delivered: not a turn, not a second answer
    assert again.status_code == 200 and again.json()["created"] is False
    answered = await worker.wait_answer(question.question_id, AnswerWait(wait=10))
    assert answered.reply() == "staging"
    assert answered.answered_by == "chat:U1"

    # send_message: once per message id, only to its own conversation.
    note = ChatSend(text="deploying to staging now")
    sent = await worker.send_message(note)
    assert sent.created and sent.channel == "slack"
    assert not (await worker.send_message(note)).created
    with pytest.raises(Refused) as refused:
        await worker.send_message(ChatSend(text="psst", to="U9"))
    assert refused.value.status == 403

    await worker.complete(Completion(outcome=Outcome(status="done", result="deployed")))
    got_all = bridge.wait("C-agent", 4)
    assert [(r["kind"], r["text"]) for r in got_all] == [
        ("question", "Which environment?\n\nstaging / prod"),
        ("reply", "Thanks, passed on."),
        ("message", "deploying to staging now"),
        ("reply", "deployed"),
    ]
    assert got_all[2]["id"] == sent.id


async def test_send_message_from_a_job_no_chat_started_is_409(
    srv: ServerProcess, api: httpx.AsyncClient, link: HttpLink
) -> None:
    resp = await api.post("/jobs", json={"command": "true", "provider": "tool"})
    assert resp.status_code == 202, resp.text
    item = await lease(api, "tool")
    with pytest.raises(Refused) as refused:
        await link.worker(item["token"]).send_message(ChatSend(text="hello?"))
    assert refused.value.status == 409
    assert "not a turn of a chat conversation" in str(refused.value)


async def test_send_message_through_the_jobs_gateway(
    srv: ServerProcess, api: httpx.AsyncClient, bridge: Bridge
) -> None:
    """The MCP tool an agent calls: send_message through the job's own
    gateway reaches the bridge before the turn's reply; one to someone else
    is a tool error the agent reads, and nothing is sent."""
    chat = {"channel_id": "C-gw", "user_id": "U1"}
    resp = post_inbound(srv, message("check the build", **chat))
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]
    item = await lease(api, "gpu")
    assert item["job"]["id"] == job_id
    events: list[tuple[str, dict[str, Any]]] = []
    async with _gateway(srv, item["token"], events, rules=["corral.*"]) as mcp:
        sent = _answer(await mcp.call_tool("send_message", {"text": "building now"}))
        assert sent["sent"] is True and sent["channel"] == "slack"
        refused = await mcp.call_tool("send_message", {"text": "psst", "to": "U9"})
        assert refused.is_error and "403" in refused.content[0].text
    [got] = bridge.wait("C-gw", 1)
    assert (got["kind"], got["text"], got["job_id"], got["id"]) == (
        "message",
        "building now",
        job_id,
        sent["id"],
    )
    calls = [p["tool"] for t, p in events if t == "tool.call"]
    assert calls == ["send_message", "send_message"]
