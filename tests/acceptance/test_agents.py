"""Agent daemons supervised by a real `corral serve`: live logs over SSE,
restarts with backoff, crash loops, whole-tree stops, reload, log rotation,
reaping after a crash, and many daemons at once."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.testing import ServerProcess, start_server

from ._helpers import (
    alive,
    assert_error,
    create_key,
    kill_leftovers,
    marker,
    pids_matching,
    running_server,
    wait_for,
)

TICKER = (
    "import time\n"
    "while True:\n"
    "    print('tick', repr(time.time()), flush=True)\n"
    "    time.sleep(0.1)\n"
)


# An agent that prints its own secret: the line is kept with it redacted.
BOT_TOKEN = "bot-token-" + os.urandom(8).hex()
LEAKY = "import os, time\nprint('token:', os.environ['BOT_TOKEN'], flush=True)\ntime.sleep(300)"


def _toml(value: Any) -> str:
    if isinstance(value, dict):  # an inline table
        return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def agents_toml(agents: dict[str, dict[str, Any]]) -> str:
    out = []
    for name, table in agents.items():
        out.append(f"[agents.{name}]")
        out += [f"{k} = {_toml(v)}" for k, v in table.items()]
        out.append("")
    return "\n".join(out)


@pytest.fixture(scope="module")
def mark() -> str:
    return marker()


@pytest.fixture(scope="module")
def base_agents(mark: str) -> dict[str, dict[str, Any]]:
    return {
        "ticker": {
            "command": [sys.executable, "-u", "-c", TICKER],
            "restart": "always",
            "restart_delay": 0.2,
        },
        "crasher": {
            "command": "sh -c 'echo boom; exit 3'",
            "restart_delay": 0.1,
            "max_quick_failures": 3,
        },
        "tree": {
            # A child, and a grandchild in a session of its own.
            "command": ["sh", "-c", f"sleep 300.{mark} & setsid sleep 301.{mark} & wait"],
            "autostart": False,
            "stop_timeout": 2,
        },
        "chatty": {
            "command": [
                sys.executable,
                "-u",  # its environment has no PYTHONUNBUFFERED of the runner's
                "-c",
                "for i in range(400): print('x' * 99)\nimport time; time.sleep(300)",
            ],
            "log_max_bytes": 4096,
            "log_backups": 2,
        },
        "leaky": {
            "command": [sys.executable, "-c", LEAKY],
            "env": {"BOT_TOKEN": BOT_TOKEN},
        },
    }


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, base_agents: dict[str, Any]) -> Path:
    path = tmp_path_factory.mktemp("agents") / "corral.toml"
    path.write_text(agents_toml(base_agents))
    return path


@pytest.fixture(scope="module")
def srv(config: Path, mark: str) -> Iterator[ServerProcess]:
    try:
        with running_server(
            config.parent / "data",
            args=("--config", str(config), "--no-queue"),
            env={"CORRAL_SSE_PING": "1"},  # a stream waiting on a change ends its reads often
        ) as s:
            yield s
    finally:
        kill_leftovers(mark)


@pytest.fixture
def http(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.http() as client:
        yield client


def agent(http: httpx.Client, name: str) -> dict[str, Any]:
    resp = http.get(f"/agents/{name}")
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    return data


def status_is(http: httpx.Client, name: str, *wanted: str) -> dict[str, Any] | None:
    data = agent(http, name)
    return data if data["status"] in wanted else None


def test_live_logs_over_sse(srv: ServerProcess, http: httpx.Client) -> None:
    wait_for(lambda: status_is(http, "ticker", "running"), timeout=20, what="the ticker")
    lags: list[float] = []
    headers = {"Accept": "text/event-stream"}
    with http.stream("GET", "/sse/agents/ticker/logs", headers=headers, timeout=30) as resp:
        assert resp.status_code == 200
        last_id = None
        for raw in resp.iter_lines():
            if raw.startswith("id:"):
                last_id = int(raw[3:])
            if not raw.startswith("data:"):
                continue
            item = json.loads(raw[5:])
            sent = float(item["line"].split()[1])
            lags.append(time.time() - sent)
            if len(lags) == 20:
                break
    assert last_id is not None
    lags.sort()
    assert lags[-1] < 1.0, lags  # the seed target: visible within a second
    # Resuming with Last-Event-ID continues after that line, with no gap.
    headers["Last-Event-ID"] = str(last_id)
    with http.stream("GET", "/sse/agents/ticker/logs", headers=headers, timeout=30) as resp:
        ids = []
        for raw in resp.iter_lines():
            if raw.startswith("id:"):
                ids.append(int(raw[3:]))
                if len(ids) == 3:
                    break
    assert ids == [last_id + 1, last_id + 2, last_id + 3]
    tail = http.get("/agents/ticker/logs", params={"n": 5}).json()
    assert len(tail) == 5 and tail[-1]["line"].startswith("tick")


def test_an_agent_s_secret_is_not_kept_in_its_log(http: httpx.Client) -> None:
    lines = wait_for(
        lambda: http.get("/agents/leaky/logs").json(), timeout=20, what="the leaky agent's line"
    )
    assert [x["line"] for x in lines] == ["token: [redacted]"]
    assert BOT_TOKEN not in json.dumps(agent(http, "leaky"))


def test_killed_daemon_is_restarted_with_a_status_event(
    srv: ServerProcess, http: httpx.Client
) -> None:
    before = wait_for(lambda: status_is(http, "ticker", "running"), timeout=20, what="ticker")
    changes: list[dict[str, Any]] = []
    with http.stream(
        "GET", "/sse/status", headers={"Accept": "text/event-stream"}, timeout=30
    ) as resp:
        event = ""
        lines = resp.iter_lines()
        # First every agent as it is (the feed listens already), then changes.
        for raw in lines:
            if raw.startswith("event:"):
                event = raw[6:].strip()
            elif raw.startswith("data:") and event == "agent":
                now = json.loads(raw[5:])
                if now["name"] == "ticker":
                    assert now["status"] == "running" and now["pid"] == before["pid"]
                    break
        os.kill(before["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 30
        for raw in lines:
            # Keep-alive comments (every second here) bound the wait: a change
            # that never comes fails with what the server knows, not a hang.
            if time.monotonic() > deadline:
                now = agent(http, "ticker")
                pytest.fail(
                    f"no restart within 30 s; changes {changes}; agent now {now};\n"
                    f"server log tail:\n{srv.output()[-4000:]}"
                )
            if raw.startswith("event:"):
                event = raw[6:].strip()
            elif raw.startswith("data:") and event == "status":
                change = json.loads(raw[5:])
                if change["agent_id"] == "ticker":
                    changes.append(change)
                    if change["new_status"] == "running":
                        break
    assert [c["new_status"] for c in changes] == ["exited", "backoff", "starting", "running"]
    assert changes[0]["exit_code"] == -9
    after = agent(http, "ticker")
    assert after["pid"] != before["pid"] and after["restarts"] == before["restarts"] + 1
    assert after["last_exit_code"] == -9


def test_crash_loop_ends_fatal(http: httpx.Client) -> None:
    data = wait_for(lambda: status_is(http, "crasher", "fatal"), timeout=20, what="fatal")
    assert "3 quick failures" in data["message"] and data["last_exit_code"] == 3
    assert data["restarts"] == 2 and data["pid"] is None
    assert [line["line"] for line in data["logs"]] == ["boom"] * 3


def test_stop_reaches_grandchildren(http: httpx.Client, mark: str) -> None:
    assert agent(http, "tree")["status"] == "stopped"  # autostart = false
    started = http.post("/agents/tree/start").json()
    assert started["status"] in ("starting", "running")
    wait_for(
        lambda: len(pids_matching(f"30{0}.{mark}")) + len(pids_matching(f"301.{mark}")) >= 2,
        timeout=10,
        what="the tree's sleeps",
    )
    stopped = http.post("/agents/tree/stop").json()
    assert stopped["status"] == "stopped"
    wait_for(
        lambda: not pids_matching(f"300.{mark}") and not pids_matching(f"301.{mark}"),
        timeout=10,
        what="the child and the setsid grandchild to die",
    )


def test_restart_returns_when_running(http: httpx.Client) -> None:
    before = wait_for(lambda: status_is(http, "ticker", "running"), timeout=20, what="ticker")
    resp = http.post("/agents/ticker/restart")
    assert resp.status_code == 200, resp.text
    after = resp.json()
    assert after["status"] == "running" and after["pid"] != before["pid"]
    assert not alive(before["pid"])
    assert_error(http.post("/agents/nope/restart"), 404, "agent_not_found")


def test_log_rotation_keeps_the_configured_size(srv: ServerProcess, http: httpx.Client) -> None:
    wait_for(
        lambda: len(http.get("/agents/chatty/logs", params={"n": 1000}).json()) == 400,
        timeout=20,
        what="chatty's lines",
    )
    logs = srv.data_dir / "agents" / "logs"
    files = sorted(p.name for p in logs.glob("chatty.log*"))
    assert files == ["chatty.log", "chatty.log.1", "chatty.log.2"]
    assert all((logs / f).stat().st_size <= 4096 for f in files)


def test_roles_and_reload(
    srv: ServerProcess, http: httpx.Client, config: Path, base_agents: dict[str, Any]
) -> None:
    viewer = create_key(srv, "viewer")
    with srv.http(viewer) as as_viewer:
        assert as_viewer.get("/agents").status_code == 200
        assert_error(as_viewer.post("/agents/ticker/stop"), 403)
    chatty_pid = agent(http, "chatty")["pid"]
    changed = {k: v for k, v in base_agents.items() if k != "crasher"}
    changed["ticker"] = {**changed["ticker"], "restart_delay": 0.3}
    changed["newbie"] = {"command": ["sleep", "600"]}
    config.write_text(agents_toml(changed))
    resp = http.post("/agents/reload")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"added": ["newbie"], "removed": ["crasher"], "changed": ["ticker"]}
    names = [a["name"] for a in http.get("/agents").json()]
    assert names == ["chatty", "leaky", "newbie", "ticker", "tree"]
    wait_for(lambda: status_is(http, "newbie", "running"), timeout=10, what="newbie")
    wait_for(lambda: status_is(http, "ticker", "running"), timeout=10, what="ticker")
    assert agent(http, "chatty")["pid"] == chatty_pid  # untouched: not restarted
    out = srv.cli("agents", "ls")
    assert out.returncode == 0 and "newbie" in out.stdout, out.stderr
    config.write_text("[agents.broken]\ncommand = 42\n")
    assert_error(http.post("/agents/reload"), 422)
    config.write_text(agents_toml(changed))


def test_crash_reaps_and_fifty_daemons(tmp_path: Path) -> None:
    m = marker()
    config = tmp_path / "corral.toml"
    config.write_text(
        agents_toml({f"d{i:02d}": {"command": ["sleep", f"600.{m}{i:02d}"]} for i in range(50)})
    )
    data = tmp_path / "data"
    args = ("--config", str(config), "--no-queue")
    # Daemons outlive a crash only unsandboxed: a sandbox dies with its
    # runner (test_sandbox.py). This is the reaping of what a crash left.
    env = {"CORRAL_RUNNER__SANDBOX": "none"}
    try:
        srv = start_server(data, args=args, env=env)
        with srv.http() as http:
            wait_for(
                lambda: all(a["status"] == "running" for a in http.get("/agents").json()),
                timeout=60,
                what="50 daemons running",
            )
            old = sorted(a["pid"] for a in http.get("/agents").json())
        srv.kill()  # kill -9: the daemons outlive it (sessions of their own)
        assert all(alive(p) for p in old)
        with running_server(data, args=args, env=env) as again, again.http() as http:
            wait_for(
                lambda: all(
                    a["status"] == "running" and a["pid"] not in old
                    for a in http.get("/agents").json()
                ),
                timeout=60,
                what="50 daemons running again",
            )
            assert not any(alive(p) for p in old)  # reaped before starting anew
            assert len(pids_matching(f"600.{m}")) == 50
        wait_for(lambda: not pids_matching(f"600.{m}"), timeout=20, what="a clean stop")
    finally:
        kill_leftovers(f"600.{m}")


def test_service_install(tmp_path: Path) -> None:
    import shutil
    import subprocess

    config = tmp_path / "corral.toml"
    config.write_text("port = 8499\n")
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    run = [sys.executable, "-m", "corral", "service", "install", "--config", str(config)]
    dry = subprocess.run([*run, "--dry-run"], capture_output=True, text=True, env=env)
    assert dry.returncode == 0, dry.stderr
    assert f"serve --config {config}" in dry.stdout and "Restart=always" in dry.stdout
    assert f"EnvironmentFile=-{tmp_path / 'corral.env'}" in dry.stdout
    assert not (tmp_path / "xdg").exists()
    done = subprocess.run([*run, "--user"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    unit = tmp_path / "xdg" / "systemd" / "user" / "corral.service"
    assert unit.read_text().endswith("WantedBy=default.target\n")
    assert "systemctl --user daemon-reload" in done.stdout
    if shutil.which("systemd-analyze"):
        check = subprocess.run(
            ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stderr
