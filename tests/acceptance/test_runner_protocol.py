"""Runner protocol v1 spoken by hand against a server without an embedded
runner: leases, worker JWTs, and epoch fencing (a stale write gets 409)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from corral.testing import ServerProcess

from ._helpers import (
    assert_error,
    get_job,
    output_lines,
    running_server,
    session_events,
    submit,
    wait_for,
    wait_job,
)

# Each test's runner serves a provider named like it, so tests sharing the
# server never lease each other's jobs; routing only sends jobs to
# configured providers, hence the table.
RUNNER_NAMES = ("manual-ok", "fenced", "sleepy", "sleepy-once", "poller", "artifacts", "vanished")
NO_RUNNER = {
    "CORRAL_RUNNER__EMBEDDED": "false",
    "CORRAL_LEASE_TTL": "2",
    "CORRAL_WATCHDOG_INTERVAL": "0.2",
    "CORRAL_MAX_INFRA_RETRIES": "1",
    "CORRAL_MAX_ARTIFACT_BYTES": "2048",
    "CORRAL_PROVIDERS": json.dumps({name: {"kind": "shell"} for name in RUNNER_NAMES}),
}


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with no runner of its own, short leases and a fast watchdog."""
    with running_server(tmp_path_factory.mktemp("bare") / "data", env=NO_RUNNER) as s:
        yield s


@pytest.fixture
def api(bare: ServerProcess) -> Iterator[httpx.Client]:
    with bare.http() as client:
        yield client


def register(api: httpx.Client, name: str, slots: int = 1) -> str:
    """Register runner ``name``; it serves only the provider of the same name, so
    tests sharing the server never lease each other's jobs."""
    resp = api.post(
        "/runners/register",
        json={"name": name, "providers": [name], "slots": slots, "hostname": "test"},
    )
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["protocol"] == "v1"
    assert data["lease_ttl"] == 2.0
    runner_id: str = data["runner_id"]
    return runner_id


def lease(api: httpx.Client, runner_id: str, wait: float = 5) -> list[dict[str, Any]]:
    resp = api.post(f"/runners/{runner_id}/lease", json={"max_jobs": 1, "wait": wait})
    assert resp.status_code == 200, resp.text
    jobs: list[dict[str, Any]] = resp.json()["jobs"]
    return jobs


def worker(
    api: httpx.Client, method: str, path: str, token: str, body: Any = None
) -> httpx.Response:
    return api.request(method, path, json=body, headers={"Authorization": f"Bearer {token}"})


def output(line: str) -> dict[str, Any]:
    return {"events": [{"type": "output", "payload": {"stream": "stdout", "line": line}}]}


def test_full_lease_run_complete_cycle(api: httpx.Client) -> None:
    runner_id = register(api, "manual-ok")
    job_id = submit(api, "echo by hand", provider="manual-ok")
    [item] = lease(api, runner_id)
    assert item["job"]["id"] == job_id
    assert item["job"]["state"] == "assigned"
    assert item["job"]["runner_id"] == runner_id
    assert item["epoch"] == item["job"]["epoch"] == item["session"]["epoch"] >= 1
    token = item["token"]

    resp = worker(api, "PUT", "/worker/state", token, {"state": "running"})
    assert resp.status_code == 200, resp.text
    assert get_job(api, job_id)["state"] == "running"

    resp = worker(api, "POST", "/worker/events", token, output("hello from the runner"))
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["accepted"]) == 1

    # A re-sent event (same event_id) is skipped, not stored twice.
    batch = {
        "events": [
            {
                "event_id": "evt-fixed-1",
                "type": "output",
                "payload": {"stream": "stdout", "line": "once"},
            }
        ]
    }
    first = worker(api, "POST", "/worker/events", token, batch)
    again = worker(api, "POST", "/worker/events", token, batch)
    assert first.status_code == again.status_code == 200
    assert len(first.json()["accepted"]) == 1 and first.json()["duplicates"] == []
    assert again.json()["accepted"] == [] and again.json()["duplicates"] == ["evt-fixed-1"]

    resp = worker(api, "POST", "/worker/heartbeat", token)
    assert resp.status_code == 200, resp.text
    assert resp.json()["state"] == "running"
    token = resp.json()["token"]  # heartbeats renew the worker JWT

    resp = worker(
        api,
        "POST",
        "/worker/complete",
        token,
        {"outcome": {"status": "done", "result": "all good", "exit_code": 0}},
    )
    assert resp.status_code == 200, resp.text
    job = get_job(api, job_id)
    assert job["state"] == "done" and job["result"] == "all good"
    events = session_events(api, job["session_id"])
    assert output_lines(events) == ["hello from the runner", "once"]

    # The job is over: further writes with its token are refused.
    resp = worker(api, "POST", "/worker/events", token, output("too late"))
    assert_error(resp, 409, "job_not_active")


