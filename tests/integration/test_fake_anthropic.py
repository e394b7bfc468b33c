"""The real `claude` CLI, headless, against the fake Anthropic API (tests/fakes/anthropic.py).

These pin down the CLI behaviour the Claude Code executor relies on; the facts
behind them are in tests/fakes/CLAUDE_NOTES.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import agent_bin
from tests.fakes.anthropic import FakeAnthropic, text, tool_use


@dataclass
class Run:
    returncode: int
    events: list[dict[str, Any]]
    stderr: str
    seconds: float

    @property
    def result(self) -> dict[str, Any]:
        assert self.events and self.events[-1]["type"] == "result", self.events
        return self.events[-1]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key="sk-ant-test") as server:
        yield server


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def claude(
    fake: FakeAnthropic,
    home: Path,
    cwd: Path,
    prompt: str,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 30,
) -> Run:
    """Run `claude -p` headless in a clean environment pointed at the fake."""
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    clean_env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "TMPDIR": str(home / "tmp"),
        "ANTHROPIC_BASE_URL": fake.url,
        "ANTHROPIC_API_KEY": fake.api_key,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_MAX_RETRIES": "0",
        **(env or {}),
    }
    cmd = [str(agent_bin("claude")), "-p", prompt, "--output-format", "stream-json", "--verbose"]
    started = time.monotonic()
    proc = subprocess.run(
        [*cmd, *args],
        cwd=cwd,
        env=clean_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return Run(proc.returncode, events, proc.stderr, time.monotonic() - started)


def test_text_run(fake: FakeAnthropic, tmp_path: Path, workdir: Path) -> None:
    fake.reply(text("Hello from the fake."))

    run = claude(fake, tmp_path / "home", workdir, "Say hello.")

    assert run.returncode == 0, run.stderr
    init = run.events[0]
    assert (init["type"], init["subtype"]) == ("system", "init")
    assert init["cwd"] == str(workdir)
    result = run.result
    assert result["subtype"] == "success"
    assert result["is_error"] is False
    assert result["result"] == "Hello from the fake."
    assert result["num_turns"] == 1
    assert result["session_id"] == init["session_id"]
    assert result["total_cost_usd"] > 0
    assert len(fake.requests) == 1, fake.refused
    assert fake.requests[0]["stream"] is True
    assert fake.unexpected == []


def test_bash_tool_round_trip(fake: FakeAnthropic, tmp_path: Path, workdir: Path) -> None:
    call = tool_use("Bash", {"command": "echo hi > a.txt", "description": "Write a.txt"})
    fake.reply(text("I will write it."), call)
    fake.reply(text("Done."))

    run = claude(fake, tmp_path / "home", workdir, "Write hi to a.txt.", "--allowedTools", "Bash")

    assert run.returncode == 0, run.stderr
    assert (workdir / "a.txt").read_text() == "hi\n"
    assert run.result["is_error"] is False
    assert run.result["result"] == "Done."
    assert run.result["num_turns"] == 2
    [tool_result] = [c for u in run.of_type("user") for c in u["message"]["content"]]
    assert tool_result["type"] == "tool_result"
    assert tool_result["tool_use_id"] == call["id"]
    assert tool_result["is_error"] is False
    # The second request carries the tool_result back to the model.
    assert len(fake.requests) == 2
    last = fake.requests[1]["messages"][-1]
    assert last["role"] == "user"
    assert last["content"][0]["type"] == "tool_result"
    assert last["content"][0]["tool_use_id"] == call["id"]


def test_tool_denied_without_permission_flags(
    fake: FakeAnthropic, tmp_path: Path, workdir: Path
) -> None:
    fake.reply(tool_use("Bash", {"command": "echo hi > a.txt"}))
    fake.reply(text("I could not write it."))

    run = claude(fake, tmp_path / "home", workdir, "Write hi to a.txt.")

    assert run.returncode == 0, run.stderr
    assert not (workdir / "a.txt").exists()
    assert run.result["is_error"] is False
    [denial] = run.result["permission_denials"]
    assert denial["tool_name"] == "Bash"
    assert denial["tool_input"] == {"command": "echo hi > a.txt"}
    assert [e["subtype"] for e in run.of_type("system")] == ["init", "permission_denied"]


def test_resume_resends_history(fake: FakeAnthropic, tmp_path: Path, workdir: Path) -> None:
    home = tmp_path / "home"
    fake.reply(text("Noted: banana."))
    first = claude(fake, home, workdir, "Remember the word banana.")
    session_id = first.result["session_id"]
    assert list((home / ".claude" / "projects").glob(f"*/{session_id}.jsonl"))

    fake.reply(text("The word was banana."))
    second = claude(fake, home, workdir, "What was the word?", "--resume", session_id)

    assert second.returncode == 0, second.stderr
    assert second.result["session_id"] == session_id
    assert second.result["result"] == "The word was banana."
    history = fake.requests[1]["messages"]
    assert history[-2] == {"role": "assistant", "content": [text("Noted: banana.")]}
    assert history[-1]["content"][0]["text"] == "What was the word?"


def test_rate_limited_without_retries_fails_fast(
    fake: FakeAnthropic, tmp_path: Path, workdir: Path
) -> None:
    fake.fail(
        429,
        headers={"retry-after": "30"},
        error_type="rate_limit_error",
        message="Rate limit exceeded.",
    )

    run = claude(fake, tmp_path / "home", workdir, "Say hello.")

    assert run.returncode == 1
    assert run.seconds < 10  # retry-after is not honoured with CLAUDE_CODE_MAX_RETRIES=0
    result = run.result
    assert result["is_error"] is True
    assert result["api_error_status"] == 429
    assert result["api_error_type"] == "rate_limit_error"
    assert result["terminal_reason"] == "api_error"
    assert "Rate limit exceeded." in result["result"]
    assert result["total_cost_usd"] == 0
    assert len(fake.requests) == 1


def test_hang_ends_with_api_timeout(fake: FakeAnthropic, tmp_path: Path, workdir: Path) -> None:
    fake.hang()

    run = claude(fake, tmp_path / "home", workdir, "Say hello.", env={"API_TIMEOUT_MS": "2000"})

    assert run.returncode == 1
    assert run.result["is_error"] is True
    assert run.result["result"].startswith("Request timed out.")
    assert run.result["api_error_status"] is None


def test_side_requests_do_not_consume_the_script(fake: FakeAnthropic) -> None:
    fake.reply(text("scripted"))

    def post(body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{fake.url}/v1/messages?beta=true",
            data=json.dumps(body).encode(),
            headers={"x-api-key": fake.api_key, "content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            answer: dict[str, Any] = json.load(response)
        return answer

    hi = [{"role": "user", "content": "hi"}]
    side = post({"model": "claude-haiku-4-5", "max_tokens": 1, "messages": hi})
    main = post({"model": "m", "max_tokens": 1, "messages": hi, "tools": [{"name": "Bash"}]})

    assert side["content"] == [text("ok")]
    assert main["content"] == [text("scripted")]
    assert [seen.kind for seen in fake.seen] == ["aux", "main"]
    assert len(fake.requests) == 1


_HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"model": "m", "max_tokens": 8, "messages": []}, "at least one message"),
        ({"max_tokens": 8, "messages": _HI}, "model: Field required"),
        ({"model": "m", "messages": _HI}, "max_tokens: Field required"),
        ({"model": "m", "max_tokens": "8", "messages": _HI}, "max_tokens: Input should be"),
        ({"model": "m", "max_tokens": -1, "messages": _HI}, "greater than or equal to 0"),
        ({"model": 3, "max_tokens": 8, "messages": _HI}, "model: Input should be"),
        ({"model": "m", "max_tokens": 8, "messages": {"role": "user"}}, "valid list"),
        (
            {"model": "m", "max_tokens": 8, "messages": [{"role": "tool", "content": "x"}]},
            "messages.0.role",
        ),
        ({"model": "m", "max_tokens": 8, "messages": [{"role": "user"}]}, "content: Field"),
        (
            {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": ""}]},
            "non-empty content",
        ),
        (
            {
                "model": "m",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}],
            },
            "text content blocks must be non-empty",
        ),
        ({"model": "m", "max_tokens": 8, "messages": _HI, "stream": "yes"}, "stream"),
    ],
    ids=[
        "no messages",
        "no model",
        "no max_tokens",
        "max_tokens a string",
        "max_tokens negative",
        "model a number",
        "messages not a list",
        "an OpenAI tool role",
        "a message without content",
        "empty content",
        "an empty text block",
        "stream not a boolean",
    ],
)
def test_the_fake_refuses_what_the_messages_api_refuses(
    fake: FakeAnthropic, body: dict[str, Any], needle: str
) -> None:
    """400 invalid_request_error in the API's error shape; nothing is answered
    from the script."""
    fake.reply(text("scripted"))
    request = urllib.request.Request(
        f"{fake.url}/v1/messages",
        data=json.dumps(body).encode(),
        headers={"x-api-key": fake.api_key, "content-type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 400
    answer = json.load(refused.value)
    assert answer["type"] == "error" and answer["request_id"].startswith("req_")
    assert answer["error"]["type"] == "invalid_request_error"
    assert needle in answer["error"]["message"]
    assert refused.value.headers["request-id"] == answer["request_id"]
    assert len(fake._script) == 1  # the scripted reply is still there


def test_the_fake_takes_a_final_assistant_prefill_and_consecutive_turns(
    fake: FakeAnthropic,
) -> None:
    messages = [
        {"role": "user", "content": "one"},
        {"role": "user", "content": [{"type": "text", "text": "two"}]},
        {"role": "assistant", "content": ""},
    ]
    request = urllib.request.Request(
        f"{fake.url}/v1/messages",
        data=json.dumps({"model": "m", "max_tokens": 0, "messages": messages}).encode(),
        headers={"x-api-key": fake.api_key, "content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
