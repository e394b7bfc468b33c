"""The CLI as a newcomer meets it: `jobs ls` readable at 80 columns and when
piped, user data printed as it is (never read as markup), the failure class
shown, ids taken by a unique prefix, and `submit --wait` saying why a queued
job waits (plain lines when piped, a spinner line on a terminal)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.testing import ServerProcess

from ._helpers import cli_many, wait_for, wait_job


def _submit(http: httpx.Client, **body: Any) -> dict[str, str]:
    resp = http.post("/jobs", json=body)
    assert resp.status_code == 202, resp.text
    accepted: dict[str, str] = resp.json()
    return accepted


def test_jobs_ls_keeps_its_key_columns_at_80_columns_piped(
    srv: ServerProcess, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _submit(http, command="true", title="x" * 200)
    session = first["session_id"]
    second = http.post(
        f"/sessions/{session}/turns", json={"command": "exit 4", "max_attempts": 1}
    ).json()
    wait_job(http, first["job_id"])
    wait_job(http, second["job_id"])

    monkeypatch.setenv("COLUMNS", "80")
    res = srv.cli("jobs", "ls", "--session", session)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "\x1b" not in res.stdout  # piped: plain text
    assert all(len(line) <= 80 for line in lines), lines
    assert lines[0].split() == [
        "ID",
        "STATE",
        "PROVIDER",
        "ATTEMPT",
        "CREATED",
        "TITLE",
        "/",
        "PROMPT",
    ]
    rows = {line.split()[0]: line for line in lines[1:]}
    failed = rows[second["job_id"][:12]].split()
    assert failed[1:4] == ["failed", "shell", "1/1"], failed
    assert failed[-1] == "4"  # "exit 4": the prompt column, short enough to stay whole
    done = rows[first["job_id"][:12]].split()
    assert done[1:4] == ["done", "shell", "1/1"], done
    assert done[-1].startswith("xxxx") and done[-1].endswith("…")  # the title is cut


def test_jobs_show_prints_user_data_as_is_and_the_failure_class(
    srv: ServerProcess, http: httpx.Client
) -> None:
    job = _submit(
        http,
        command="echo '[red]not markup[/red]'; exit 3",
        title="[bold]a title[/bold] [agent]",
        max_attempts=1,
    )["job_id"]
    wait_job(http, job)

    show, ls = cli_many(srv, ("jobs", "show", job), ("jobs", "ls", "--limit", "100"))
    assert show.returncode == 0, show.stderr
    assert "[bold]a title[/bold] [agent]" in show.stdout
    assert re.search(r"^\s+failure\s+agent: ", show.stdout, re.M), show.stdout
    assert re.search(r"^\s+error\s+exit code 3", show.stdout, re.M), show.stdout
    assert "[red]not markup[/red]" in show.stdout  # the result
    assert "[bold]a title" in ls.stdout


def test_every_command_takes_a_unique_id_prefix(srv: ServerProcess, http: httpx.Client) -> None:
    accepted = _submit(http, command="echo by prefix")
    job, session = accepted["job_id"], accepted["session_id"]
    wait_job(http, job)
    show, logs, follow, waited, session_show, listed = cli_many(
        srv,
        ("jobs", "show", job[:8], "--json"),
        ("jobs", "logs", job[:8]),
        ("jobs", "logs", "-f", job[:8]),
        ("jobs", "wait", job[:8]),
        ("sessions", "show", session[:8]),
        ("jobs", "ls", "--session", session[:8], "--json"),
    )
    assert show.returncode == 0, show.stderr
    assert '"id": "' + job + '"' in show.stdout
    assert logs.returncode == 0 and logs.stdout.splitlines() == ["by prefix"], logs.stderr
    assert follow.returncode == 0 and follow.stdout.splitlines() == ["by prefix"], follow.stderr
    assert waited.returncode == 0 and job in waited.stdout, waited.stderr
    assert session_show.returncode == 0 and session in session_show.stdout, session_show.stderr
    assert listed.returncode == 0 and job in listed.stdout, listed.stderr


def _paused(http: httpx.Client) -> None:
    assert http.post("/admin/pause").json()["paused"] is True


def _submit_wait(srv: ServerProcess, text: str, **io: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "corral", "submit", "--provider", "shell", text, "--wait"],
        env={
            **os.environ,
            "CORRAL_URL": srv.url,
            "CORRAL_TOKEN": srv.admin_key,
            "TERM": "xterm",
            "COLUMNS": "100",
        },
        **io,
    )


def test_submit_wait_says_why_a_queued_job_waits_when_piped(
    srv: ServerProcess, http: httpx.Client, tmp_path: Path
) -> None:
    _paused(http)
    errors = tmp_path / "stderr"
    with (
        errors.open("w") as stderr,
        _submit_wait(srv, "echo waited", stdout=subprocess.PIPE, stderr=stderr) as proc,
    ):
        try:
            wait_for(lambda: "kill switch" in errors.read_text(), what="the waiting reason")
        finally:
            http.post("/admin/resume")  # the job runs: the command ends
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, errors.read_text()
    assert out.decode().splitlines() == ["waited"]
    lines = errors.read_text().splitlines()
    waiting = [line for line in lines if line.startswith("queued ")]
    assert len(waiting) == 1, lines  # one line per reason, not a line per poll
    assert re.fullmatch(
        r"queued \d+(\.\d)?s: paused: the kill switch is on \(corral resume\)", waiting[0]
    )
    assert "\x1b" not in errors.read_text()


def test_submit_wait_shows_a_live_status_on_a_terminal(
    srv: ServerProcess, http: httpx.Client
) -> None:
    _paused(http)
    main, child = pty.openpty()
    seen = b""

    def read_until(text: bytes, timeout: float = 20) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while text not in seen:
            assert time.monotonic() < deadline, f"no {text!r} in {seen!r}"
            ready, _, _ = select.select([main], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(main, 4096)
                except OSError:  # the other end closed
                    break

    try:
        with _submit_wait(srv, "echo on a tty", stdin=child, stdout=child, stderr=child) as proc:
            os.close(child)
            try:
                read_until(b"the kill switch is on")
                # The line is redrawn in place as time goes on (a spinner, the elapsed time).
                first = seen.count(b"queued ")
                read_until(b"queued 1.", timeout=10)
                assert seen.count(b"queued ") > first
                assert b"\r" in seen or b"\x1b[" in seen
            finally:
                http.post("/admin/resume")
            read_until(b"done  job")
            assert proc.wait(30) == 0
        assert b"on a tty" in seen
    finally:
        os.close(main)


def test_stats_prints_jobs_per_bucket_and_percentiles(
    srv: ServerProcess, http: httpx.Client
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    ids = [_submit(http, command=c)["job_id"] for c in ("true", "true", "exit 4")]
    for job_id in ids:
        wait_job(http, job_id)
    out = srv.cli("stats", "--from", since.isoformat(), "--bucket", "minute", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["bucket"] == 60 and data["group_by"] == "state" and data["jobs"] >= 3
    counts = {s["key"]: sum(p["count"] for p in s["points"]) for s in data["series"]}
    assert counts["done"] >= 2 and counts["failed"] >= 1
    assert data["run_time"]["p50"] is not None
    table = srv.cli("stats", "--from", since.isoformat(), "-b", "minute", "-g", "provider")
    assert table.returncode == 0, table.stderr
    assert "shell" in table.stdout and "queue wait  p50" in table.stdout, table.stdout
    bad = srv.cli("stats", "--bucket", "week")
    assert bad.returncode == 2 and "week" in bad.stderr, bad.stderr
