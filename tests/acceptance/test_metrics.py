"""GET /metrics read with prometheus_client's own text parser, on a real
`corral serve`: after known jobs (leased and completed by the test, acting
as a runner over protocol v1, so usage, cost and tool calls are exact) the
counters, histograms and gauges moved by exactly what happened."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from corral.testing import ServerProcess

from ._helpers import running_server, wait_for
from .test_webhooks import SECRET, Endpoint

# No embedded runner: the test is the runner.
ENV = {"CORRAL_RUNNER__EMBEDDED": "false", "CORRAL_LEASE_TTL": "600"}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("metrics") / "data", env=ENV) as s:
        yield s


@pytest.fixture
def http(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.http() as client:
        yield client


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(http: httpx.Client) -> Samples:
    resp = http.get("/metrics")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=")
    out: Samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def lease(http: httpx.Client, runner_id: str, job_id: str) -> dict[str, str]:
    resp = http.post(f"/runners/{runner_id}/lease", json={"max_jobs": 1, "wait": 5})
    assert resp.status_code == 200, resp.text
    leased = resp.json()["jobs"]
    assert [j["job"]["id"] for j in leased] == [job_id]
    headers = {"Authorization": f"Bearer {leased[0]['token']}"}
    assert http.put("/worker/state", json={"state": "running"}, headers=headers).status_code < 300
    return headers


def submit(http: httpx.Client, **body: Any) -> str:
    resp = http.post("/jobs", json={"command": "true", "max_attempts": 1, **body})
    assert resp.status_code == 202, resp.text
    job_id: str = resp.json()["job_id"]
    return job_id


def test_counters_after_known_jobs(srv: ServerProcess, http: httpx.Client) -> None:
    assert httpx.get(f"{srv.url}/metrics").status_code == 401
    runner = http.post("/runners/register", json={"name": "t", "providers": ["shell"], "slots": 4})
    runner_id = runner.json()["runner_id"]
    before = scrape(http)
    hook = Endpoint()
    try:
        done = submit(http, webhook={"url": hook.url, "secret": SECRET})
        worker = lease(http, runner_id, done)
        tool_result = {
            "event_id": uuid.uuid4().hex,
            "type": "tool.result",
            "payload": {"id": "c1", "server": "corral", "tool": "get_job", "is_error": False},
        }
        resp = http.post("/worker/events", json={"events": [tool_result]}, headers=worker)
        assert resp.status_code < 300, resp.text
        outcome = {
            "status": "done",
            "cost": 0.25,
            "usage": {"input_tokens": 100, "output_tokens": 20, "cache_read_input_tokens": 5},
        }
        resp = http.post("/worker/complete", json={"outcome": outcome}, headers=worker)
        assert resp.status_code < 300, resp.text

        failed = submit(http)
        worker = lease(http, runner_id, failed)
        outcome = {"status": "failed", "error": "no", "usage": {"prompt_tokens": 7}}
        resp = http.post("/worker/complete", json={"outcome": outcome}, headers=worker)
        assert resp.status_code < 300, resp.text

        cancelled = submit(http)
        assert http.post(f"/jobs/{cancelled}/cancel").status_code < 300

        # Deliveries are counted once recorded, after the endpoint answered.
        wait_for(lambda: len(hook.states(done)) >= 2 or None, timeout=20)
        after: Samples = {}

        def delivered() -> bool | None:
            nonlocal after
            after = scrape(http)
            n = value(after, "corral_webhook_deliveries_total", outcome="delivered")
            return (
                n - value(before, "corral_webhook_deliveries_total", outcome="delivered") >= 2
                or None
            )

        wait_for(delivered, timeout=20)
    finally:
        hook.close()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    jobs = "corral_jobs_total"
    assert delta(jobs, provider="shell", state="queued") == 3
    assert delta(jobs, provider="shell", state="assigned") == 2
    assert delta(jobs, provider="shell", state="running") == 2
    assert delta(jobs, provider="shell", state="done") == 1
    assert delta(jobs, provider="shell", state="failed") == 1
    assert delta(jobs, provider="shell", state="cancelled") == 1
    assert delta("corral_job_cost_usd_total", provider="shell", model="") == pytest.approx(0.25)
    tokens = "corral_tokens_total"
    assert delta(tokens, provider="shell", model="", kind="input") == 107
    assert delta(tokens, provider="shell", model="", kind="output") == 20
    assert delta(tokens, provider="shell", model="", kind="cache_read") == 5
    assert delta("corral_tool_calls_total", server="corral", outcome="ok") == 1
    assert delta("corral_job_queue_wait_seconds_count", provider="shell") == 2
    assert delta("corral_job_submit_to_start_seconds_count", provider="shell") == 2
    assert delta("corral_job_run_seconds_count", provider="shell", state="done") == 1
    assert delta("corral_job_run_seconds_count", provider="shell", state="failed") == 1
    # The cancelled job never ran: no run time.
    assert delta("corral_job_run_seconds_count", provider="shell", state="cancelled") == 0
    # Fleet-wide gauges, from the store's counts.
    assert value(after, "corral_jobs_current", state="done") >= 1
    assert value(after, "corral_provider_jobs_current", provider="shell", state="cancelled") >= 1
    assert value(after, "corral_runners") == 1
    # prometheus-client's own collectors.
    assert value(after, "process_cpu_seconds_total") > 0
    assert ("python_info", ()) in {(n, ()) for n, _ in after}


def test_gauges_equal_the_table(http: httpx.Client) -> None:
    samples = scrape(http)
    listed: dict[str, int] = {}
    for state in ("queued", "done", "failed", "cancelled"):
        page = http.get("/jobs", params={"state": state, "limit": 500}).json()
        listed[state] = len(page["jobs"])
        assert value(samples, "corral_jobs_current", state=state) == listed[state]
