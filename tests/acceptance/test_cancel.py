"""Stopping work: cancel kills the whole process tree; a timeout fails the job."""

from __future__ import annotations

import contextlib
import time
from functools import partial
from pathlib import Path

import httpx
import psutil

from corral.testing import ServerProcess

from ._helpers import (
    get_job,
    kill_leftovers,
    marker,
    pids_exact,
    pids_matching,
    running_server,
    session_events,
    submit,
    wait_for,
    wait_job,
)


def test_cancel_kills_children_and_grandchildren(http: httpx.Client) -> None:
    m = marker()
    gc, child, escaped = f"301.{m}", f"302.{m}", f"303.{m}"
    script = (
        f"""sh -c 'sh -c "sleep {gc}; echo gc" & sleep {child}; echo c' &\n"""
        # A child in a session of its own: not reachable through the process group.
        f"""setsid sh -c 'sleep {escaped}; echo escaped' &\n"""
        "echo tree-started\n"
        "wait\n"
    )
    try:
        job_id = submit(http, script)
        wait_job(http, job_id, "running")
        for arg in (gc, child, escaped):
            wait_for(partial(pids_exact, "sleep", arg), timeout=10, what=f"`sleep {arg}` to start")
        before = pids_matching(m)
        assert len(before) >= 7, before  # the job's shell, 3 more shells, 3 sleeps

        resp = http.post(f"/jobs/{job_id}/cancel")
        assert resp.status_code == 200, resp.text
        assert resp.json()["state"] == "cancelled"
        started = time.monotonic()
        wait_for(
            lambda: not pids_matching(m),
            timeout=10,
            what="every process of the cancelled job to exit",
        )
        assert time.monotonic() - started < 6  # SIGTERM suffices; well within the grace

        job = get_job(http, job_id)
        assert job["state"] == "cancelled"
        assert job["reason"] == "cancelled"
        assert job["finished_at"] is not None
        events = session_events(http, job["session_id"])
        states = [e["payload"]["to"] for e in events if e["type"] == "job.state"]
        assert states == ["queued", "assigned", "running", "cancelled"]
        assert [e["payload"]["line"] for e in events if e["type"] == "output"] in (
            ["tree-started"],
            [],
        )
    finally:
        kill_leftovers(m)


def test_cancelled_job_frees_the_slot_and_later_jobs_run(http: httpx.Client) -> None:
    m = marker()
    try:
        job_id = submit(http, f"sleep 60.{m}")
        wait_job(http, job_id, "running")
        http.post(f"/jobs/{job_id}/cancel")
        wait_for(lambda: not pids_matching(m), timeout=10, what="the sleep to be killed")
        after = wait_job(http, submit(http, "echo after"))
        assert after["state"] == "done" and after["result"] == "after"
    finally:
        kill_leftovers(m)


def test_timeout_fails_the_job_and_kills_it(http: httpx.Client) -> None:
    m = marker()
    try:
        started = time.monotonic()
        job_id = submit(http, f"echo begin; sleep 30.{m}; echo unreachable", timeout=1)
        job = wait_job(http, job_id, timeout=20)
        assert time.monotonic() - started < 10
        assert job["state"] == "failed", job
        assert job["reason"] == "timeout"
        assert "timed out after 1s" in job["error"]
        assert "begin" in job["result"] and "unreachable" not in job["result"]
        wait_for(lambda: not pids_matching(m), timeout=10, what="the sleep to be killed")
    finally:
        kill_leftovers(m)


def test_timeout_with_attempts_left_retries(srv: ServerProcess, http: httpx.Client) -> None:
    m = marker()
    script = f'if [ "$CORRAL_ATTEMPT" = 1 ]; then sleep 30.{m}; fi; echo "ok $CORRAL_ATTEMPT"'
    try:
        job_id = submit(http, script, timeout=1, max_attempts=2)
        job = wait_job(http, job_id, timeout=30)
        assert job["state"] == "done", job
        assert job["attempt"] == 2 and job["result"] == "ok 2"
        events = session_events(http, job["session_id"])
        requeued = [
            e["payload"]
            for e in events
            if e["type"] == "job.state"
            and e["payload"]["to"] == "queued"
            and e["payload"]["from"] is not None
        ]
        assert [p["reason"] for p in requeued] == ["timeout"]
        assert pids_exact("sleep", f"30.{m}") == []
    finally:
        kill_leftovers(m)