def test_reregistration_fences_the_old_epoch(api: httpx.Client) -> None:
    old_runner = register(api, "fenced")
    job_id = submit(api, "echo fenced", max_attempts=2, provider="fenced")
    [item] = lease(api, old_runner)
    old_token, old_epoch = item["token"], item["epoch"]
    assert worker(api, "PUT", "/worker/state", old_token, {"state": "running"}).status_code == 200
    resp = worker(api, "POST", "/worker/events", old_token, output("attempt one"))
    assert resp.status_code == 200, resp.text

    # The same runner name registers again (a restart): its jobs are released at once.
    new_runner = register(api, "fenced")
    assert new_runner != old_runner
    job = get_job(api, job_id)
    assert job["state"] == "queued"
    # Lost to infrastructure, not the agent: the same attempt runs again.
    assert job["attempt"] == 1 and job["infra_retries"] == 1
    assert job["reason"] == "runner_restarted" and job["failure"] == "infra"
    assert job["epoch"] > old_epoch

    # The replaced registration may not lease any more.
    resp = api.post(f"/runners/{old_runner}/lease", json={"max_jobs": 1, "wait": 0})
    assert_error(resp, 403, "forbidden")

    [item2] = lease(api, new_runner)
    assert item2["job"]["id"] == job_id
    new_token, new_epoch = item2["token"], item2["epoch"]
    assert new_epoch > old_epoch

    # Every write carrying the old epoch is refused with 409 stale_epoch ...
    err = assert_error(
        worker(api, "POST", "/worker/events", old_token, output("zombie")), 409, "stale_epoch"
    )
    assert str(old_epoch) in err["message"]
    assert_error(worker(api, "POST", "/worker/heartbeat", old_token), 409, "stale_epoch")
    assert_error(
        worker(api, "PUT", "/worker/state", old_token, {"state": "running"}), 409, "stale_epoch"
    )
    assert_error(
        worker(
            api,
            "POST",
            "/worker/complete",
            old_token,
            {"outcome": {"status": "done", "result": "stale"}},
        ),
        409,
        "stale_epoch",
    )

    # ... while the new owner's writes go through.
    assert worker(api, "PUT", "/worker/state", new_token, {"state": "running"}).status_code == 200
    resp = worker(api, "POST", "/worker/events", new_token, output("attempt two"))
    assert resp.status_code == 200, resp.text
    resp = worker(
        api,
        "POST",
        "/worker/complete",
        new_token,
        {"outcome": {"status": "done", "result": "fresh", "exit_code": 0}},
    )
    assert resp.status_code == 200, resp.text
    job = get_job(api, job_id)
    assert job["state"] == "done" and job["result"] == "fresh" and job["attempt"] == 1
    lines = output_lines(session_events(api, job["session_id"]))
    assert lines == ["attempt one", "attempt two"]  # nothing from the stale writer


