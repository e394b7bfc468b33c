"""A job whose process finished is not run again: kill -9 of a `corral runner`
(or of the `corral serve` embedding one) after the job's process ended and
its outcome was journalled, but before the server heard of it; after the
restart the job is done with the first run's result, and ran once. Without
the journal (a wiped work dir) the job runs again: at-least-once still holds.

The kill point is exact: with CORRAL_TEST_HOLD_REPORT set, a runner that has
journalled an outcome writes that file and holds the report (runner/journal.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import httpx

from corral.testing import ServerProcess

from ._helpers import (
    create_key,
    kill_leftovers,
    marker,
    running_server,
    session_events,
    start_runner,
    stop_process,
    submit,
    wait_for,
    wait_job,
)

ENV = {"CORRAL_HEARTBEAT_INTERVAL": "1"}
# The jobs write beside the test (a sandbox would give them a private /tmp).
UNBOXED = {"CORRAL_RUNNER__SANDBOX": "none"}
HOLD = "CORRAL_TEST_HOLD_REPORT"


def _counting_job(http: httpx.Client, runs: Path) -> str:
    """A job that appends a line to ``runs`` each time its process runs."""
    return submit(http, f"echo run >> {runs}; echo first; echo finished")


def _held(hold: Path, runs: Path) -> str:
    """Wait until the runner has journalled the job's outcome and holds its
    report; the job's process has exited by then. Returns the job id."""
    job_id = wait_for(
        lambda: hold.exists() and hold.read_text(), timeout=30, what="the outcome to be journalled"
    )
    assert runs.read_text() == "run\n"
    return str(job_id)


def _journalled(work: Path) -> int:
    with contextlib.closing(sqlite3.connect(work / "runner" / "journal.sqlite")) as conn:
        return int(conn.execute("SELECT count(*) FROM outcomes").fetchone()[0])


