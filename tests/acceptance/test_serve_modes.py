"""`corral serve` on PostgreSQL, and its refusal to expose itself without keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from corral.testing import free_port, start_server


def test_everything_behaves_the_same_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    srv = start_server(tmp_path / "data", database_url=pg_url)
    try:
        done = srv.cli("submit", "--shell", "echo hello; echo bye", "--wait")
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == ["hello", "bye"]
        failed = srv.cli("submit", "--shell", "echo oops >&2; exit 4", "--wait")
        assert failed.returncode == 1 and "exit code 4" in failed.stderr
        listed = srv.cli("jobs", "ls", "--json")
        states = sorted(j["state"] for j in json.loads(listed.stdout))
        assert states == ["done", "failed"]
        with srv.http() as http:
            status = http.get("/status").json()
        assert status["database"] == "postgresql"
        assert status["jobs"] == {"done": 1, "failed": 1}
    finally:
        srv.stop()
    # A restart on the same database keeps everything.
    again = start_server(tmp_path / "data", database_url=pg_url)
    try:
        assert len(json.loads(again.cli("jobs", "ls", "--json").stdout)) == 2
    finally:
        again.stop()


def test_two_replicas_share_one_postgresql_database(tmp_path: Path, pg_url: str) -> None:
    """Submit to replica B (no runner), run on replica A's runner, follow on B."""
    a = start_server(tmp_path / "a", database_url=pg_url)
    b = start_server(tmp_path / "b", database_url=pg_url, args=("--no-runner",))
    try:
        with b.http(a.admin_key) as http:  # keys live in the shared database
            accepted = http.post(
                "/jobs", json={"command": "echo from-a; sleep 0.5; echo end"}
            ).json()
            lines = []
            with http.stream(
                "GET",
                f"/jobs/{accepted['job_id']}/events",
                headers={"Accept": "text/event-stream"},
                timeout=30,
            ) as stream:
                for raw in stream.iter_lines():
                    if raw.startswith("data:"):
                        event = json.loads(raw[5:])
                        if event["type"] == "output":
                            lines.append(event["payload"]["line"])
            job = http.get(f"/jobs/{accepted['job_id']}").json()
        assert lines == ["from-a", "end"]
        assert job["state"] == "done"
        with a.http() as http:
            runners = http.get("/runners").json()
        assert [r["id"] for r in runners] == [job["runner_id"]]
    finally:
        b.stop()
        a.stop()


def test_non_loopback_without_keys_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cmd = [
        sys.executable,
        "-m",
        "corral",
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        str(free_port()),
        "--data-dir",
        str(data),
    ]
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert "corral keys create --role admin" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (data / "admin.key").exists()
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "corral",
            "keys",
            "create",
            "--role",
            "admin",
            "--json",
            "--data-dir",
            str(data),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["key"].startswith("crl_")


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data")
    try:
        missing = srv.cli("jobs", "show", "nope")
        assert missing.returncode == 1
        assert missing.stderr.strip() == "error: no job nope"
        verbose = srv.cli("-v", "jobs", "show", "nope")
        assert "Traceback" in verbose.stderr
        nothing = srv.cli("submit", "--file", str(tmp_path / "missing.md"))
        assert nothing.returncode == 1 and "cannot read" in nothing.stderr
    finally:
        srv.stop()
    down = srv.cli("jobs", "ls")
    assert down.returncode == 1 and "is `corral serve` running?" in down.stderr
