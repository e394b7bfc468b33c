"""Chat jobs on remote providers, and the Ollama-compatible surface, with a
real `corral serve`: the openai executor against a fake OpenAI-compatible
server and the anthropic executor against the fake Anthropic API (both
speaking the real wire formats), driven through the jobs API, the Python
client and the real `ollama` client package."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from corral.testing import ServerProcess
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.anthropic import text as claude_text
from tests.fakes.openai_chat import FakeOpenAI

from ._helpers import running_server, session_events, wait_job


@pytest.fixture(scope="module")
def gpu() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(models=("qwen2.5:7b", "nomic-embed-text")) as f:
        yield f


@pytest.fixture(scope="module")
def claude() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as f:
        yield f


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, gpu: FakeOpenAI, claude: FakeAnthropic
) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("chat")
    config = root / "corral.toml"
    config.write_text(
        "[ollama]\nembed_provider = 'gpu'\n\n"
        "[providers.gpu]\nkind = 'openai'\n"
        f"base_url = {json.dumps(gpu.url)}\napi_key_env = 'GPU_KEY'\n"
        "models = ['qwen2.5:7b']\nembedding_model = 'nomic-embed-text'\nmax_retries = 0\n"
        "fallback = 'haiku'\n\n"
        "[providers.haiku]\nkind = 'anthropic'\n"
        f"base_url = {json.dumps(claude.url)}\napi_key = {json.dumps(claude.api_key)}\n"
        "models = ['claude-haiku-4-5']\n\n"
        "[providers.steady]\nkind = 'openai'\n"
        f"base_url = {json.dumps(gpu.url)}\napi_key_env = 'GPU_KEY'\n"
        "models = ['nomic-embed-text']\nmax_retries = 2\n"
    )
    env = {"GPU_KEY": gpu.api_key}
    with running_server(root / "data", args=("--config", str(config)), env=env) as s:
        yield s


@pytest.fixture
def http(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.http() as client:
        yield client


def submit(http: httpx.Client, **body: Any) -> str:
    resp = http.post("/jobs", json=body)
    assert resp.status_code == 202, resp.text
    job_id: str = resp.json()["job_id"]
    return job_id


def test_chat_job_on_an_openai_compatible_server(http: httpx.Client, gpu: FakeOpenAI) -> None:
    gpu.reply("Paris is the capital of France.", match="capital of France")
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    job = wait_job(
        http,
        submit(http, messages=messages, preferred_ai="gpu", options={"temperature": 0.1}),
    )
    assert job["state"] == "done", job
    assert job["provider"] == "gpu" and job["route_rule"] == 4  # delegated
    assert job["result"] == "Paris is the capital of France."
    assert job["message"] == {"role": "assistant", "content": job["result"]}
    assert job["usage"]["prompt_tokens"] > 0 and job["usage"]["model"] == "qwen2.5:7b"
    assert job["cost"] is None  # no price known: recorded as unknown
    sent = [r for r in gpu.requests if "capital of France" in json.dumps(r)][-1]
    assert sent["messages"] == messages and sent["temperature"] == 0.1 and sent["stream"]
    events = session_events(http, job["session_id"])
    assert any(e["type"] == "chat.message" for e in events)
    assert not any(e["type"] == "chat.delta" for e in events)  # ephemeral: never stored


def test_prompt_to_a_chat_provider_and_tool_calls(http: httpx.Client, gpu: FakeOpenAI) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
    }
    gpu.reply("", tool_calls=[call], match="weather in Oslo")
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    job = wait_job(http, submit(http, prompt="weather in Oslo?", preferred_ai="gpu", tools=tools))
    assert job["state"] == "done", job
    assert job["message"]["tool_calls"] == [call]
    sent = [r for r in gpu.requests if "weather in Oslo" in json.dumps(r)][-1]
    assert sent["messages"] == [{"role": "user", "content": "weather in Oslo?"}]
    assert sent["tools"] == tools


def test_anthropic_chat_job(http: httpx.Client, claude: FakeAnthropic) -> None:
    claude.reply(claude_text("Bonjour."), match="Say hello in French")
    job = wait_job(
        http,
        submit(
            http,
            messages=[
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Say hello in French"},
            ],
            preferred_ai="haiku",
        ),
    )
    assert job["state"] == "done" and job["result"] == "Bonjour.", job
    assert job["usage"]["input_tokens"] > 0 and job["usage"]["output_tokens"] > 0
    sent = [r for r in claude.seen if "Say hello in French" in json.dumps(r.body)][-1].body
    assert sent["system"] == "You are terse." and sent["model"] == "claude-haiku-4-5"
    assert sent["messages"] == [{"role": "user", "content": "Say hello in French"}]


def test_errors_are_classified(http: httpx.Client, gpu: FakeOpenAI, claude: FakeAnthropic) -> None:
    # A 4xx other than 429: bad input, failed at once with the server's message.
    bad = wait_job(
        http, submit(http, prompt="x", preferred_ai="gpu", model="no-such-model", max_attempts=3)
    )
    assert bad["state"] == "failed" and bad["failure"] == "input" and bad["attempt"] == 1
    assert "not found" in bad["error"]
    # A 429: the provider pauses and its jobs go to the fallback (haiku) meanwhile.
    gpu.fail(429, "slow down", retry_after=120, match="quota please")
    claude.reply(claude_text("from the fallback"), match="quota please")
    try:
        job = wait_job(http, submit(http, prompt="quota please", preferred_ai="gpu"))
        assert job["state"] == "done" and job["provider"] == "haiku", job
        assert job["result"] == "from the fallback" and job["attempt"] == 1
        paused = http.get("/status").json()["providers_paused"]
        assert [p["provider"] for p in paused] == ["gpu"]
    finally:
        http.post("/admin/providers/gpu/resume")


def test_ollama_client_against_corral(srv: ServerProcess, gpu: FakeOpenAI) -> None:
    headers = {"Authorization": f"Bearer {srv.admin_key}"}
    with ollama.Client(host=srv.url, headers=headers) as client:
        names = [m.model for m in client.list().models]
        assert names == ["qwen2.5:7b", "claude-haiku-4-5", "nomic-embed-text"]

        gpu.reply("Four.", match="two plus two")
        reply = client.chat(
            model="qwen2.5:7b", messages=[{"role": "user", "content": "two plus two"}]
        )
        assert reply.message.content == "Four." and reply.done
        assert (reply.prompt_eval_count or 0) > 0 and (reply.eval_count or 0) > 0

        gpu.reply("one two three four", match="count to four")
        pieces = [
            part.message.content
            for part in client.chat(
                model="qwen2.5:7b",
                messages=[{"role": "user", "content": "count to four"}],
                stream=True,
            )
        ]
        assert "".join(pieces) == "one two three four" and len(pieces) >= 4

        embedded = client.embed(model="nomic-embed-text", input=["a", "bb"])
        assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == 4
        assert gpu.embed_requests[-1]["model"] == "nomic-embed-text"

        with pytest.raises(ollama.ResponseError) as info:
            client.chat(model="nope", messages=[{"role": "user", "content": "x"}])
        assert info.value.status_code == 404 and "not found" in info.value.error

    with ollama.Client(host=srv.url) as anonymous:
        with pytest.raises(ollama.ResponseError) as info:
            anonymous.list()
        assert info.value.status_code == 401


def test_metrics(srv: ServerProcess, http: httpx.Client) -> None:
    assert httpx.get(f"{srv.url}/metrics").status_code == 401
    for _ in range(3):  # its own jobs: the test does not depend on the others
        job = wait_job(http, submit(http, prompt="count me", preferred_ai="gpu"))
        assert job["state"] == "done", job
    resp = http.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    lines = dict(line.rsplit(" ", 1) for line in resp.text.splitlines() if line and line[0] != "#")
    assert float(lines['corral_jobs_current{state="done"}']) >= 3
    assert float(lines['corral_delegated_jobs{outcome="done"}']) >= 3
    assert float(lines["corral_runners"]) == 1
    assert lines["corral_paused"] == "0.0"


def test_python_client_ollama_methods(srv: ServerProcess, gpu: FakeOpenAI) -> None:
    from corral.client import Client

    with Client(srv.url, srv.admin_key) as c:
        assert [m.name for m in c.tags()] == [
            "qwen2.5:7b",
            "claude-haiku-4-5",
            "nomic-embed-text",
        ]
        assert len(c.embed(["one", "two"])) == 2
        gpu.reply("Blue.", match="colour of the sky")
        message = c.chat("qwen2.5:7b", [{"role": "user", "content": "colour of the sky?"}])
        assert message == {"role": "assistant", "content": "Blue."}


def test_transient_errors_are_retried_with_backoff(http: httpx.Client, gpu: FakeOpenAI) -> None:
    # 503 and a 429 with Retry-After: the SDK retries (max_retries = 2), the job succeeds.
    gpu.fail(503, "overloaded", match="steady please")
    gpu.fail(429, "slow down", retry_after=1, match="steady please")
    gpu.reply("steady answer", match="steady please")
    started = len(gpu.requests)
    job = wait_job(http, submit(http, prompt="steady please", preferred_ai="steady"))
    assert job["state"] == "done" and job["result"] == "steady answer", job
    assert job["attempt"] == 1 and job["infra_retries"] == 0
    sent = [r for r in gpu.requests[started:] if "steady please" in json.dumps(r)]
    assert len(sent) == 3


def test_cli_submit_wait_prints_the_reply(srv: ServerProcess, gpu: FakeOpenAI) -> None:
    gpu.reply("streamed words arrive live", match="cli question")
    out = srv.cli("submit", "cli question", "--provider", "gpu", "--wait")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "streamed words arrive live"
    assert "done" in out.stderr


def test_remote_providers_are_served_with_a_restricted_embedded_runner(
    tmp_path: Path, gpu: FakeOpenAI
) -> None:
    """`[runner] providers = [...]` (the README's Claude/Codex example) lists
    local providers; remote ones are still served by the embedded runner,
    unless assigned to another runner: then /api/chat (and /api/generate)
    answer 503 with the reason after `[ollama] unserved_wait`, instead of hanging."""
    config = tmp_path / "corral.toml"
    config.write_text(
        "[runner]\nproviders = ['shell']\n\n[ollama]\nunserved_wait = 1\n\n"
        "[providers.gpu]\nkind = 'openai'\n"
        f"base_url = {json.dumps(gpu.url)}\napi_key = {json.dumps(gpu.api_key)}\n"
        "models = ['qwen2.5:7b']\n\n"
        "[providers.far]\nkind = 'openai'\nrunner = 'gpu-box'\n"
        f"base_url = {json.dumps(gpu.url)}\napi_key = {json.dumps(gpu.api_key)}\n"
        "models = ['far-model']\n"
    )
    shown = subprocess.run(
        [sys.executable, "-m", "corral", "config", "show", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(shown.stdout)["runner"]["serves"] == ["shell", "gpu"]
    with running_server(tmp_path / "data", args=("--config", str(config), "--no-queue")) as srv:
        status = srv.cli("status")
        assert "embedded runner serves: shell, gpu" in status.stdout, status.stdout
        headers = {"Authorization": f"Bearer {srv.admin_key}"}
        with ollama.Client(host=srv.url, headers=headers) as client:
            gpu.reply("Served.", match="are you served")
            reply = client.chat(
                model="qwen2.5:7b", messages=[{"role": "user", "content": "are you served"}]
            )
            assert reply.message.content == "Served."
            for stream in (False, True):
                started = time.monotonic()
                with pytest.raises(ollama.ResponseError) as info:
                    messages = [{"role": "user", "content": "anyone?"}]
                    if stream:
                        list(client.chat(model="far-model", messages=messages, stream=True))
                    else:
                        client.chat(model="far-model", messages=messages)
                assert info.value.status_code == 503
                assert "no active runner serves provider 'far'" in info.value.error
                assert "corral runner --name gpu-box" in info.value.error
                assert time.monotonic() - started < 30  # not chat_timeout (600 s)
            with pytest.raises(ollama.ResponseError) as info:
                client.generate(model="far-model", prompt="anyone?", stream=False)
            assert info.value.status_code == 503 and "provider 'far'" in info.value.error
        with srv.http() as http:
            job_id = submit(http, prompt="queued for far", preferred_ai="far")
            assert http.get(f"/jobs/{job_id}").json()["waiting"] == (
                "no active runner serves provider 'far'"
            )
            chats = http.get("/jobs", params={"provider": "far"}).json()["jobs"]
            states = sorted(j["state"] for j in chats)
            assert states == ["cancelled", "cancelled", "cancelled", "queued"]
