"""The fake OpenAI-compatible chat server (tests/fakes/openai_chat.py) is as
strict as the real API: it refuses what the real one refuses, with the real
error shape, and streams a tool call the way the real one does (its
arguments in fragments, which only make sense concatenated)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.openai_chat import ARGUMENT_FRAGMENT, FakeOpenAI

MODEL = "qwen2.5:7b"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key="sk-fake", models=(MODEL,)) as server:
        yield server


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"messages": HI}, None, None),
        ({"model": MODEL}, "messages", "missing_required_parameter"),
        ({"model": MODEL, "messages": []}, "messages", "empty_array"),
        ({"model": MODEL, "messages": {"role": "user"}}, "messages", "invalid_type"),
        ({"model": MODEL, "messages": [{"content": "x"}]}, "messages[0].role", None),
        (
            {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]},
            "messages[0].role",
            "invalid_value",
        ),
        (
            {"model": MODEL, "messages": [*HI, {"role": "tool", "content": "42"}]},
            "messages[1].tool_call_id",
            "missing_required_parameter",
        ),
        ({"model": MODEL, "messages": HI, "stream": "yes"}, "stream", "invalid_type"),
    ],
    ids=[
        "no model",
        "no messages",
        "empty messages",
        "messages not a list",
        "a message without a role",
        "an unknown role",
        "a tool message without tool_call_id",
        "stream not a boolean",
    ],
)
def test_the_fake_refuses_what_the_api_refuses(
    fake: FakeOpenAI, body: dict[str, Any], param: str | None, code: str | None
) -> None:
    fake.reply("scripted")
    resp = httpx.post(
        f"{fake.url}/chat/completions",
        json=body,
        headers={"Authorization": "Bearer sk-fake"},
        timeout=5,
    )
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert fake.requests == []  # refused before anything was answered from the script


def test_a_streamed_tool_call_comes_in_argument_fragments(fake: FakeOpenAI) -> None:
    arguments = json.dumps({"city": "Oslo", "unit": "celsius", "days": 3})
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "weather", "arguments": arguments},
    }
    fake.reply("", tool_calls=[call])
    client = openai.OpenAI(base_url=fake.url, api_key="sk-fake")
    deltas = []
    with client.chat.completions.create(model=MODEL, messages=HI, stream=True) as stream:  # type: ignore[arg-type]
        for chunk in stream:
            for choice in chunk.choices:
                deltas += choice.delta.tool_calls or []
    fragments = [d.function.arguments for d in deltas if d.function and d.function.arguments]
    assert len(fragments) >= 2 and all(len(f) <= ARGUMENT_FRAGMENT for f in fragments)
    assert "".join(fragments) == arguments
    assert deltas[0].id == "call_1" and deltas[0].function.name == "weather"
    assert all(d.id is None and d.index == 0 for d in deltas[1:])
