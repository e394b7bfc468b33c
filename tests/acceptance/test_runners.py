"""A second runner process (`corral runner`) shares the work of a server."""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

from corral.testing import ServerProcess

from ._helpers import (
    alive,
    create_key,
    get_job,
    kill_leftovers,
    marker,
    pids_exact,
    pids_matching,
    running_server,
    start_runner,
    stop_process,
    submit,
    ts,
    wait_for,
    wait_job,
)


def test_second_runner_process_shares_the_work(server: ServerProcess, tmp_path: Path) -> None:
    key = create_key(server, "runner")
    proc, log = start_runner(server, key, tmp_path / "second", "--name", "second", "--slots", "2")
    try:
        with server.http() as http:
            runners = wait_for(
                lambda: (rs := http.get("/runners").json()) and len(rs) == 2 and rs,
                timeout=20,
                what="the second runner to register",
            )
            by_name = {
                "embedded" if r["name"].startswith("embedded-") else r["name"]: r for r in runners
            }
            assert set(by_name) == {"embedded", "second"}
            assert by_name["second"]["slots"] == 2
            assert by_name["second"]["providers"] == ["shell"]
            assert by_name["second"]["status"] == "active"

            ids = [submit(http, f"sleep 0.5; echo job-{i}") for i in range(12)]
            jobs = [wait_job(http, job_id, timeout=30) for job_id in ids]
            assert [j["state"] for j in jobs] == ["done"] * 12, jobs
            assert [j["result"] for j in jobs] == [f"job-{i}" for i in range(12)]
            used = {j["runner_id"] for j in jobs}
            assert used == {by_name["embedded"]["id"], by_name["second"]["id"]}, used
            # The second runner never ran more than its 2 slots at once.
            mine = sorted(
                (ts(j["started_at"]), ts(j["finished_at"]))
                for j in jobs
                if j["runner_id"] == by_name["second"]["id"]
            )
            for start, _ in mine:
                overlapping = sum(1 for s, f in mine if s <= start < f)
                assert overlapping <= 2, mine

            # The runner's key runs jobs; it does not read the job list.
            with server.http(key) as as_runner:
                assert as_runner.get("/jobs").status_code == 403
        assert proc.poll() is None, log.read_text()
    finally:
        rc = stop_process(proc)
    assert rc is not None
    assert "registered as" in log.read_text()


def test_runner_with_a_bad_key_exits_with_an_error(srv: ServerProcess, tmp_path: Path) -> None:
    proc, log = start_runner(srv, "crl_nope_notakey", tmp_path / "bad", "--name", "bad")
    try:
        proc.wait(30)
    finally:
        stop_process(proc)
    assert proc.returncode == 1, log.read_text()
    text = log.read_text()
    assert "error:" in text and "refused" in text
    assert "Traceback" not in text


