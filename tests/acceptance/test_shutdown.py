"""How `corral serve` stops: on SIGTERM or SIGINT the embedded runner stops
while HTTP still answers (its jobs are reported), the long-polls of remote
runners are answered instead of cut, then the store closes and server.json
goes; a second signal ends the process at once. `uvicorn --factory
corral.server:factory` is the same process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.testing import start_server

from ._helpers import (
    clean_env,
    create_key,
    get_job,
    start_runner,
    stop_process,
    submit,
    ts,
    wait_for,
    wait_job,
)


def recorded(data: Path) -> dict[str, Any] | None:
    """The server.json of ``data`` (where its server listens, and its pid)."""
    with contextlib.suppress(OSError, ValueError):
        body: dict[str, Any] = json.loads((data / "server.json").read_text())
        return body
    return None


CUT = ("Traceback", "CancelledError", "timeout graceful shutdown exceeded")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_signal_stops_the_runner_first_then_cleans_up(tmp_path: Path, sig: int) -> None:
    srv = start_server(tmp_path / "data", args=("--no-queue",))
    try:
        with srv.http() as http:
            job_id = submit(http, "sleep 60")
            wait_job(http, job_id, "running")
        assert (srv.data_dir / "server.json").exists()
        srv.proc.send_signal(sig)
        assert srv.proc.wait(30) == 0, srv.output()
    finally:
        srv.stop()
    out = srv.output()
    assert "corral stopped" in out, out
    assert not any(s in out for s in CUT), out
    assert not (srv.data_dir / "server.json").exists()
    # SQLite removes the write-ahead log when the last connection closes: the
    # store was closed, not abandoned.
    assert not (srv.data_dir / "corral.db-wal").exists()
    # The runner stopped while HTTP answered: the job's stop was recorded.
    again = start_server(tmp_path / "data", args=("--no-runner", "--no-queue"))
    try:
        with again.http() as http:
            job = get_job(http, job_id)
    finally:
        again.stop()
    assert job["state"] == "queued", job
    assert job["error"] == "the runner stopped while the job ran", job


def test_a_second_signal_exits_at_once(tmp_path: Path) -> None:
    # The job ignores SIGTERM: stopping it waits the whole kill grace.
    srv = start_server(
        tmp_path / "data", args=("--no-queue",), env={"CORRAL_RUNNER__KILL_GRACE": "60"}
    )
    try:
        with srv.http() as http:
            job_id = submit(http, "trap '' TERM; echo armed; sleep 120")
            wait_for(
                lambda: any(
                    e["type"] == "output"
                    for e in http.get(f"/jobs/{job_id}/events").json()["events"]
                ),
                what="the job to ignore SIGTERM",
            )
        srv.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "stopping" in srv.output(), what="the first signal to be taken")
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(30) == -signal.SIGTERM
        assert time.monotonic() - started < 30  # not the 60 s of the kill grace
    finally:
        srv.kill()
    assert "SIGTERM again: exiting at once" in srv.output()


def test_a_graceful_stop_answers_waiting_runners(tmp_path: Path, held_port: int) -> None:
    """Issue #20: a remote runner long-polling a replica that stops gets an
    answer (no HTTP 500, no traceback) and reconnects to the next one."""
    data = tmp_path / "data"
    # Held: the next replica gets the address the runner knows.
    srv = start_server(data, port=held_port, args=("--no-runner", "--no-queue"))
    key = create_key(srv, "runner")
    proc, log = start_runner(srv, key, tmp_path / "remote", "--name", "remote")
    try:
        with srv.http() as http:
            # Each pass of a waiting lease stamps last_seen_at (about once a second).
            wait_for(
                lambda: any(
                    r["name"] == "remote" and ts(r["last_seen_at"]) > ts(r["registered_at"])
                    for r in http.get("/runners").json()
                ),
                what="the runner to wait on a lease",
            )
        started = time.monotonic()
        assert srv.stop() == 0
        # The polls were answered at once, not cut after uvicorn's 3 s grace.
        assert time.monotonic() - started < 3
        out = srv.output()
        assert not any(s in out for s in CUT), out
        assert "corral stopped" in out
        # Another replica at the same address: the runner finds it by itself.
        again = start_server(data, port=srv.port, args=("--no-runner", "--no-queue"))
        try:
            with again.http() as http:
                job_id = submit(http, "echo back")
                assert wait_job(http, job_id, timeout=30)["result"] == "back"
        finally:
            again.stop()
    finally:
        stop_process(proc)
    runner_log = log.read_text()
    assert "HTTP 500" not in runner_log and "(500)" not in runner_log, runner_log
    assert "Traceback" not in runner_log, runner_log
    assert "retrying" in runner_log, runner_log


def test_uvicorn_factory_is_the_same_process(tmp_path: Path) -> None:
    """`uvicorn --factory corral.server:factory`: the embedded runner and the
    queue folder run, and a stop reports the runner's jobs and cleans up."""
    data, queue = tmp_path / "data", tmp_path / "queue"
    env = clean_env(CORRAL_DATA_DIR=str(data), CORRAL_QUEUE_DIR=str(queue))
    log = tmp_path / "uvicorn.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "corral.server:factory",
                "--host",
                "127.0.0.1",
                "--port",
                "0",  # any: the server records where it listens (server.json)
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=tmp_path,
        )
    try:

        def healthy() -> str | None:
            assert proc.poll() is None, log.read_text()
            record = recorded(data)
            if record is None or record["pid"] != proc.pid:
                return None
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(record["url"] + "/health", timeout=1).status_code == 200:
                    return str(record["url"])
            return None

        url = wait_for(healthy, timeout=30, what="uvicorn to answer")
        key = (data / "admin.key").read_text().strip()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
            done = wait_job(http, submit(http, "echo embedded"), timeout=30)
            assert done["result"] == "embedded"  # the embedded runner runs
            (queue / "task.md").write_text("---\ncommand: echo from-folder\n---\n")
            wait_for(lambda: list((queue / "done").glob("task*.md")), what="the queue file")
            running = submit(http, "sleep 60")
            wait_job(http, running, "running")
            assert (data / "server.json").exists()
            proc.send_signal(signal.SIGTERM)
            # uvicorn ends by re-raising the signal once everything is stopped.
            assert proc.wait(30) == -signal.SIGTERM, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_text()
    assert not any(s in text for s in CUT), text
    assert not (data / "server.json").exists()
    assert not (data / "corral.db-wal").exists()
    again = start_server(data, args=("--no-runner", "--no-queue"))
    try:
        with again.http() as http:
            job = get_job(http, running)
    finally:
        again.stop()
    assert job["error"] == "the runner stopped while the job ran", job
