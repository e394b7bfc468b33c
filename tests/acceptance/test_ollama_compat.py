"""The rest of the Ollama surface, driven by the real `ollama` client package
against a real `corral serve` whose chat providers are the fake OpenAI and
Anthropic servers: /api/version, /api/show, /api/generate (streamed and not),
/api/ps, the legacy /api/embeddings, and errors in Ollama's shape."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import ollama
import pytest

from corral import __version__
from corral.testing import ServerProcess
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.openai_chat import FakeOpenAI

from ._helpers import running_server, wait_for, wait_job

MODEL = "qwen2.5:7b"


@pytest.fixture(scope="module")
def gpu() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(models=(MODEL, "nomic-embed-text")) as f:
        yield f


@pytest.fixture(scope="module")
def claude() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as f:
        yield f


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, gpu: FakeOpenAI, claude: FakeAnthropic
) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("ollama")
    config = root / "corral.toml"
    config.write_text(
        "[ollama]\nembed_provider = 'gpu'\n\n"
        "[providers.gpu]\nkind = 'openai'\n"
        f"base_url = {json.dumps(gpu.url)}\napi_key_env = 'GPU_KEY'\n"
        f"models = [{json.dumps(MODEL)}]\nembedding_model = 'nomic-embed-text'\n"
        "max_retries = 0\n\n"
        "[providers.haiku]\nkind = 'anthropic'\n"
        f"base_url = {json.dumps(claude.url)}\napi_key = {json.dumps(claude.api_key)}\n"
        "models = ['claude-haiku-4-5-20251001']\n"
    )
    with running_server(
        root / "data", args=("--config", str(config)), env={"GPU_KEY": gpu.api_key}
    ) as s:
        yield s


@pytest.fixture
def client(srv: ServerProcess) -> Iterator[ollama.Client]:
    with ollama.Client(host=srv.url, headers={"Authorization": f"Bearer {srv.admin_key}"}) as c:
        yield c


def test_version_is_there_for_clients_that_probe_it(client: ollama.Client) -> None:
    # The package has no version() of its own; its transport and error handling are used.
    body = client._request_raw("GET", "/api/version").json()
    assert body == {"version": "0.12.6", "corral": __version__}


def test_errors_on_api_paths_have_ollamas_shape(srv: ServerProcess, client: ollama.Client) -> None:
    with ollama.Client(host=srv.url) as anonymous, pytest.raises(ollama.ResponseError) as info:
        anonymous.generate(model=MODEL, prompt="hi")
    assert info.value.status_code == 401
    assert isinstance(info.value.error, str) and "credentials" in info.value.error

    with pytest.raises(ollama.ResponseError) as info:
        client.pull("llama3.2")  # not something corral does
    assert info.value.status_code == 404 and isinstance(info.value.error, str)

    resp = httpx.post(
        f"{srv.url}/api/show",
        content=b"{not json",
        headers={"Authorization": f"Bearer {srv.admin_key}"},
    )
    assert resp.status_code == 400 and isinstance(resp.json()["error"], str)
    # corral's own /api/delegated/status keeps corral's shape
    mine = httpx.get(f"{srv.url}/api/delegated/status")
    assert mine.status_code == 401 and mine.json()["error"]["code"] == "unauthorized"


def test_generate_without_streaming(client: ollama.Client, gpu: FakeOpenAI) -> None:
    gpu.reply("Generated in one piece.", match="one piece please")
    before = len(gpu.requests)
    reply = client.generate(
        model=MODEL, prompt="one piece please", system="Be brief.", options={"temperature": 0}
    )
    assert reply.response == "Generated in one piece."
    assert reply.done is True and reply.done_reason == "stop"
    assert reply.model == MODEL and reply.created_at
    assert (reply.prompt_eval_count or 0) > 0 and (reply.eval_count or 0) > 0
    assert (reply.total_duration or 0) > 0
    assert reply.context is None  # no token ids to give: omitted
    sent = gpu.requests[before:]
    assert len(sent) == 1
    assert sent[0]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one piece please"},
    ]
    assert sent[0]["temperature"] == 0


def test_generate_streams_ndjson_pieces(client: ollama.Client, gpu: FakeOpenAI) -> None:
    gpu.reply("one two three four", match="count for me")
    parts = list(client.generate(model=MODEL, prompt="count for me", stream=True))
    assert len(parts) >= 3
    *pieces, last = parts
    assert all(p.done is False for p in pieces)
    assert "".join(p.response or "" for p in pieces) == "one two three four"
    assert last.done is True and last.done_reason == "stop" and last.response == ""
    assert (last.eval_count or 0) > 0 and (last.total_duration or 0) > 0


def test_generate_edge_cases(client: ollama.Client) -> None:
    loaded = client.generate(model=MODEL)  # an empty prompt loads the model on Ollama
    assert loaded.done is True and loaded.response == "" and loaded.done_reason == "load"
    with pytest.raises(ollama.ResponseError) as info:
        client.generate(model="nope", prompt="x")
    assert info.value.status_code == 404 and "not found" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        client.generate(model=MODEL, prompt="x", suffix="tail")
    assert info.value.status_code == 400 and "suffix" in info.value.error


def test_show_gives_the_providers_details(client: ollama.Client) -> None:
    shown = client.show(MODEL)
    assert shown.capabilities == ["completion", "tools"]
    assert shown.modelinfo is not None
    assert shown.modelinfo["corral.provider"] == "gpu"
    assert shown.modelinfo["corral.kind"] == "openai"
    assert shown.modelinfo["openai.owned_by"] == "fake"  # from the provider's model list
    assert shown.modified_at == datetime.fromtimestamp(1700000000, UTC)
    assert shown.details is not None

    claude = client.show("claude-haiku-4-5-20251001")
    assert claude.modelinfo is not None
    assert claude.modelinfo["corral.provider"] == "haiku"
    assert claude.modelinfo["anthropic.display_name"] == "claude-haiku-4-5-20251001"

    assert client.show("nomic-embed-text").capabilities == ["embedding"]
    with pytest.raises(ollama.ResponseError) as info:
        client.show("nope")
    assert info.value.status_code == 404 and "not found" in info.value.error


def test_ps_lists_the_models_busy_now(
    srv: ServerProcess, client: ollama.Client, gpu: FakeOpenAI
) -> None:
    assert client.ps().models == []
    gpu.reply("slow " * 12, delay=0.3, match="take your time")
    with srv.http() as http:
        resp = http.post("/jobs", json={"prompt": "take your time", "preferred_ai": "gpu"})
        assert resp.status_code == 202, resp.text
        job = resp.json()["job_id"]
        wait_job(http, job, "running")
        busy = client.ps().models
        assert [m.model for m in busy] == [MODEL]
        assert busy[0].expires_at is not None and busy[0].details is not None
        wait_job(http, job)
    assert client.ps().models == []


def test_legacy_embeddings(client: ollama.Client, gpu: FakeOpenAI) -> None:
    got = client.embeddings(model="nomic-embed-text", prompt="a sentence")
    assert len(got.embedding) == 4
    assert gpu.embed_requests[-1]["input"] == "a sentence"
    assert client.embeddings(model="nomic-embed-text", prompt="").embedding == []


def test_generate_by_several_clients_at_once(srv: ServerProcess, gpu: FakeOpenAI) -> None:
    for i in range(3):
        gpu.reply(f"answer {i}", match=f"question {i}")
    answers: dict[int, str] = {}

    def ask(i: int) -> None:
        with ollama.Client(host=srv.url, headers={"Authorization": f"Bearer {srv.admin_key}"}) as c:
            answers[i] = c.generate(model=MODEL, prompt=f"question {i}").response or ""

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    wait_for(lambda: len(answers) == 3, what="three answers")
    assert answers == {i: f"answer {i}" for i in range(3)}
