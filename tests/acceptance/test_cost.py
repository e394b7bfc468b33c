"""A price for every job, usage totals and budgets, with a real `corral serve`
on SQLite and PostgreSQL and fake LLM APIs speaking the real wire formats:
the Anthropic Messages API (a model the price database knows: estimated), an
OpenAI-compatible server on loopback (self-hosted: unknown, or configured
prices), and max_cost stopping a streaming chat job."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from genai_prices import Usage, calc_price

from corral.testing import ServerProcess
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.anthropic import text as claude_text
from tests.fakes.openai_chat import FakeOpenAI

from ._helpers import running_server, session_events, wait_for, wait_job

PRICES = {"input": 3.0, "output": 15.0}  # USD per million tokens


@pytest.fixture(scope="module")
def gpu() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(models=("qwen2.5:7b",)) as f:
        yield f


@pytest.fixture(scope="module")
def claude() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as f:
        yield f


@pytest.fixture
def srv(
    tmp_path: Path, db_url: str, gpu: FakeOpenAI, claude: FakeAnthropic
) -> Iterator[ServerProcess]:
    openai = f"kind = 'openai'\nbase_url = {json.dumps(gpu.url)}\napi_key_env = 'GPU_KEY'\n"
    openai += "models = ['qwen2.5:7b']\nmax_retries = 0\n"
    config = tmp_path / "corral.toml"
    config.write_text(
        f"[providers.gpu]\n{openai}\n"
        f"[providers.priced]\n{openai}"
        "prices = { input = 3.0, output = 15.0 }\n\n"
        f"[providers.vllm]\n{openai}stream_usage = true\n"
        "prices = { input = 1000.0, output = 1000.0 }\n\n"
        "[providers.haiku]\nkind = 'anthropic'\n"
        f"base_url = {json.dumps(claude.url)}\napi_key = {json.dumps(claude.api_key)}\n"
        "models = ['claude-haiku-4-5']\nmodel = 'claude-haiku-4-5'\n\n"
        "[[budgets]]\nscope = 'provider:priced'\nlimit = 0.00001\nperiod = 'day'\n"
        "timezone = 'Europe/Paris'\n\n"
        "[[budgets]]\nname = 'everything'\nscope = 'global'\nlimit = 1000\naction = 'warn'\n"
    )
    env = {"GPU_KEY": gpu.api_key}
    args = ("--config", str(config), "--no-queue")
    with running_server(tmp_path / "data", args=args, env=env, database_url=db_url) as s:
        yield s


def submit(http: httpx.Client, **body: Any) -> str:
    resp = http.post("/jobs", json=body)
    assert resp.status_code == 202, resp.text
    job_id: str = resp.json()["job_id"]
    return job_id


def ask(http: httpx.Client, provider: str, words: str, **fields: Any) -> dict[str, Any]:
    job = wait_job(http, submit(http, prompt=words, provider=provider, **fields), timeout=30)
    return job


def test_every_job_gets_a_price_and_usage_sums_them(
    srv: ServerProcess, gpu: FakeOpenAI, claude: FakeAnthropic
) -> None:
    with srv.http() as http:
        claude.reply(claude_text("Hello there."), input_tokens=1234, output_tokens=56, match="hi 1")
        est = ask(http, "haiku", "hi 1")
        assert est["state"] == "done", est
        assert est["cost_source"] == "estimated"
        db = calc_price(
            Usage(input_tokens=1234, output_tokens=56), "claude-haiku-4-5", provider_id="anthropic"
        )
        assert est["cost"] == pytest.approx(float(db.total_price))
        assert (est["input_tokens"], est["output_tokens"]) == (1234, 56)

        gpu.reply("Self-hosted answer.", match="hi 2")
        unknown = ask(http, "gpu", "hi 2")
        assert unknown["state"] == "done", unknown
        assert unknown["cost"] is None and unknown["cost_source"] == "unknown"
        assert unknown["input_tokens"] == unknown["usage"]["prompt_tokens"]

        gpu.reply("Priced answer.", match="hi 3")
        priced = ask(http, "priced", "hi 3")
        assert priced["cost_source"] == "configured"
        tin, tout = priced["usage"]["prompt_tokens"], priced["usage"]["completion_tokens"]
        assert priced["cost"] == pytest.approx((tin * 3.0 + tout * 15.0) / 1e6)

        report = http.get("/usage", params={"group_by": "provider,day"}).json()
        rows = {r["key"]["provider"]: r for r in report["rows"]}
        assert set(rows) == {"gpu", "haiku", "priced"}
        assert rows["haiku"]["cost"] == pytest.approx(est["cost"], abs=1e-6)
        assert rows["gpu"]["unpriced"] == 1 and rows["gpu"]["cost"] == 0
        assert rows["haiku"]["input_tokens"] == 1234
        assert report["total"]["jobs"] == 3
        assert http.get("/usage", params={"group_by": "planet"}).status_code == 422

    cli = srv.cli("usage", "--group-by", "provider", "--provider", "haiku", "--json")
    assert cli.returncode == 0, cli.stderr
    data = json.loads(cli.stdout)
    assert [r["key"] for r in data["rows"]] == [{"provider": "haiku"}]
    table = srv.cli("usage", "--group-by", "provider,model")
    assert table.returncode == 0, table.stderr
    assert "haiku" in table.stdout and "total" in table.stdout
    shown = srv.cli("jobs", "show", est["id"])
    assert "(estimated)" in shown.stdout, shown.stdout

    # The priced provider passed its daily budget ($0.00001): it is paused,
    # and a job for it waits saying why.
    with srv.http() as http:
        events = [e["type"] for e in session_events(http, priced["session_id"])]
        assert "budget.exceeded" in events
        waiting = submit(http, prompt="hi 4", provider="priced")
        job = wait_for(
            lambda: (j := http.get(f"/jobs/{waiting}").json())["waiting"] and j,
            timeout=10,
            what="a waiting reason",
        )
        assert job["state"] == "queued"
        assert job["waiting"].startswith(
            "provider 'priced' is paused by budget 'provider:priced' (provider:priced): $"
        ), job["waiting"]
    listed = srv.cli("budgets", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    budgets = {b["name"]: b for b in json.loads(listed.stdout)}
    assert budgets["provider:priced"]["paused_until"] is not None
    assert budgets["provider:priced"]["percent"] >= 100
    assert budgets["everything"]["paused_until"] is None
    assert budgets["everything"]["spent"] == pytest.approx(est["cost"] + priced["cost"], abs=1e-6)
    assert "of $1e-05 spent this day until" in job["waiting"], job["waiting"]
    assert "provider:priced: paused until" in srv.cli("budgets", "ls").stdout


def test_max_cost_stops_a_streaming_chat_job(srv: ServerProcess, gpu: FakeOpenAI) -> None:
    # $0.001 a token: the prompt alone is a few cents, each streamed word more.
    words = " ".join(f"word{i}" for i in range(400))
    gpu.reply(words, delay=0.02, match="long story")
    with srv.http() as http:
        job = ask(http, "vllm", "Tell me a long story.", max_cost=0.05)
    assert job["state"] == "failed", job
    assert job["failure"] == "budget" and job["reason"] == "max_cost"
    assert "over its max_cost $0.05" in job["error"]
    assert job["attempt"] == 1 and job["max_attempts"] == 1
    # Stopped mid-stream: far fewer tokens than the whole reply's.
    assert job["output_tokens"] < 100
    assert job["cost_source"] == "configured" and job["cost"] > 0.05
    wait_for(lambda: gpu.stopped_early, timeout=10, what="the stream to be closed early")
