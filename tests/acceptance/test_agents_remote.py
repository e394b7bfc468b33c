"""Agent daemons hosted by a `corral runner` on another "host" (its own
process and workdir): supervised there, followed and operated through the
control plane, and left running while the control plane restarts."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx

from corral.testing import ServerProcess, start_server

from ._helpers import (
    alive,
    create_key,
    job_pids,
    kill_leftovers,
    marker,
    pids_matching,
    start_runner,
    stop_process,
    wait_for,
)
from .test_agents import agents_toml

BOT = (
    "import json, sys, time\n"
    "while True:\n"
    "    print('tick', repr(time.time()), flush=True)\n"
    "    print(json.dumps({'corral': {'messages': 2}}), flush=True)\n"
    "    time.sleep(0.1)\n"
)


def view(http: httpx.Client, name: str) -> dict[str, Any]:
    resp = http.get(f"/agents/{name}")
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    return data


def running(http: httpx.Client, name: str, **expect: Any) -> dict[str, Any] | None:
    data = view(http, name)
    ok = data["status"] == "running" and data["connected"]
    return data if ok and all(data[k] == v for k, v in expect.items()) else None


def follow(srv: ServerProcess, name: str, count: int, last_id: str | None = None) -> list[dict]:
    headers = {"Authorization": f"Bearer {srv.admin_key}"}
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    got: list[dict[str, Any]] = []
    with (
        httpx.Client(base_url=srv.url, timeout=30) as http,
        http.stream("GET", f"/sse/agents/{name}/logs", headers=headers) as resp,
    ):
        assert resp.status_code == 200
        event_id = None
        for raw in resp.iter_lines():
            if raw.startswith("id:"):
                event_id = raw[3:].strip()
            elif raw.startswith("data:"):
                item = json.loads(raw[5:])
                assert str(item["offset"]) == event_id
                got.append(item)
                if len(got) >= count:
                    return got
    return got


def test_remote_runner_hosts_agents_across_a_control_plane_restart(
    tmp_path: Path, held_port: int
) -> None:
    m = marker()
    config = tmp_path / "corral.toml"
    config.write_text(
        agents_toml(
            {
                "bot": {
                    "command": [sys.executable, "-u", "-c", BOT, m],
                    "runner": "box",
                    "stop_timeout": 2,
                },
                "homebody": {"command": ["sleep", f"600.{m}"]},
            }
        )
    )
    # Held: the restarted control plane gets the address its runner knows.
    data, workdir, port = tmp_path / "data", tmp_path / "box", held_port
    args = ("--config", str(config), "--no-queue")
    # The embedded runner's daemon outlives a crash only unsandboxed (a
    # sandbox dies with its runner: test_sandbox.py); the remote one is sandboxed.
    env = {"CORRAL_RUNNER__SANDBOX": "none"}
    srv = start_server(data, port=port, args=args, env=env)
    proc = None
    try:
        with srv.http() as http:
            key = create_key(srv, "runner")
            # Before its runner comes: declared, not running, nobody to host it.
            bot = view(http, "bot")
            assert (bot["status"], bot["connected"], bot["runner"]) == ("stopped", False, "box")
            resp = http.post("/agents/bot/restart")
            assert resp.status_code == 409 and "not connected" in resp.text, resp.text
            resp = http.post("/agents/bot/start")  # recorded, for when it connects
            assert resp.status_code == 202 and resp.json()["pending"], resp.text

            proc, log = start_runner(srv, key, workdir, "--name", "box", "--slots", "1")
            bot = wait_for(lambda: running(http, "bot", host="box"), timeout=30, what="bot")
            home = wait_for(lambda: running(http, "homebody"), timeout=30, what="homebody")
            assert home["host"].startswith("embedded-")
            # It runs on the runner's host: its log file is in the runner's workdir.
            assert (workdir / "agents" / "logs" / "bot.log").exists()
            assert not (data / "agents" / "logs" / "bot.log").exists()

            lines = follow(srv, "bot", 6)
            assert any(x["line"].startswith("tick ") for x in lines)
            wait_for(
                lambda: (view(http, "bot")["messages_24h"] or 0) >= 6,
                timeout=10,
                what="message counts",
            )
            assert view(http, "homebody")["messages_24h"] is None
            out = srv.cli("agents", "ls")
            assert out.returncode == 0, out.stderr
            row = next(x for x in out.stdout.splitlines() if x.strip().startswith("bot"))
            assert "running" in row and "box" in row, out.stdout
            before = lines[-1]["offset"]

        # kill -9 of the control plane; its embedded runner's daemon outlives it
        # (and is reaped at the restart), the remote runner's keeps running.
        srv.kill()
        assert alive(bot["pid"]) and alive(home["pid"])
        srv = start_server(data, port=port, args=args, env=env)
        with srv.http() as http:
            again = wait_for(lambda: running(http, "bot"), timeout=30, what="bot reported")
            assert again["pid"] == bot["pid"] and again["restarts"] == 0
            home2 = wait_for(
                lambda: (
                    running(http, "homebody")
                    if view(http, "homebody")["pid"] != home["pid"]
                    else None
                ),
                timeout=30,
                what="homebody started again",
            )
            assert not alive(home["pid"]) and alive(home2["pid"])
            # Lines continue where they were (written while the server was
            # away, reported after): resuming from before the restart loses none.
            resumed = follow(srv, "bot", 30, last_id=str(before))
            offsets = [x["offset"] for x in resumed]
            assert offsets == list(range(before + 1, before + 31))

            # Operated through the restarted control plane.
            stopped = http.post("/agents/bot/stop")
            assert stopped.status_code == 200, stopped.text
            assert stopped.json()["status"] == "stopped"
            wait_for(lambda: not alive(bot["pid"]), timeout=10, what="the bot to stop")
            restarted = http.post("/agents/bot/restart")
            assert restarted.status_code == 200, restarted.text
            new_pid = restarted.json()["pid"]
            assert restarted.json()["status"] == "running" and new_pid != bot["pid"]

            # The runner stops: its daemons stop with it, and it says so.
            assert stop_process(proc) == 0, log.read_text()
            assert not alive(new_pid)
            wait_for(
                lambda: view(http, "bot")["status"] == "stopped",
                timeout=10,
                what="the stopped runner's report",
            )
    finally:
        if proc is not None:
            stop_process(proc)
        srv.stop()
        kill_leftovers(m)
        assert pids_matching(m) == []


def test_replicas_run_an_embedded_agent_once_and_take_it_over(tmp_path: Path, pg_url: str) -> None:
    """Two `corral serve` replicas on one PostgreSQL database, both with an
    embedded runner: an `embedded` agent runs on one of them; either replica
    answers for it and streams its lines; when its host goes away for good,
    the other replica's runner takes it over."""
    m = marker()
    config = tmp_path / "corral.toml"
    ticker = "import time\nwhile True:\n    print('t', flush=True)\n    time.sleep(0.1)\n"
    config.write_text(
        agents_toml({"solo": {"command": [sys.executable, "-u", "-c", ticker, f"solo.{m}"]}})
    )
    args = ("--config", str(config), "--no-queue")
    a = start_server(tmp_path / "a", database_url=pg_url, args=args)
    b = start_server(tmp_path / "b", database_url=pg_url, args=args)
    try:
        with a.http() as ha, b.http() as hb:
            solo = wait_for(lambda: running(ha, "solo"), timeout=30, what="solo running")
            assert running(hb, "solo", pid=solo["pid"], host=solo["host"])
            assert len(job_pids(f"solo.{m}")) == 1
            host_is_a = (a.data_dir / "agents" / "logs" / "solo.log").exists()
            host, spare = (a, b) if host_is_a else (b, a)
            # Followed through the replica that does not host it (pg_notify).
            lines = follow(spare, "solo", 3)
            offsets = [x["offset"] for x in lines]
            assert offsets == list(range(offsets[0], offsets[0] + 3))
        host.stop()  # its runner stops the agent on the way out
        with spare.http() as http:
            moved = wait_for(
                lambda: running(http, "solo") if view(http, "solo")["pid"] != solo["pid"] else None,
                timeout=40,
                what="the other replica to take the agent over",
            )
            assert moved["host"] != solo["host"]
            assert len(job_pids(f"solo.{m}")) == 1
    finally:
        a.stop()
        b.stop()
        kill_leftovers(m)
