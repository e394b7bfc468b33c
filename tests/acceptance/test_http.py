"""The HTTP API of a real server: submit, read, list, idempotency, error shapes."""

from __future__ import annotations

import uuid

import httpx

from corral.testing import ServerProcess

from ._helpers import assert_error, output_lines, session_events, submit, ts, wait_job


def test_submit_poll_until_done(http: httpx.Client) -> None:
    resp = http.post(
        "/jobs",
        json={
            "command": "echo one; echo two; echo three >&2",
            "title": "http job",
            "labels": ["x", "y"],
        },
    )
    assert resp.status_code == 202, resp.text
    accepted = resp.json()
    job_id = accepted["job_id"]
    # As its create transaction left it: assigned when the runner's poll was
    # waiting for work (handed over in that transaction), else queued.
    handed = accepted["state"] == "assigned"
    assert handed or accepted["state"] == "queued", accepted
    assert accepted["created"] is True
    assert accepted["session_id"]

    job = wait_job(http, job_id)
    assert job["state"] == "done", job
    assert job["id"] == job_id
    assert job["session_id"] == accepted["session_id"]
    assert job["exit_code"] == 0
    assert job["attempt"] == 1 and job["max_attempts"] == 1
    assert job["title"] == "http job" and job["labels"] == ["x", "y"]
    assert job["source"] == "api" and job["provider"] == "shell"
    assert job["error"] is None
    # The result is the tail of the output (stdout and stderr).
    for line in ("one", "two", "three"):
        assert line in job["result"].splitlines()
    for stamp in ("created_at", "assigned_at", "started_at", "finished_at"):
        assert job[stamp] is not None, stamp
    assert ts(job["created_at"]) <= ts(job["started_at"]) <= ts(job["finished_at"])
    # Handed over: assigned in the creating transaction; queued: by a later lease.
    assert (job["assigned_at"] == job["created_at"]) is handed, (accepted, job)

    # Its events: queued -> assigned -> running -> done, and the output lines.
    events = session_events(http, job["session_id"])
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    states = [e["payload"]["to"] for e in events if e["type"] == "job.state"]
    assert states == ["queued", "assigned", "running", "done"]
    assert sorted(output_lines(events)) == ["one", "three", "two"]
    streams = {
        e["payload"]["line"]: e["payload"]["stream"] for e in events if e["type"] == "output"
    }
    assert streams == {"one": "stdout", "two": "stdout", "three": "stderr"}

    # The job's own events, as JSON.
    resp = http.get(f"/jobs/{job_id}/events")
    assert resp.status_code == 200
    page = resp.json()
    assert [e["seq"] for e in page["events"]] == [e["seq"] for e in events]
    assert page["next_since"] == events[-1]["seq"]


def test_failed_job_reports_exit_code(http: httpx.Client) -> None:
    job = wait_job(http, submit(http, "echo partial; exit 5"))
    assert job["state"] == "failed"
    assert job["exit_code"] == 5
    assert job["reason"] == "exit_code"
    assert "exit code 5" in job["error"]
    assert "partial" in job["result"]


def test_list_jobs_filters_and_pages(http: httpx.Client) -> None:
    done_ids = [submit(http, f"echo {i}") for i in range(3)]
    failed_id = submit(http, "exit 1")
    for job_id in [*done_ids, failed_id]:
        wait_job(http, job_id)

    resp = http.get("/jobs", params={"state": "done", "limit": 500})
    assert resp.status_code == 200
    listed = resp.json()["jobs"]
    assert set(done_ids) <= {j["id"] for j in listed}
    assert failed_id not in {j["id"] for j in listed}
    assert all(j["state"] == "done" for j in listed)

    resp = http.get("/jobs", params={"state": "failed", "limit": 500})
    assert failed_id in {j["id"] for j in resp.json()["jobs"]}
    assert not set(done_ids) & {j["id"] for j in resp.json()["jobs"]}
    mine = {*done_ids, failed_id}
    resp = http.get("/jobs", params=[("state", "done"), ("state", "failed"), ("limit", "500")])
    assert mine <= {j["id"] for j in resp.json()["jobs"]}
    resp = http.get("/jobs", params={"state": "failed,done", "limit": 500})
    assert mine <= {j["id"] for j in resp.json()["jobs"]}

    # Newest first, paged with `before`.
    newest_first = [failed_id, *reversed(done_ids)]
    resp = http.get("/jobs", params={"limit": 2})
    page = resp.json()
    assert [j["id"] for j in page["jobs"]] == newest_first[:2]
    assert page["next"] == newest_first[1]
    resp = http.get("/jobs", params={"limit": 2, "before": page["next"]})
    assert [j["id"] for j in resp.json()["jobs"]] == newest_first[2:]

    assert_error(http.get("/jobs", params={"state": "bogus"}), 400, "bad_request")


