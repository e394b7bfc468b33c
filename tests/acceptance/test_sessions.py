"""Sessions: follow-up turns run in the same workspace, one at a time, in order."""

from __future__ import annotations

import itertools

import httpx

from corral.testing import ServerProcess

from ._helpers import assert_error, get_job, output_lines, session_events, submit, ts, wait_job


def test_follow_up_turn_shares_the_workspace(http: httpx.Client) -> None:
    first = submit(http, "echo remembered > note.txt; pwd")
    job1 = wait_job(http, first)
    assert job1["state"] == "done", job1
    session_id = job1["session_id"]

    resp = http.post(f"/sessions/{session_id}/turns", json={"command": "cat note.txt; pwd"})
    assert resp.status_code == 202, resp.text
    assert resp.json()["session_id"] == session_id
    job2 = wait_job(http, resp.json()["job_id"])
    assert job2["state"] == "done", job2
    assert job2["turn"] == 2
    lines2 = job2["result"].splitlines()
    assert lines2[0] == "remembered"
    assert lines2[1] == job1["result"].splitlines()[-1]  # same working directory

    detail = http.get(f"/sessions/{session_id}").json()
    assert detail["turns"] == 2
    assert [j["id"] for j in detail["jobs"]] == [first, job2["id"]]
    assert detail["active_job_id"] is None


def test_turns_run_one_at_a_time_in_order(http: httpx.Client) -> None:
    resp = http.post("/sessions", json={"title": "ordered"})
    assert resp.status_code == 201, resp.text
    session = resp.json()
    sid = session["id"]
    assert session["title"] == "ordered" and session["turns"] == 0

    scripts = [
        "sleep 0.6; echo one >> log.txt",
        "cat log.txt; sleep 0.3; echo two >> log.txt",
        "cat log.txt; echo three >> log.txt",
        "cat log.txt",
    ]
    ids = []
    for script in scripts:  # all queued at once; the embedded runner has 4 free slots
        resp = http.post(f"/sessions/{sid}/turns", json={"command": script})
        assert resp.status_code == 202, resp.text
        ids.append(resp.json()["job_id"])
    jobs = [wait_job(http, job_id) for job_id in ids]
    assert [j["state"] for j in jobs] == ["done"] * 4, jobs
    assert [j["turn"] for j in jobs] == [1, 2, 3, 4]
    for earlier, later in itertools.pairwise(jobs):
        assert ts(earlier["finished_at"]) <= ts(later["started_at"]), (earlier, later)
    assert jobs[3]["result"].splitlines() == ["one", "two", "three"]
    assert jobs[1]["result"].splitlines() == ["one"]

    # One log for the whole session, seqs without gaps, turns' events in order.
    events = session_events(http, sid)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    running = [
        e["job_id"] for e in events if e["type"] == "job.state" and e["payload"]["to"] == "running"
    ]
    assert running == ids
    assert output_lines(events, ids[2]) == ["one", "two"]


def test_turn_with_cli(srv: ServerProcess, http: httpx.Client) -> None:
    job1 = wait_job(http, submit(http, "echo 41 > n.txt"))
    res = srv.cli("turn", job1["session_id"], "--shell", "echo $(( $(cat n.txt) + 1 ))", "--wait")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "42"
    assert http.get(f"/sessions/{job1['session_id']}").json()["turns"] == 2


def test_turn_errors(http: httpx.Client) -> None:
    assert_error(
        http.post("/sessions/nope/turns", json={"command": "echo x"}), 404, "session_not_found"
    )
    sid = get_job(http, submit(http, "true"))["session_id"]
    assert_error(
        http.post(f"/sessions/{sid}/turns", json={"command": "echo x", "session_id": "other"}),
        400,
        "bad_request",
    )
    assert_error(http.post(f"/sessions/{sid}/turns", json={"prompt": " "}), 422, "invalid_input")