def test_remote_runner_stop_and_crash(tmp_path: Path) -> None:
    """SIGTERM: the runner exits cleanly and stops its job's processes.
    kill -9: the job's processes outlive it; started again under the same name
    (same workdir), it reaps them and the server releases the job at once."""
    m1, m2 = marker(), marker()
    workdir = tmp_path / "remote"
    with (
        # No infrastructure re-runs: a job lost with its runner fails, saying why.
        running_server(
            tmp_path / "data",
            env={"CORRAL_RUNNER__EMBEDDED": "false", "CORRAL_MAX_INFRA_RETRIES": "0"},
        ) as s,
        s.http() as http,
    ):
        key = create_key(s, "runner")
        proc, log = start_runner(s, key, workdir, "--name", "remote", "--slots", "1")
        try:
            wait_for(lambda: http.get("/runners").json(), timeout=20, what="the runner to register")

            # SIGTERM while a job runs.
            job_id = submit(http, f"sleep 60.{m1}")
            wait_job(http, job_id, "running")
            wait_for(
                partial(pids_exact, "sleep", f"60.{m1}"),
                timeout=10,
                what="the job's sleep to start",
            )
            assert stop_process(proc) == 0, log.read_text()
            assert pids_matching(m1) == [], "the stopped runner left its job running"

            # Started again under its name, the job it held is not left running: the
            # stopping runner reported it if it could, else the new registration
            # released it. Either way nobody "cancelled" it.
            # Unsandboxed, so that its job outlives the kill -9 below (a sandbox
            # dies with its runner: test_sandbox.py) and the restart must reap it.
            unsandboxed = ("--sandbox", "none")
            proc, log = start_runner(
                s, key, workdir, "--name", "remote", "--slots", "1", *unsandboxed
            )
            job = wait_job(http, job_id, timeout=20)
            assert job["state"] == "failed", job
            assert job["reason"] in ("runner_stopped", "runner_restarted"), job
            assert "cancel" not in job["error"], job

            # kill -9 while a job runs.
            job_id = submit(http, f"sleep 60.{m2}")
            wait_job(http, job_id, "running", timeout=20)
            orphans = wait_for(
                partial(pids_exact, "sleep", f"60.{m2}"),
                timeout=10,
                what="the job's sleep to start",
            )
            proc.kill()
            proc.wait()
            assert all(alive(p) for p in orphans)
            assert get_job(http, job_id)["state"] == "running"

            proc, log = start_runner(s, key, workdir, "--name", "remote", "--slots", "1")
            job = wait_job(http, job_id, timeout=20)
            assert job["state"] == "failed"
            assert job["reason"] == "runner_restarted" and job["failure"] == "infra"
            wait_for(
                lambda: not any(alive(p) for p in orphans),
                timeout=10,
                what="the restarted runner to reap the orphaned job",
            )
            runners = http.get("/runners").json()
            assert [r["name"] for r in runners] == ["remote"]  # older ones were replaced
            assert wait_job(http, submit(http, "echo still serving"))["state"] == "done"
        finally:
            stop_process(proc)
            kill_leftovers(m1)
            kill_leftovers(m2)


def test_a_runner_name_belongs_to_its_key(server: ServerProcess) -> None:
    """Another key cannot register under the embedded runner's name: 409, and
    the embedded runner's running job goes on; new jobs still run at once.
    An admin releases the name; only then may that key take it."""
    key = create_key(server, "runner")
    with server.http() as http, server.http(key) as intruder:
        (embedded,) = wait_for(lambda: http.get("/runners").json(), what="the embedded runner")
        name = embedded["name"]
        job_id = http.post("/jobs", json={"command": "sleep 2; echo kept"}).json()["job_id"]
        wait_job(http, job_id, "running")
        register = {"name": name, "providers": ["shell"], "slots": 1}
        refused = intruder.post("/runners/register", json=register)
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "runner_name_taken"
        assert f"corral runners forget {name}" in refused.json()["error"]["message"]
        job = wait_job(http, job_id)
        assert job["state"] == "done" and job["result"] == "kept", job
        assert job["attempt"] == 1 and job["runner_id"] == embedded["id"]
        assert job["infra_retries"] == 0 and job["reason"] is None
        started = time.monotonic()
        quick = http.post("/jobs", json={"command": "echo next"}).json()["job_id"]
        assert wait_job(http, quick, timeout=10)["state"] == "done"
        assert time.monotonic() - started < 5
        assert [r["id"] for r in http.get("/runners").json()] == [embedded["id"]]

        # Only an admin may release a name.
        assert intruder.post(f"/admin/runners/{name}/forget").status_code == 403
        listed = server.cli("runners", "ls", "--json")
        assert [r["name"] for r in json.loads(listed.stdout)] == [name], listed.stderr
        forgot = server.cli("runners", "forget", name)
        assert forgot.returncode == 0 and "released" in forgot.stdout, forgot.stderr
        again = server.cli("runners", "forget", name)
        assert again.returncode == 1 and "no runner name" in again.stderr
        taken = intruder.post("/runners/register", json=register)
        assert taken.status_code == 200, taken.text
