"""Crash recovery: `kill -9` of `corral serve` mid-job, then a restart on the
same data dir. The job must not stay running: a run lost to infrastructure is
re-run as the same attempt (within the infrastructure retry budget), else
failed with the reason, and the orphaned process tree is reaped."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

from corral.testing import start_server

from ._helpers import (
    alive,
    cli_many,
    create_key,
    get_job,
    kill_leftovers,
    marker,
    output_lines,
    pids_exact,
    pids_matching,
    running_server,
    session_events,
    start_runner,
    stop_process,
    submit,
    wait_for,
    wait_job,
)

ENV = {"CORRAL_HEARTBEAT_INTERVAL": "1"}
# Unsandboxed: a crash leaves the jobs running and the restart reaps them (a
# sandbox dies with its runner: test_sandbox.py); the jobs' flags are in /tmp.
CRASH_ENV = {**ENV, "CORRAL_RUNNER__SANDBOX": "none"}


def _crash_mid_job(
    data_dir: Path, scripts: dict[str, tuple[str, int | None]]
) -> tuple[dict[str, str], dict[str, list[int]]]:
    """Start a server, submit ``scripts`` (name -> (command, max_attempts)), wait
    until each one's `sleep` runs, then kill -9 the server. Returns the job ids and
    the pids of each job's processes (shell and sleep)."""
    srv = start_server(data_dir, env=CRASH_ENV)
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
    """Two jobs are running when the server is killed. The crash is not the
    jobs' fault: after the restart both run again as the same attempt, even the
    one allowed a single attempt."""
    retry_mark, once_mark = f"30.{marker()}", f"30.{marker()}"
    flags = tmp_path / "flags"
    flags.mkdir()

    def script(name: str, mark: str) -> str:
        flag = flags / name
        return (
            f'echo "start $CORRAL_ATTEMPT"; if [ ! -e {flag} ]; then touch {flag}; '
            f'sleep {mark}; fi; echo "finished attempt $CORRAL_ATTEMPT"'
        )

    data_dir = tmp_path / "data"
    try:
        ids, pids = _crash_mid_job(
            data_dir,
            {"retry": (script("retry", retry_mark), 2), "once": (script("once", once_mark), None)},
        )
        with running_server(data_dir, env=CRASH_ENV) as srv, srv.http() as http:
            job = wait_job(http, ids["retry"], timeout=30)
            assert job["state"] == "done", job
            assert job["attempt"] == 1 and job["infra_retries"] == 1
            assert "finished attempt 1" in job["result"]
            events = session_events(http, job["session_id"])
            lost = [
                e["payload"]
                for e in events
                if e["type"] == "job.state"
                and e["payload"]["from"] == "running"
                and e["payload"]["to"] == "queued"
            ]
            assert len(lost) == 1, lost
            # The embedded runner came back under its name: released at once.
            assert lost[0]["reason"] == "runner_restarted"
            assert lost[0]["attempt"] == 1
            assert output_lines(events) == ["start 1", "start 1", "finished attempt 1"]

            # A single allowed attempt is not used up by the crash either.
            once = wait_job(http, ids["once"], timeout=30)
            assert once["state"] == "done", once
            assert once["attempt"] == 1 and once["max_attempts"] == 1
            assert once["infra_retries"] == 1

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
            assert "done" in show_retry.stdout and "1 of 2" in show_retry.stdout
            assert "1 after infrastructure failures" in show_retry.stdout
            assert show_once.returncode == 0, show_once.stderr
            assert "done" in show_once.stdout and "1 of 1" in show_once.stdout
    finally:
        kill_leftovers(retry_mark)
        kill_leftovers(once_mark)


def test_clean_stop_and_restart(tmp_path: Path) -> None:
    """SIGTERM: finished jobs persist, a running job's processes are stopped with
    the server, and after the restart that job is not left running (with no
    infrastructure retries allowed, it fails saying why)."""
    m = marker()
    data_dir = tmp_path / "data"
    env = {**ENV, "CORRAL_MAX_INFRA_RETRIES": "0"}
    try:
        with running_server(data_dir, env=env) as srv, srv.http() as http:
            done_id = submit(http, "echo persisted")
            wait_job(http, done_id)
            running_id = submit(http, f"sleep 60.{m}")
            wait_job(http, running_id, "running")
            wait_for(partial(pids_exact, "sleep", f"60.{m}"), timeout=10, what="the sleep to start")
            admin_key = srv.admin_key
        assert srv.proc.returncode is not None
        assert pids_matching(m) == [], "a cleanly stopped server left its job running"

        with running_server(data_dir, env=env) as srv, srv.http() as http:
            assert srv.admin_key == admin_key  # the same key file, still accepted
            job = get_job(http, done_id)
            assert job["state"] == "done" and "persisted" in job["result"]
            lost = wait_job(http, running_id, timeout=20)
            assert lost["state"] == "failed", lost
            # Either the stopping runner reported it, or the restarted one released it;
            # never "cancelled": nobody cancelled it.
            assert lost["reason"] in ("runner_stopped", "runner_restarted"), lost
            assert lost["failure"] == "infra" and "cancel" not in lost["error"], lost
            assert wait_job(http, submit(http, "echo again"))["state"] == "done"
    finally:
        kill_leftovers(m)


def test_a_server_restart_leaves_a_live_runner_its_jobs(tmp_path: Path, held_port: int) -> None:
    """`corral serve` killed and started again after its leases ran out: the
    separate runner, alive all along, keeps its job (the restarted watchdog
    gives it one lease_ttl to heartbeat) and the job finishes once."""
    data, work, runs = tmp_path / "data", tmp_path / "runner", tmp_path / "runs"
    # Short leases, a watchdog that sweeps at once, heartbeats slower than it
    # (the server tells its runners the interval).
    env = {
        "CORRAL_LEASE_TTL": "3",
        "CORRAL_WATCHDOG_INTERVAL": "0.1",
        "CORRAL_HEARTBEAT_INTERVAL": "1",
    }
    # Held: the restarted server gets the address its runner knows.
    port, proc = held_port, None
    srv = start_server(data, port=port, env=env, args=("--no-runner",))
    try:
        key = create_key(srv, "runner")
        runner_env = {"CORRAL_RUNNER__SANDBOX": "none"}
        proc, _ = start_runner(srv, key, work, "--name", "r1", env=runner_env)
        with srv.http() as http:
            job_id = submit(http, f"echo run >> {runs}; sleep 8; echo finished")
            wait_job(http, job_id, "running")
        srv.kill()
        time.sleep(4)  # longer than lease_ttl: every lease has run out
        srv = start_server(data, port=port, env=env, args=("--no-runner",))
        with srv.http() as http:
            job = wait_job(http, job_id, timeout=30)
            assert job["state"] == "done", job
            assert job["result"] == "finished" and job["infra_retries"] == 0, job
            assert runs.read_text() == "run\n", "the job ran again"
            assert http.get("/watchdog/status").json()["expired"] == 0
    finally:
        if proc is not None:
            stop_process(proc)
        srv.stop()