def test_expired_lease_is_requeued_and_old_token_gets_409(api: httpx.Client) -> None:
    runner_id = register(api, "sleepy")
    job_id = submit(api, "echo sleepy", provider="sleepy")
    [item] = lease(api, runner_id)
    old_token, old_epoch = item["token"], item["epoch"]
    assert worker(api, "PUT", "/worker/state", old_token, {"state": "running"}).status_code == 200
    expired_before = api.get("/watchdog/status").json()["expired"]

    # No heartbeats: the watchdog re-queues the job after the 2 s lease, as the
    # same attempt (a lost runner is not the agent's failure).
    job = wait_for(
        lambda: (j := get_job(api, job_id))["infra_retries"] == 1 and j,
        timeout=15,
        what="the watchdog to re-queue the job",
    )
    assert job["state"] == "queued" and job["attempt"] == 1
    assert job["reason"] == "runner_lost"
    assert job["epoch"] > old_epoch
    assert api.get("/watchdog/status").json()["expired"] >= expired_before + 1

    [item2] = lease(api, runner_id)
    new_token = item2["token"]
    assert item2["epoch"] > old_epoch
    assert_error(
        worker(api, "POST", "/worker/events", old_token, output("late")), 409, "stale_epoch"
    )
    resp = worker(api, "POST", "/worker/events", new_token, output("on time"))
    assert resp.status_code == 200, resp.text
    resp = worker(
        api,
        "POST",
        "/worker/complete",
        new_token,
        {"outcome": {"status": "failed", "error": "boom", "reason": "exit_code", "exit_code": 2}},
    )
    assert resp.status_code == 200, resp.text
    job = get_job(api, job_id)
    assert job["state"] == "failed"  # an agent error, and no attempts left
    assert job["error"] == "boom" and job["exit_code"] == 2 and job["failure"] == "agent"


def test_expired_leases_past_the_infra_budget_fail_the_job(api: httpx.Client) -> None:
    runner_id = register(api, "sleepy-once")
    job_id = submit(api, "echo once", provider="sleepy-once")
    [_first] = lease(api, runner_id)
    wait_for(
        lambda: get_job(api, job_id)["infra_retries"] == 1,
        timeout=15,
        what="the first expired lease to re-queue the job",
    )
    [item] = lease(api, runner_id)
    job = wait_job(api, job_id, timeout=15)
    assert job["state"] == "failed"
    assert job["reason"] == "runner_lost" and job["failure"] == "infra"
    assert "1 infrastructure retries spent" in job["error"]
    assert job["attempt"] == 1
    assert_error(
        worker(api, "POST", "/worker/complete", item["token"], {"outcome": {"status": "done"}}),
        409,
        "stale_epoch",
    )


def test_lease_long_polls_until_work_arrives(api: httpx.Client, bare: ServerProcess) -> None:
    runner_id = register(api, "poller")
    # Nothing queued: the lease waits its time, then returns empty.
    started = time.monotonic()
    assert lease(api, runner_id, wait=0.3) == []
    assert time.monotonic() - started >= 0.3

    result: dict[str, Any] = {}

    def poll() -> None:
        with bare.http() as c:
            start = time.monotonic()
            resp = c.post(f"/runners/{runner_id}/lease", json={"max_jobs": 1, "wait": 10})
            result["elapsed"] = time.monotonic() - start
            result["jobs"] = resp.json()["jobs"]

    t = threading.Thread(target=poll)
    t.start()
    time.sleep(0.3)
    job_id = submit(api, "echo wake up", provider="poller")
    t.join(15)
    assert not t.is_alive()
    assert [j["job"]["id"] for j in result["jobs"]] == [job_id]
    assert result["elapsed"] < 5  # woken by the submit, not by the 10 s timeout
    assert api.post(f"/jobs/{job_id}/cancel").json()["state"] == "cancelled"


def test_worker_endpoints_need_a_worker_token(api: httpx.Client, bare: ServerProcess) -> None:
    # The admin API key is not a worker JWT.
    assert_error(api.post("/worker/events", json=output("x")), 401, "unauthorized")
    assert_error(worker(api, "POST", "/worker/heartbeat", "not-a-jwt"), 401, "unauthorized")
    resp = httpx.post(bare.url + "/worker/events", json=output("x"))
    assert_error(resp, 401, "unauthorized")
    assert_error(
        api.post("/runners/nope/lease", json={"max_jobs": 1, "wait": 0}), 404, "runner_not_found"
    )


def test_no_embedded_runner_means_jobs_wait(api: httpx.Client) -> None:
    job_id = submit(api, "echo nobody runs me")
    runners = api.get("/runners").json()
    assert not any(r["name"].startswith("embedded-") for r in runners)
    assert get_job(api, job_id)["state"] == "queued"
    resp = api.post(f"/jobs/{job_id}/cancel")
    assert resp.status_code == 200 and resp.json()["state"] == "cancelled"


