"""An upstream that echoes the API key in its error does not leak it: not in
the job's error, its events, webhook bodies, `corral jobs ls` nor the logs.
The server redacts what it knows; a runner on another host redacts its own
credentials, which the server never sees, before it sends."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.testing import ServerProcess
from tests.fakes.openai_chat import FakeOpenAI

from ._helpers import (
    create_key,
    running_server,
    session_events,
    start_runner,
    stop_process,
    wait_for,
    wait_job,
)
from .test_webhooks import SECRET, Endpoint

MODEL = "qwen2.5:7b"
# Known to the server (its provider `gpu` reads GPU_KEY) and to the runner.
SERVER_KEY = "sk-gpu-" + secrets.token_hex(16)
# Only in the runner's own configuration, on "another host".
RUNNER_KEY = "sk-far-" + secrets.token_hex(16)


def _provider(name: str, url: str, auth: str = "") -> str:
    return (
        f'[providers.{name}]\nkind = "openai"\nbase_url = "{url}"\n{auth}\n'
        f'models = ["{MODEL}"]\nmax_retries = 0\n\n'
    )


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeOpenAI, FakeOpenAI]]:
    with FakeOpenAI(api_key=SERVER_KEY) as gpu, FakeOpenAI(api_key=RUNNER_KEY) as far:
        yield gpu, far


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, fakes: tuple[FakeOpenAI, FakeOpenAI]
) -> Iterator[tuple[ServerProcess, Path]]:
    gpu, far = fakes
    root = tmp_path_factory.mktemp("redact")
    server_config = root / "server.toml"
    # The server routes to `far` but holds no key for it.
    server_config.write_text(
        _provider("gpu", gpu.url, 'api_key_env = "GPU_KEY"') + _provider("far", far.url)
    )
    runner_config = root / "runner.toml"
    runner_config.write_text(
        _provider("gpu", gpu.url, f'api_key = "{SERVER_KEY}"')
        + _provider("far", far.url, f'api_key = "{RUNNER_KEY}"')
    )
    args = ("--config", str(server_config), "--no-runner", "--no-queue")
    with running_server(root / "data", args=args, env={"GPU_KEY": SERVER_KEY}) as srv:
        key = create_key(srv, "runner")
        workdir = root / "runner"
        proc, log = start_runner(
            srv, key, workdir, "--config", str(runner_config), "--name", "elsewhere",
            "--provider", "gpu", "--provider", "far",
        )  # fmt: skip
        try:
            yield srv, log
        finally:
            stop_process(proc)


def test_an_echoed_api_key_is_redacted_everywhere(
    setup: tuple[ServerProcess, Path], fakes: tuple[FakeOpenAI, FakeOpenAI]
) -> None:
    srv, runner_log = setup
    endpoint = Endpoint()
    try:
        with srv.http() as http:
            jobs: dict[str, dict[str, Any]] = {}
            for fake, provider in zip(fakes, ("gpu", "far"), strict=True):
                fake.fail(401, "Incorrect API key provided", echo_key=True)
                body = {
                    "messages": [{"role": "user", "content": "hi"}],
                    "preferred_ai": provider,
                    "webhook": {"url": endpoint.url, "secret": SECRET},
                }
                job_id = http.post("/jobs", json=body).json()["job_id"]
                jobs[provider] = wait_job(http, job_id, timeout=30)
            for provider, job in jobs.items():
                assert job["state"] == "failed", job
                assert job["error"] == (
                    f"{provider}: HTTP 401: Incorrect API key provided: [redacted]"
                ), job
            wait_for(
                lambda: all(endpoint.states(j["id"])[-1:] == ["failed"] for j in jobs.values()),
                timeout=20,
                what="the webhooks",
            )
            seen = json.dumps(
                [
                    jobs,
                    [session_events(http, j["session_id"]) for j in jobs.values()],
                    [http.get(f"/jobs/{j['id']}/deliveries").json() for j in jobs.values()],
                    endpoint.accepted,
                ]
            )
        listed = srv.cli("jobs", "ls", "--json").stdout + srv.cli("jobs", "ls").stdout
        for text in (seen, listed, srv.output(), runner_log.read_text()):
            assert SERVER_KEY not in text and RUNNER_KEY not in text
        assert "[redacted]" in listed and seen.count("[redacted]") >= 6
    finally:
        endpoint.close()
