"""The real `codex exec` CLI against the fake Responses API (tests/fakes/openai_responses.py).

These pin down the CLI behaviour the Codex executor relies on; the facts
behind them are in tests/fakes/CODEX_NOTES.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import agent_bin
from tests.fakes.openai_responses import FakeResponses, codex_config, shell, text

EXEC = ("exec", "--json", "--strict-config", "--skip-git-repo-check")
SANDBOX = ("--sandbox", "workspace-write")


@dataclass
class Run:
    returncode: int
    events: list[dict[str, Any]]
    stderr: str
    seconds: float

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def items(self, kind: str) -> list[dict[str, Any]]:
        """Completed items of one item type (agent_message, command_execution, ...)."""
        return [e["item"] for e in self.of_type("item.completed") if e["item"]["type"] == kind]

    @property
    def thread_id(self) -> str:
        assert self.events and self.events[0]["type"] == "thread.started", self.events
        return str(self.events[0]["thread_id"])


@dataclass
class Codex:
    """One CODEX_HOME (config + thread state) and one workspace, run with a clean env."""

    fake: FakeResponses
    home: Path
    cwd: Path
    tmp: Path

    def run(self, *args: str, api_key: str | None = None, timeout: float = 30) -> Run:
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(self.home),
            "CODEX_HOME": str(self.home / "codex"),
            # As corral gives each run: with a system bwrap, codex refuses to
            # set up its sandbox helper when CODEX_HOME is under $TMPDIR (/tmp).
            "TMPDIR": str(self.tmp),
            "FAKE_API_KEY": api_key or self.fake.api_key,
        }
        started = time.monotonic()
        proc = subprocess.Popen(
            [str(agent_bin("codex")), *args],
            cwd=self.cwd,
            env=env,
            stdin=subprocess.DEVNULL,  # an open stdin is read to EOF before anything happens
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        events = [json.loads(line) for line in out.splitlines() if line.strip()]
        return Run(proc.returncode, events, err, time.monotonic() - started)


@pytest.fixture
def fake() -> Iterator[FakeResponses]:
    with FakeResponses(api_key="sk-test") as server:
        yield server


@pytest.fixture
def codex(fake: FakeResponses, tmp_path: Path) -> Codex:
    home, cwd, tmp = tmp_path / "home", tmp_path / "work", tmp_path / "tmp"
    (home / "codex").mkdir(parents=True)
    cwd.mkdir()
    tmp.mkdir()
    (home / "codex" / "config.toml").write_text(codex_config(fake.url))
    return Codex(fake, home, cwd, tmp)


def test_hello_streams_agent_message_and_usage(fake: FakeResponses, codex: Codex) -> None:
    fake.reply(text("hello from the fake"))

    run = codex.run(*EXEC, *SANDBOX, "say hello")

    assert run.returncode == 0, run.stderr
    assert [e["type"] for e in run.events] == [
        "thread.started",
        "turn.started",
        "item.completed",
        "turn.completed",
    ]
    assert run.items("agent_message") == [
        {"id": "item_0", "type": "agent_message", "text": "hello from the fake"}
    ]
    usage = run.of_type("turn.completed")[0]["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert set(usage) >= {"input_tokens", "cached_input_tokens", "output_tokens"}
    # one main-loop request, nothing else, nothing unexpected
    assert [(s.method, s.path, s.kind) for s in fake.seen] == [("POST", "/v1/responses", "turn")]
    request = fake.requests[0]
    assert request["stream"] is True and request["model"] == "gpt-5.5"
    assert request["input"][-1]["content"][0]["text"] == "say hello"
    assert fake.seen[0].headers["authorization"] == "Bearer sk-test"
    assert run.seconds < 15


def test_command_runs_in_workspace_write_sandbox(fake: FakeResponses, codex: Codex) -> None:
    call = shell("echo hi > a.txt")
    fake.reply(text("I will write it"), call)
    fake.reply(text("done"))

    run = codex.run(*EXEC, *SANDBOX, "write hi to a.txt")

    assert run.returncode == 0, run.stderr
    assert (codex.cwd / "a.txt").read_text() == "hi\n"
    started = [e["item"] for e in run.of_type("item.started")]
    assert [i["type"] for i in started] == ["command_execution"]
    assert started[0]["status"] == "in_progress" and started[0]["exit_code"] is None
    [command] = run.items("command_execution")
    assert command["command"] == "/bin/bash -lc 'echo hi > a.txt'"
    assert (command["exit_code"], command["status"]) == (0, "completed")
    assert [m["text"] for m in run.items("agent_message")] == ["I will write it", "done"]
    # the follow-up request carries the tool result for the scripted call
    output = fake.requests[1]["input"][-1]
    assert output["type"] == "function_call_output"
    assert output["call_id"] == call["call_id"]
    assert "Process exited with code 0" in output["output"]


def test_resume_resends_history(fake: FakeResponses, codex: Codex) -> None:
    fake.reply(text("noted"))
    first = codex.run(*EXEC, *SANDBOX, "remember 42")
    assert first.returncode == 0, first.stderr
    rollouts = list((codex.home / "codex" / "sessions").rglob(f"rollout-*-{first.thread_id}.jsonl"))
    assert len(rollouts) == 1

    fake.reply(text("42"))
    # --sandbox only exists before `resume`; without it the resumed turn is read-only
    second = codex.run(*EXEC, *SANDBOX, "resume", first.thread_id, "what number?")

    assert second.returncode == 0, second.stderr
    assert second.thread_id == first.thread_id
    assert [m["text"] for m in second.items("agent_message")] == ["42"]
    history = [
        (item["role"], item["content"][0]["text"])
        for item in fake.requests[1]["input"]
        if item.get("type") == "message" and item["role"] in ("user", "assistant")
    ]
    assert history[-3:] == [
        ("user", "remember 42"),
        ("assistant", "noted"),
        ("user", "what number?"),
    ]


def test_rate_limit_fails_the_turn_fast(fake: FakeResponses, codex: Codex) -> None:
    fake.fail(
        429,
        headers={"retry-after": "20", "x-ratelimit-reset-requests": "20s"},
        message="Rate limit reached for gpt-5.5. Please try again in 20s.",
    )

    run = codex.run(*EXEC, *SANDBOX, "say hello")

    assert run.returncode == 1
    assert [e["type"] for e in run.events] == [
        "thread.started",
        "turn.started",
        "error",
        "turn.failed",
    ]
    message = run.of_type("turn.failed")[0]["error"]["message"]
    assert message.startswith("exceeded retry limit, last status: 429 Too Many Requests")
    assert run.of_type("error")[0]["message"] == message
    assert len(fake.requests) == 1  # request_max_retries = stream_max_retries = 0
    assert run.seconds < 10  # retry-after is not waited for


def test_wrong_key_is_a_401_turn_failure(fake: FakeResponses, codex: Codex) -> None:
    run = codex.run(*EXEC, *SANDBOX, "say hello", api_key="sk-wrong")

    assert run.returncode == 1
    message = run.of_type("turn.failed")[0]["error"]["message"]
    assert message.startswith("unexpected status 401 Unauthorized: Incorrect API key provided")
    assert fake.pending == 0 and len(fake.requests) == 1