def test_cancel_a_queued_job_with_the_cli(srv: ServerProcess, http: httpx.Client) -> None:
    # A second turn waits while the session's first turn runs.
    m = marker()
    first = submit(http, f"sleep 30.{m}")
    session = get_job(http, first)["session_id"]
    resp = http.post(f"/sessions/{session}/turns", json={"command": "echo never"})
    job_id = resp.json()["job_id"]
    assert get_job(http, job_id)["state"] == "queued"
    res = srv.cli("jobs", "cancel", job_id)
    assert res.returncode == 0, res.stderr
    assert "Cancelled" in res.stdout
    job = get_job(http, job_id)
    assert job["state"] == "cancelled" and job["started_at"] is None
    # Cancelling again is a state conflict, not a crash.
    resp = http.post(f"/jobs/{job_id}/cancel")
    assert resp.status_code == 409
    assert resp.json()["error"]["code"] == "invalid_transition"
    assert http.post(f"/jobs/{first}/cancel").status_code == 200
    kill_leftovers(m)


def test_what_a_finished_job_left_running_is_killed_and_reaped(tmp_path: Path) -> None:
    """A daemon (double fork + setsid, its output closed) outlives the job's
    shell: the runner, a child subreaper, finds it among its own children by
    the job's marker, kills it and waits for it (no zombie is left). Without
    a sandbox: bwrap's PID namespace would take it down by itself."""
    m = marker()
    env = {"CORRAL_RUNNER__SANDBOX": "none"}
    stack = contextlib.ExitStack()
    try:
        srv = stack.enter_context(running_server(tmp_path / "data", env=env))
        http = stack.enter_context(srv.http())
        job_id = submit(http, f"(setsid sleep 304.{m} >/dev/null 2>&1 &)\nsleep 1\necho left\n")
        wait_for(partial(pids_exact, "sleep", f"304.{m}"), timeout=10, what="the daemon")
        (daemon,) = pids_exact("sleep", f"304.{m}")
        wait_job(http, job_id, "done")

        def gone() -> bool:
            try:
                psutil.Process(daemon)
            except psutil.NoSuchProcess:
                return True
            return False  # alive, or a zombie nobody waited for

        wait_for(gone, timeout=10, what="the daemon to be killed and reaped")
    finally:
        stack.close()
        kill_leftovers(m)


def test_orphans_of_a_cancelled_job_are_reaped_while_no_job_ends(tmp_path: Path) -> None:
    """A cancelled job's processes die re-parented to the runner (a child
    subreaper): they are waited for within seconds, no later job needed."""
    m = marker()
    env = {"CORRAL_RUNNER__SANDBOX": "none"}
    stack = contextlib.ExitStack()
    try:
        srv = stack.enter_context(running_server(tmp_path / "data", env=env))
        http = stack.enter_context(srv.http())
        script = f"(setsid sleep 306.{m} >/dev/null 2>&1 &)\n(sleep 307.{m} &)\nsleep 308.{m}\n"
        job_id = submit(http, script)
        for arg in (f"306.{m}", f"307.{m}", f"308.{m}"):
            wait_for(partial(pids_exact, "sleep", arg), timeout=10, what=f"`sleep {arg}`")
        server = psutil.Process(srv.proc.pid)
        orphans = {*pids_exact("sleep", f"306.{m}"), *pids_exact("sleep", f"307.{m}")}
        # Both sleeps whose parent shell exited are the server's children now.
        assert orphans <= {p.pid for p in server.children()} and len(orphans) == 2, orphans
        assert http.post(f"/jobs/{job_id}/cancel").status_code == 200
        wait_for(lambda: not pids_matching(m), timeout=10, what="the job's processes to die")

        def waited() -> bool:
            return not any(psutil.pid_exists(pid) for pid in orphans)

        wait_for(waited, timeout=10, what="the orphans to be waited for (no zombies)")
    finally:
        stack.close()
        kill_leftovers(m)
