"""Crash recovery: `kill -9` of `corral serve` mid-job, then a restart on the
same data dir. The job must not stay running: it is re-run while attempts are
left, else failed with the reason, and the orphaned process tree is reaped."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from corral.testing import start_server

from ._helpers import (
    alive,
    cli_many,
    get_job,
    kill_leftovers,
    marker,
    output_lines,
    pids_exact,
    pids_matching,
    running_server,
    session_events,
    submit,
    wait_for,
    wait_job,
)

ENV = {"CORRAL_HEARTBEAT_INTERVAL": "1"}


def _crash_mid_job(
    data_dir: Path, scripts: dict[str, tuple[str, int | None]]
) -> tuple[dict[str, str], dict[str, list[int]]]:
    """Start a server, submit ``scripts`` (name -> (command, max_attempts)), wait
    until each one's `sleep` runs, then kill -9 the server. Returns the job ids and
    the pids of each job's processes (shell and sleep)."""
    srv = start_server(data_dir, env=ENV)
    try:
        with srv.http() as http:
            ids = {}
            for name, (command, attempts) in scripts.items():
                fields = {"max_attempts": attempts} if attempts else {}
                ids[name] = submit(http, command, **fields)
            pids: dict[str, list[int]] = {}
            for name, job_id in ids.items():
                wait_job(http, job_id, "running")
                mark = scripts[name][0].split("sleep ", 1)[1].split(";", 1)[0]
                sleeps = wait_for(
                    partial(pids_exact, "sleep", mark), timeout=10, what=f"the sleep of job {name}"
                )
                shells = pids_matching(f"sleep {mark}")
                pids[name] = sorted({*sleeps, *shells})
                assert len(pids[name]) >= 2, pids  # the job's shell and its sleep
    finally:
        srv.kill()  # kill -9: no cleanup of any kind
    assert srv.proc.returncode == -9
    # The crash left the job processes running: they live in their own sessions.
    for name, found in pids.items():
        assert all(alive(p) for p in found), (name, found)
    return ids, pids


def test_kill9_mid_job_then_restart_recovers_the_jobs(tmp_path: Path) -> None:
    """Two jobs are running when the server is killed: one with an attempt left
    (re-run after the restart) and one without (failed, with the reason)."""
    retry_mark, once_mark = f"30.{marker()}", f"30.{marker()}"
    retry_script = (
        'echo "start $CORRAL_ATTEMPT"; if [ "$CORRAL_ATTEMPT" = 1 ]; then '
        f'sleep {retry_mark}; fi; echo "finished attempt $CORRAL_ATTEMPT"'
    )
    once_script = f"sleep {once_mark}; echo never"
    data_dir = tmp_path / "data"
    try:
        ids, pids = _crash_mid_job(
            data_dir, {"retry": (retry_script, 2), "once": (once_script, None)}
        )
        with running_server(data_dir, env=ENV) as srv, srv.http() as http:
            # With an attempt left: run again (attempt 2) to completion.
            job = wait_job(http, ids["retry"], timeout=30)
            assert job["state"] == "done", job
            assert job["attempt"] == 2
            assert "finished attempt 2" in job["result"]
            events = session_events(http, job["session_id"])
            lost = [
                e["payload"]
                for e in events
                if e["type"] == "job.state"
                and e["payload"]["from"] == "running"
                and e["payload"]["to"] == "queued"
            ]
            assert len(lost) == 1, lost
            assert lost[0]["reason"] == "runner_restarted"
            assert lost[0]["attempt"] == 2
            assert output_lines(events) == ["start 1", "start 2", "finished attempt 2"]

            # Without: failed, saying why; not left running, not re-run.
            once = wait_job(http, ids["once"], timeout=30)
            assert once["state"] == "failed", once
            assert once["attempt"] == 1 and once["max_attempts"] == 1
            assert once["reason"] in ("runner_restarted", "runner_lost")
            assert once["reason"] == "runner_restarted"  # the embedded runner came back by name
            assert once["finished_at"] is not None
            assert "never" not in output_lines(session_events(http, once["session_id"]))

            # The restarted runner killed the orphaned process trees of the first server.
            wait_for(
                lambda: not any(alive(p) for ps in pids.values() for p in ps),
                timeout=10,
                what="the orphaned processes to be killed",
            )
            assert pids_exact("sleep", retry_mark) == pids_exact("sleep", once_mark) == []

            show_retry, show_once = cli_many(
                srv, ("jobs", "show", ids["retry"]), ("jobs", "show", ids["once"])
            )
            assert show_retry.returncode == 0, show_retry.stderr
            assert "done" in show_retry.stdout and "2 of 2" in show_retry.stdout
            assert show_once.returncode == 0, show_once.stderr
            assert "failed" in show_once.stdout and "runner_restarted" in show_once.stdout
    finally:
        kill_leftovers(retry_mark)
        kill_leftovers(once_mark)


def test_clean_stop_and_restart(tmp_path: Path) -> None:
    """SIGTERM: finished jobs persist, a running job's processes are stopped with
    the server, and after the restart that job is not left running."""
    m = marker()
    data_dir = tmp_path / "data"
    try:
        with running_server(data_dir, env=ENV) as srv, srv.http() as http:
            done_id = submit(http, "echo persisted")
            wait_job(http, done_id)
            running_id = submit(http, f"sleep 60.{m}")
            wait_job(http, running_id, "running")
            wait_for(partial(pids_exact, "sleep", f"60.{m}"), timeout=10, what="the sleep to start")
            admin_key = srv.admin_key
        assert srv.proc.returncode is not None
        assert pids_matching(m) == [], "a cleanly stopped server left its job running"

        with running_server(data_dir, env=ENV) as srv, srv.http() as http:
            assert srv.admin_key == admin_key  # the same key file, still accepted
            job = get_job(http, done_id)
            assert job["state"] == "done" and "persisted" in job["result"]
            lost = wait_job(http, running_id, timeout=20)
            assert lost["state"] == "failed", lost
            # Either the stopping runner reported it, or the restarted one released it;
            # never "cancelled": nobody cancelled it.
            assert lost["reason"] in ("runner_stopped", "runner_restarted"), lost
            assert "cancel" not in lost["error"], lost
            assert wait_job(http, submit(http, "echo again"))["state"] == "done"
    finally:
        kill_leftovers(m)