def _kill9(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _assert_ran_once(srv: ServerProcess, http: httpx.Client, job_id: str, runs: Path) -> None:
    job = wait_job(http, job_id, timeout=30)
    assert job["state"] == "done", job
    assert job["result"] == "first\nfinished" and job["attempt"] == 1
    assert job["infra_retries"] == 0, job
    assert job["recovered"]["reason"] == "journal", job
    assert runs.read_text() == "run\n", "the job's process ran again"
    events = session_events(http, job["session_id"])
    assert [e["payload"]["line"] for e in events if e["type"] == "output"] == [
        "first",
        "finished",
    ]
    [recovered] = [e for e in events if e["type"] == "job.recovered"]
    assert recovered["payload"]["from_runner"] == job["recovered"]["from_runner"]
    assert http.get("/watchdog/status").json()["recovered"] >= 1
    show = srv.cli("jobs", "show", job_id)
    assert show.returncode == 0, show.stderr
    assert "from the journal of runner" in show.stdout, show.stdout


def test_a_killed_runner_brings_the_outcome_back(tmp_path: Path, db_url: str) -> None:
    """Two jobs on the runner when it is killed: one whose process ended (its
    outcome journalled) is done once; one whose process still ran runs again."""
    runs, hold = tmp_path / "runs", tmp_path / "held"
    long_runs, mark = tmp_path / "long-runs", f"600.{marker()}"
    work = tmp_path / "runner"
    with (
        running_server(
            tmp_path / "data", database_url=db_url, env=ENV, args=("--no-runner",)
        ) as srv,
        srv.http() as http,
    ):
        key = create_key(srv, "runner")
        args = ("--name", "r1")
        proc, log = start_runner(srv, key, work, *args, env={**UNBOXED, HOLD: str(hold)})
        try:
            long_id = submit(http, f"echo run >> {long_runs}; sleep {mark}")
            wait_for(long_runs.exists, timeout=30, what="the long job to start")
            job_id = _counting_job(http, runs)
            assert _held(hold, runs) == job_id
            _kill9(proc)
            # Not ended on the server (its "running" may not have been sent either).
            assert http.get(f"/jobs/{job_id}").json()["state"] in ("assigned", "running")
            proc, log = start_runner(srv, key, work, *args, env=UNBOXED)
            _assert_ran_once(srv, http, job_id, runs)
            # The job whose process had not ended runs again (at-least-once).
            wait_for(lambda: long_runs.read_text() == "run\nrun\n", timeout=30, what="the re-run")
            assert http.get(f"/jobs/{long_id}").json()["infra_retries"] == 1
            http.post(f"/jobs/{long_id}/cancel").raise_for_status()
            assert "journalled outcome of job" in log.read_text()
            # The entry is gone once the server answered, and so is the next job's.
            again = submit(http, "echo next")
            assert wait_job(http, again, timeout=30)["state"] == "done"
            wait_for(lambda: _journalled(work) == 0, timeout=10, what="the journal to be emptied")
        finally:
            stop_process(proc)
            kill_leftovers(mark)


def test_a_killed_server_brings_its_embedded_runners_outcome_back(
    tmp_path: Path, db_url: str
) -> None:
    runs, hold = tmp_path / "runs", tmp_path / "held"
    data = tmp_path / "data"
    env = {**ENV, **UNBOXED}
    with running_server(data, database_url=db_url, env={**env, HOLD: str(hold)}) as srv:
        with srv.http() as http:
            job_id = _counting_job(http, runs)
        assert _held(hold, runs) == job_id
        srv.kill()  # kill -9 of `corral serve`, its embedded runner with it
    with running_server(data, database_url=db_url, env=env) as srv, srv.http() as http:
        _assert_ran_once(srv, http, job_id, runs)


def test_without_its_journal_a_killed_runner_runs_the_job_again(tmp_path: Path) -> None:
    runs, hold = tmp_path / "runs", tmp_path / "held"
    work = tmp_path / "runner"
    with (
        running_server(tmp_path / "data", env=ENV, args=("--no-runner",)) as srv,
        srv.http() as http,
    ):
        key = create_key(srv, "runner")
        proc, _ = start_runner(srv, key, work, "--name", "r1", env={**UNBOXED, HOLD: str(hold)})
        try:
            job_id = _counting_job(http, runs)
            _held(hold, runs)
            _kill9(proc)
            for f in (work / "runner").glob("journal.sqlite*"):
                f.unlink()  # the work dir is lost with the host
            proc, _ = start_runner(srv, key, work, "--name", "r1", env=UNBOXED)
            job = wait_job(http, job_id, timeout=30)
            assert job["state"] == "done" and job["recovered"] is None, job
            assert job["infra_retries"] == 1
            assert runs.read_text() == "run\nrun\n", "at-least-once: it ran again"
        finally:
            stop_process(proc)


def test_registering_again_presents_the_outcomes_still_being_reported(tmp_path: Path) -> None:
    """A runner that registers again while it still reports a finished job
    (the server took it for stopped: its lease is refused with 403) presents
    that job's journalled outcome: the job is done once, not lost and re-run."""
    runs, hold = tmp_path / "runs", tmp_path / "held"
    work = tmp_path / "runner"
    with (
        running_server(tmp_path / "data", env=ENV, args=("--no-runner",)) as srv,
        srv.http() as http,
    ):
        key = create_key(srv, "runner")
        proc, log = start_runner(srv, key, work, "--name", "r2", env={**UNBOXED, HOLD: str(hold)})
        try:
            job_id = _counting_job(http, runs)
            assert _held(hold, runs) == job_id  # journalled; its report held in the runner
            # What a stop or a replica's verdict leaves: the server no longer
            # takes this registration as active (its next lease gets 403).
            with contextlib.closing(sqlite3.connect(srv.data_dir / "corral.db")) as db:
                db.execute("UPDATE runners SET status = 'stopped' WHERE name = 'r2'")
                db.commit()
            job = wait_job(http, job_id, timeout=30)
            assert job["state"] == "done" and job["result"] == "first\nfinished", job
            assert job["recovered"]["reason"] == "journal", job
            assert job["attempt"] == 1 and job["infra_retries"] == 0, job
            assert "registering again" in log.read_text()
            assert runs.read_text() == "run\n", "the job's process ran again"
        finally:
            stop_process(proc)