def test_artifacts_upload_list_download_and_limits(api: httpx.Client) -> None:
    runner_id = register(api, "artifacts")
    job_id = submit(api, "echo artifacts", provider="artifacts")
    [item] = lease(api, runner_id)
    token = item["token"]
    auth = {"Authorization": f"Bearer {token}"}
    patch = b"diff --git a/x b/x\n+\x00binary-safe\xff\n"
    resp = api.put(
        "/worker/artifacts/diff.patch",
        content=patch,
        headers={**auth, "Content-Type": "text/x-diff"},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["size"] == len(patch)
    # Over max_artifact_bytes (2048 here): 413, nothing stored.
    big = api.put("/worker/artifacts/big.bin", content=b"x" * 4096, headers=auth)
    assert_error(big, 413, "payload_too_large")
    # Names are plain file names: no paths, no dot files.
    for bad in ("..%2Fescape", ".hidden", "a%2Fb"):
        resp = api.put(f"/worker/artifacts/{bad}", content=b"x", headers=auth)
        assert resp.status_code in (404, 422), (bad, resp.status_code)
    # Only the job's worker may write its artifacts.
    assert_error(api.put("/worker/artifacts/x.txt", content=b"x"), 401)

    listed = api.get(f"/jobs/{job_id}/artifacts").json()
    assert [(a["name"], a["size"], a["media_type"]) for a in listed] == [
        ("diff.patch", len(patch), "text/x-diff")
    ]
    got = api.get(f"/jobs/{job_id}/artifacts/diff.patch")
    assert got.status_code == 200 and got.content == patch
    assert got.headers["content-type"].startswith("text/x-diff")
    assert_error(api.get(f"/jobs/{job_id}/artifacts/nope.txt"), 404, "artifact_not_found")
    assert_error(api.get("/jobs/nope/artifacts"), 404, "job_not_found")

    # Once the job has ended, its worker can no longer write.
    done = worker(api, "POST", "/worker/complete", token, {"outcome": {"status": "done"}})
    assert done.status_code == 200, done.text
    late = api.put("/worker/artifacts/late.txt", content=b"x", headers=auth)
    assert_error(late, 409, "job_not_active")


def test_a_lease_its_runner_never_receives_goes_back_at_once(
    api: httpx.Client, bare: ServerProcess
) -> None:
    """The runner's connection closes while its long poll waits; a job arriving
    then is leased, the answer cannot reach anyone: the job is queued again at
    once (no lease_ttl to wait out, no retry spent)."""
    runner_id = register(api, "vanished")
    request = (
        f"POST /runners/{runner_id}/lease HTTP/1.1\r\nHost: corral\r\n"
        f"Authorization: Bearer {bare.admin_key}\r\nContent-Type: application/json\r\n"
    ).encode()
    body = json.dumps({"max_jobs": 1, "wait": 30}).encode()
    undelivered = 0
    for _ in range(3):  # the server may notice the closed socket first: try again
        sock = socket.create_connection(("127.0.0.1", bare.port))
        sock.sendall(request + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.3)  # the long poll is waiting
        sock.close()
        job_id = submit(api, "echo nobody", preferred_ai="vanished")
        deadline = time.monotonic() + 3
        job = get_job(api, job_id)
        while job["reason"] != "lease_undelivered" and time.monotonic() < deadline:
            time.sleep(0.05)
            job = get_job(api, job_id)
        # Either given back at once, or never leased (the server saw the
        # socket close first): never held by the vanished runner.
        assert job["state"] == "queued", job
        assert job["infra_retries"] == 0 and job["attempt"] == 1, job
        if job["reason"] == "lease_undelivered":
            undelivered += 1
            events = session_events(api, job["session_id"])
            states = [e["payload"]["to"] for e in events if e["type"] == "job.state"]
            assert states == ["queued", "assigned", "queued"], states
        api.post(f"/jobs/{job_id}/cancel")
        if undelivered:
            break
    assert undelivered, "the closed connection was never leased to"