def test_idempotency_key_returns_the_same_job(http: httpx.Client) -> None:
    body = {"command": "echo once", "idempotency_key": f"deploy-{uuid.uuid4()}"}
    first = http.post("/jobs", json=body)
    assert first.status_code == 202, first.text
    assert first.json()["created"] is True
    second = http.post("/jobs", json=body)
    assert second.status_code == 200, second.text
    assert second.json()["created"] is False
    assert second.json()["job_id"] == first.json()["job_id"]
    assert second.json()["session_id"] == first.json()["session_id"]

    wait_job(http, first.json()["job_id"])
    third = http.post("/jobs", json={**body, "command": "echo something else"})
    assert third.status_code == 200
    assert third.json()["job_id"] == first.json()["job_id"]
    # Only one job was made: the session has a single turn.
    session = http.get(f"/sessions/{first.json()['session_id']}").json()
    assert session["turns"] == 1
    assert [j["id"] for j in session["jobs"]] == [first.json()["job_id"]]


def test_bad_input_gets_json_errors_not_500(http: httpx.Client, srv: ServerProcess) -> None:
    err = assert_error(http.post("/jobs", json={}), 422, "invalid_input")
    assert "prompt" in err["message"] or "command" in err["message"]
    assert_error(http.post("/jobs", json={"prompt": "x", "priority": 99}), 422, "invalid_input")
    assert_error(http.post("/jobs", json={"prompt": "x", "nope": 1}), 422, "invalid_input")
    assert_error(
        http.post("/jobs", content=b"{not json", headers={"content-type": "application/json"}), 400
    )
    assert_error(http.get("/jobs/does-not-exist"), 404, "job_not_found")
    assert_error(http.post("/jobs/does-not-exist/cancel"), 404, "job_not_found")
    assert_error(http.get("/sessions/does-not-exist"), 404, "session_not_found")
    assert_error(http.get("/no/such/route"), 404)
    big = "x" * (2 * 1024 * 1024)
    assert_error(http.post("/jobs", json={"prompt": big}), 413, "payload_too_large")
    # Still healthy afterwards.
    assert httpx.get(srv.url + "/health").json()["status"] == "ok"


def test_cancel_and_retry_state_conflicts(http: httpx.Client) -> None:
    job_id = submit(http, "echo fine")
    wait_job(http, job_id, "done")
    assert_error(http.post(f"/jobs/{job_id}/cancel"), 409, "invalid_transition")
    assert_error(http.post(f"/jobs/{job_id}/retry"), 409, "invalid_transition")

    failed = submit(http, 'echo "attempt $CORRAL_ATTEMPT"; [ "$CORRAL_ATTEMPT" = 2 ]')
    assert wait_job(http, failed)["state"] == "failed"
    resp = http.post(f"/jobs/{failed}/retry")
    assert resp.status_code == 200, resp.text
    assert resp.json()["state"] == "queued"
    assert resp.json()["attempt"] == 2
    job = wait_job(http, failed)
    assert job["state"] == "done", job
    assert job["attempt"] == 2
    assert "attempt 2" in job["result"]


def test_status_and_watchdog_endpoints(http: httpx.Client) -> None:
    wait_job(http, submit(http, "true"))
    status = http.get("/status").json()
    assert status["database"] == "sqlite"
    assert status["jobs"].get("done", 0) >= 1
    assert any(r["name"].startswith("embedded-") for r in status["runners"])
    wd = http.get("/watchdog/status").json()
    assert wd["lease_ttl"] > 0 and wd["interval"] > 0
    assert wd["last_error"] is None
