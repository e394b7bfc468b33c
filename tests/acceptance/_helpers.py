"""Polling, process inspection and assertion helpers for the acceptance tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

from corral.testing import ServerProcess, start_server

T = TypeVar("T")

TERMINAL = {"done", "failed", "cancelled"}


def wait_for(
    check: Callable[[], T | None],
    *,
    timeout: float = 15.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Call ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def get_job(http: httpx.Client, job_id: str) -> dict[str, Any]:
    resp = http.get(f"/jobs/{job_id}")
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    return data


def wait_job(
    http: httpx.Client, job_id: str, states: set[str] | str = TERMINAL, *, timeout: float = 20.0
) -> dict[str, Any]:
    """Poll GET /jobs/{id} until its state is one of ``states``."""
    wanted = {states} if isinstance(states, str) else set(states)
    last: dict[str, Any] = {}

    def check() -> dict[str, Any] | None:
        nonlocal last
        last = get_job(http, job_id)
        return last if last["state"] in wanted else None

    try:
        return wait_for(check, timeout=timeout, what=f"job {job_id} to be {sorted(wanted)}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: {json.dumps(last)[:800]}") from None


def ts(value: str) -> datetime:
    """A timestamp of the API as an aware datetime (compare these, not strings)."""
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    return parsed


def submit(http: httpx.Client, command: str, **fields: Any) -> str:
    """Submit a shell command (explicitly: prose never runs in a shell)."""
    resp = http.post("/jobs", json={"command": command, **fields})
    assert resp.status_code == 202, resp.text
    job_id: str = resp.json()["job_id"]
    return job_id


def session_events(http: httpx.Client, session_id: str, since: int = 0) -> list[dict[str, Any]]:
    """Every stored event of a session (all pages)."""
    out: list[dict[str, Any]] = []
    while True:
        resp = http.get(f"/sessions/{session_id}/events", params={"since": since})
        assert resp.status_code == 200, resp.text
        page = resp.json()["events"]
        if not page:
            return out
        out.extend(page)
        since = page[-1]["seq"]


def output_lines(events: list[dict[str, Any]], job_id: str | None = None) -> list[str]:
    return [
        e["payload"]["line"]
        for e in events
        if e["type"] == "output" and (job_id is None or e["job_id"] == job_id)
    ]


def assert_error(resp: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """``resp`` has ``status`` and the error shape {"error": {"code", "message"}}."""
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text}"
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    body = resp.json()
    assert set(body) == {"error"}, body
    err: dict[str, Any] = body["error"]
    assert isinstance(err.get("code"), str) and err["code"], body
    assert isinstance(err.get("message"), str) and err["message"], body
    if code is not None:
        assert err["code"] == code, body
    return err


def marker() -> str:
    """A unique number usable as a `sleep` argument, so the process is findable."""
    return f"{uuid.uuid4().int % 10**8:08d}"


# --- processes -----------------------------------------------------------------------------


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[0]


def live_processes() -> dict[int, list[str]]:
    """pid -> argv of every live (not zombie) process we can see."""
    found: dict[int, list[str]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            raw = Path(entry.path, "cmdline").read_bytes()
        except OSError:
            continue
        if not raw or _proc_state(pid) in (None, "Z", "X"):
            continue
        found[pid] = raw.rstrip(b"\0").decode(errors="replace").split("\0")
    return found


def pids_matching(text: str) -> list[int]:
    """Live processes whose command line contains ``text``."""
    me = os.getpid()
    return [
        pid for pid, argv in live_processes().items() if pid != me and any(text in a for a in argv)
    ]


def job_pids(text: str) -> list[int]:
    """Like ``pids_matching``, without the sandbox's own processes (bwrap and
    its child carry the job's command line too): one per process of the job."""
    return [p for p in pids_matching(text) if Path(live_processes()[p][0]).name != "bwrap"]


def pids_exact(*argv: str) -> list[int]:
    """Live processes whose argv is exactly ``argv``."""
    want = list(argv)
    return [pid for pid, got in live_processes().items() if got == want]


def alive(pid: int) -> bool:
    return _proc_state(pid) not in (None, "Z", "X")


def kill_leftovers(text: str) -> None:
    """Best-effort cleanup after a failed test: SIGKILL processes matching ``text``."""
    for pid in pids_matching(text):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


# --- servers and runners -------------------------------------------------------------------


@contextlib.contextmanager
def running_server(data_dir: Path, **kw: Any) -> Iterator[ServerProcess]:
    srv = start_server(data_dir, **kw)
    try:
        yield srv
    finally:
        srv.stop()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update(extra)
    return env


def cli_many(
    srv: ServerProcess, *commands: tuple[str, ...]
) -> list[subprocess.CompletedProcess[str]]:
    """Run several independent `corral` commands at once (each one costs about a
    second of interpreter start-up); results in the order given."""
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        return list(pool.map(lambda argv: srv.cli(*argv), commands))


def create_keys(srv: ServerProcess, *roles: str) -> list[dict[str, str]]:
    """`corral keys create --role ROLE --json` against the server's database, for
    each of ``roles``; returns the printed {"key", "id", "role", "name"} objects."""
    results = cli_many(
        srv,
        *[
            ("keys", "create", "--role", role, "--json", "--data-dir", str(srv.data_dir))
            for role in roles
        ],
    )
    created = []
    for role, res in zip(roles, results, strict=True):
        assert res.returncode == 0, res.stderr
        data = json.loads(res.stdout)
        assert data["role"] == role
        assert data["key"].startswith("crl_")
        created.append(data)
    return created


def create_key(srv: ServerProcess, role: str) -> str:
    return create_keys(srv, role)[0]["key"]


def start_runner(
    srv: ServerProcess, token: str, workdir: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Path]:
    """`corral runner` as a subprocess (``env``: CORRAL_* settings of its own);
    its output goes to a log file."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "runner.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "corral",
                "runner",
                "--server",
                srv.url,
                "--token",
                token,
                "--workdir",
                str(workdir),
                *args,
            ],
            env=clean_env(**(env or {})),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return proc, log


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def dashboard_page(srv: ServerProcess, path: str) -> str:
    """A dashboard page as the admin sees it, signed in through a one-time
    link (what `corral ui` opens)."""
    with srv.http() as http:
        link = http.post("/ui/login-links").json()["path"]
    with httpx.Client(base_url=srv.url, follow_redirects=True) as browser:
        assert browser.get(link).status_code == 200
        resp = browser.get(path)
        assert resp.status_code == 200, resp.text
        return resp.text
