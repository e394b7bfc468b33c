"""Delegation to another corral (kind `corral`), with two real servers: the
remote runs the work; a kill -9 of the delegating server mid-job resumes the
remote job instead of submitting it again; cancel and follow-up turns carry
over."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.testing import ServerProcess, start_server

from ._helpers import kill_leftovers, marker, running_server, session_events, wait_for, wait_job


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("remote") / "data") as s:
        yield s


def config_for(remote: ServerProcess, root: Path) -> Path:
    config = root / "corral.toml"
    config.write_text(
        # The remote corral runs the delegated prompts in its shell: named explicitly.
        "[providers.peer]\nkind = 'corral'\nremote_provider = 'shell'\n"
        f"base_url = {json.dumps(remote.url)}\napi_key = {json.dumps(remote.admin_key)}\n"
    )
    return config


def remote_jobs(remote: ServerProcess, job_id: str) -> list[dict[str, Any]]:
    with remote.http() as http:
        jobs: list[dict[str, Any]] = http.get("/jobs", params={"limit": 200}).json()["jobs"]
    return [j for j in jobs if f"delegated-from:{job_id}" in j["labels"]]


def submit(http: httpx.Client, prompt: str, **fields: Any) -> str:
    resp = http.post("/jobs", json={"prompt": prompt, "preferred_ai": "peer", **fields})
    assert resp.status_code == 202, resp.text
    job_id: str = resp.json()["job_id"]
    return job_id


def test_kill9_mid_delegation_resumes_the_remote_job(remote: ServerProcess, tmp_path: Path) -> None:
    config = config_for(remote, tmp_path)
    data = tmp_path / "data"
    args = ("--config", str(config), "--no-queue")
    env = {"CORRAL_HEARTBEAT_INTERVAL": "1"}
    m = marker()
    local = start_server(data, args=args, env=env)
    try:
        with local.http() as http:
            job_id = submit(http, f"sleep 4.{m}; echo delegated")
            wait_for(
                lambda: [j for j in remote_jobs(remote, job_id) if j["state"] == "running"],
                timeout=30,
                what="the remote job to run",
            )
            # The runner records the remote id (the session handle) and its
            # remote.submitted event soon after submitting: a crash before
            # that is a crash before the submission was known (resubmitted).
            session_id = http.get(f"/jobs/{job_id}").json()["session_id"]
            wait_for(
                lambda: (
                    [
                        f
                        for f in http.get("/api/delegated/status").json()["in_flight"]
                        if f["remote_id"]
                    ]
                    and "remote.submitted" in [e["type"] for e in session_events(http, session_id)]
                ),
                timeout=10,
                what="the remote id and the remote.submitted event to be recorded",
            )
    finally:
        local.kill()  # kill -9 while the remote job runs
    with running_server(data, args=args, env=env) as again, again.http() as http:
        job = wait_job(http, job_id, timeout=60)
        assert job["state"] == "done" and job["result"] == "delegated", job
        assert job["provider"] == "peer" and job["route_rule"] == 4  # delegated
        types = [e["type"] for e in session_events(http, job["session_id"])]
        assert types.count("remote.submitted") == 1 and "remote.resumed" in types
        assert "remote.output" in types
        status = http.get("/api/delegated/status").json()
        assert status["in_flight"] == []
        assert status["counters"]["resumed"] == 1 and status["counters"]["done"] == 1
        assert status["counters"]["retried"] == 1  # re-run after the crash, same attempt
        assert http.get("/watchdog/status").json()["delegated"] == status["counters"]
    [only] = remote_jobs(remote, job_id)  # the remote saw exactly one submission
    assert only["state"] == "done" and only["attempt"] == 1
    kill_leftovers(m)


def test_cancel_and_follow_up_turns_carry_over(remote: ServerProcess, tmp_path: Path) -> None:
    config = config_for(remote, tmp_path)
    m = marker()
    try:
        with (
            running_server(
                tmp_path / "data", args=("--config", str(config), "--no-queue")
            ) as local,
            local.http() as http,
        ):
            first = wait_job(http, submit(http, "echo one"), timeout=30)
            assert first["state"] == "done" and first["result"] == "one", first
            resp = http.post(
                f"/sessions/{first['session_id']}/turns",
                json={"prompt": "echo two", "preferred_ai": "peer"},
            )
            second = wait_job(http, resp.json()["job_id"], timeout=30)
            assert second["state"] == "done" and second["result"] == "two", second
            [r1], [r2] = remote_jobs(remote, first["id"]), remote_jobs(remote, second["id"])
            assert r1["session_id"] == r2["session_id"] and r2["turn"] == 2

            slow = submit(http, f"sleep 30.{m}")
            wait_for(
                lambda: [j for j in remote_jobs(remote, slow) if j["state"] == "running"],
                timeout=30,
                what="the remote job to run",
            )
            # The runner records the remote id (the session handle) soon after submitting.
            [flight] = wait_for(
                lambda: [
                    f
                    for f in http.get("/api/delegated/status").json()["in_flight"]
                    if f["remote_id"]
                ],
                timeout=10,
                what="the remote id to be recorded",
            )
            assert flight["job_id"] == slow and flight["provider"] == "peer"
            assert flight["remote_id"] == remote_jobs(remote, slow)[0]["id"]
            assert flight["since"] and flight["last_poll"]
            assert http.post(f"/jobs/{slow}/cancel").status_code == 200
            assert wait_job(http, slow)["state"] == "cancelled"
            wait_for(
                lambda: remote_jobs(remote, slow)[0]["state"] == "cancelled",
                timeout=20,
                what="the remote job to be cancelled",
            )
    finally:
        kill_leftovers(m)


def test_a_refused_key_is_bad_input(remote: ServerProcess, tmp_path: Path) -> None:
    config = tmp_path / "corral.toml"
    config.write_text(
        "[providers.peer]\nkind = 'corral'\n"
        f"base_url = {json.dumps(remote.url)}\napi_key = 'crl_nope_notakey'\n"
    )
    with (
        running_server(tmp_path / "data", args=("--config", str(config), "--no-queue")) as local,
        local.http() as http,
    ):
        job = wait_job(http, submit(http, "echo x", max_attempts=3), timeout=30)
        assert job["state"] == "failed" and job["failure"] == "input", job
        assert job["attempt"] == 1 and job["reason"] == "remote_unauthorized", job
