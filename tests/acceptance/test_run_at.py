"""Scheduled jobs with a real `corral serve`: `corral submit --at` queues a
job that runs no earlier than its time; `jobs show` says when and why it
waits; a time without a zone is refused everywhere."""

from __future__ import annotations

import json
from datetime import timedelta

import httpx

from corral.testing import ServerProcess

from ._helpers import cli_many, get_job, ts, wait_job


def test_submit_at_waits_then_runs(srv: ServerProcess, http: httpx.Client) -> None:
    # +5 s, not less: on a loaded machine the CLI alone can take 2 s to
    # start, and the job must exist before its time for the wait to show.
    res = srv.cli("submit", "--shell", "echo later", "--at", "+5s", "--json")
    assert res.returncode == 0, res.stderr
    job_id = json.loads(res.stdout)["job_id"]
    job = wait_job(http, job_id)
    assert job["state"] == "done", job
    run_at = ts(job["run_at"])
    # The CLI reads its clock before the request: the job was created less
    # than 5 s before its time, and started no earlier than it.
    assert ts(job["created_at"]) < run_at <= ts(job["created_at"]) + timedelta(seconds=5)
    assert ts(job["started_at"]) >= run_at
    assert job["result"].strip() == "later"


def test_a_job_scheduled_later_says_so_and_can_be_cancelled(
    srv: ServerProcess, http: httpx.Client
) -> None:
    res = srv.cli("submit", "--shell", "echo much later", "--at", "+1h")
    assert res.returncode == 0, res.stderr
    assert "It runs at " in res.stdout
    job_id = res.stdout.split("job ")[1].split()[0]
    job = get_job(http, job_id)
    assert job["state"] == "queued"
    assert job["waiting"] == f"scheduled: runs at {ts(job['run_at']).isoformat('T', 'seconds')}"
    show, show_json = cli_many(srv, ("jobs", "show", job_id), ("jobs", "show", job_id, "--json"))
    assert show.returncode == 0, show.stderr
    assert "run at" in show.stdout and "scheduled: runs at" in show.stdout
    assert json.loads(show_json.stdout)["run_at"] == job["run_at"]
    assert http.post(f"/jobs/{job_id}/cancel").json()["state"] == "cancelled"


def test_a_time_without_a_zone_is_refused(srv: ServerProcess, http: httpx.Client) -> None:
    res = srv.cli("submit", "--shell", "true", "--at", "2030-01-01T09:00")
    assert res.returncode != 0
    assert "has no time zone: add Z" in res.stderr
    resp = http.post("/jobs", json={"command": "true", "run_at": "2030-01-01T09:00:00"})
    assert resp.status_code == 422
    assert "run_at needs a time zone" in resp.json()["error"]["message"]
