"""The `corral` CLI against a real server: submit --wait, jobs ls/show/logs/wait."""

from __future__ import annotations

import json

import httpx

from corral.testing import ServerProcess

from ._helpers import cli_many, submit, wait_job


def test_submit_wait_prints_output_and_exits_0(srv: ServerProcess) -> None:
    res = srv.cli("submit", "--shell", "echo hello; echo bye", "--wait")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["hello", "bye"]
    assert "done" in res.stderr


def test_submit_wait_failing_command_exits_1(srv: ServerProcess) -> None:
    res = srv.cli("submit", "--shell", "echo oops; echo bad >&2; exit 3", "--wait")
    assert res.returncode == 1
    assert "oops" in res.stdout
    assert "bad" in res.stderr  # stderr lines go to stderr
    assert "exit code 3" in res.stderr
    assert "failed" in res.stderr


def test_jobs_ls_show_logs_wait(srv: ServerProcess, http: httpx.Client) -> None:
    res = srv.cli("submit", "--command", "echo alpha; echo beta", "--json", "--title", "cli-job")
    assert res.returncode == 0, res.stderr
    accepted = json.loads(res.stdout)
    job_id = accepted["job_id"]
    assert accepted["created"] is True

    wait_job(http, job_id)

    ls_json, show_json, show, logs = cli_many(
        srv,
        ("jobs", "ls", "--json"),
        ("jobs", "show", job_id, "--json"),
        ("jobs", "show", job_id),
        ("jobs", "logs", job_id),
    )
    assert ls_json.returncode == 0, ls_json.stderr
    listed = {j["id"]: j for j in json.loads(ls_json.stdout)}
    assert listed[job_id]["state"] == "done"
    assert listed[job_id]["source"] == "cli"
    assert listed[job_id]["title"] == "cli-job"

    assert show_json.returncode == 0, show_json.stderr
    shown = json.loads(show_json.stdout)
    assert shown["id"] == job_id
    assert shown["state"] == "done"
    assert shown["exit_code"] == 0
    assert shown["attempt"] == 1
    assert "alpha" in shown["result"] and "beta" in shown["result"]

    assert show.returncode == 0, show.stderr
    assert job_id in show.stdout and "done" in show.stdout and "alpha" in show.stdout

    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.splitlines() == ["alpha", "beta"]


def test_jobs_ls_filters_by_state_and_wait_fails_for_failed_job(
    srv: ServerProcess, http: httpx.Client
) -> None:
    ok = submit(http, "true")
    bad = submit(http, "exit 7")
    wait_job(http, ok)
    assert wait_job(http, bad)["state"] == "failed"

    res, waited = cli_many(
        srv, ("jobs", "ls", "--state", "failed", "--json"), ("jobs", "wait", bad)
    )
    assert res.returncode == 0, res.stderr
    listed = json.loads(res.stdout)
    assert bad in [j["id"] for j in listed]
    assert ok not in [j["id"] for j in listed]
    assert all(j["state"] == "failed" for j in listed)

    assert waited.returncode == 1
    assert "failed" in waited.stdout and "exit code 7" in waited.stdout


def test_cli_errors_are_one_line_and_exit_1(srv: ServerProcess) -> None:
    res = srv.cli("jobs", "show", "no-such-job")
    assert res.returncode == 1
    assert "error:" in res.stderr and "no job no-such-job" in res.stderr
    assert "Traceback" not in res.stderr
