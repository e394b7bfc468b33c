"""Local jobs and agent daemons run in a bubblewrap sandbox: a shell job, a
real Claude Code Bash tool call, an agent daemon and a job on a remote runner
try to read the control plane's keys, database and configuration and fail;
their environment holds only the allowlist; the network is cut where a
provider says so; they die with their runner.

The server's data dir, config file and database live under /var/tmp (not
/tmp: the sandbox's private /tmp would hide them by accident), each in a
place of its own, so each must be hidden on purpose."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.executors.sandbox import ENV_ALLOW
from corral.testing import ServerProcess, on_ci, start_server
from tests.fakes import agent_bin
from tests.fakes.anthropic import FakeAnthropic, text, tool_use

from ._helpers import (
    create_key,
    kill_leftovers,
    marker,
    pids_matching,
    running_server,
    session_events,
    start_runner,
    stop_process,
    wait_for,
    wait_job,
)

SECRETS = {
    "CORRAL_WEBHOOK_SECRET": f"whsec-{uuid.uuid4().hex}",
    "CORRAL_JWT_SECRET": f"jwt-{uuid.uuid4().hex}{uuid.uuid4().hex}",
    "GPU_KEY": f"sk-gpu-{uuid.uuid4().hex}",  # another provider's key
    "SHELL_KEY": f"sk-shell-{uuid.uuid4().hex}",  # the `keyed` provider's own
}
# What a job's environment may hold (the shell adds PWD itself); none of
# these is a CORRAL_ setting.
ALLOWED_ENV = ENV_ALLOW | {"HOME", "PWD", "OLDPWD", "SHLVL", "_"}
assert not any(name.startswith("CORRAL_") for name in ALLOWED_ENV)
JOB_ENV = {"CORRAL_JOB_ID", "CORRAL_SESSION_ID", "CORRAL_ATTEMPT", "CORRAL_RUN"}


def needs_bwrap() -> None:
    if shutil.which("bwrap") is None:
        if on_ci():
            pytest.fail("bwrap not found; CI must install bubblewrap (.ci/run)")
        pytest.skip("bwrap not found: apt-get install bubblewrap")


class Box:
    """Where the sandboxed server keeps what jobs must not see."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.config = root / "etc" / "corral.toml"
        self.db = root / "db" / "corral.db"
        self.bot = root / "bot"

    def targets(self) -> dict[str, str]:
        """name -> a path a job tries to read."""
        return {
            "admin.key": str(self.data / "admin.key"),
            "runner.key": str(self.data / "runner.key"),
            "database": str(self.db),
            "config": str(self.config),
            "relative admin.key": "../../admin.key",  # from DATA/workspaces/SESSION
        }

    def probe(self) -> str:
        """A shell script that tries each target and says DENIED or READ."""
        lines = [
            f'if cat "{path}" >/dev/null 2>&1; then echo "READ {name}"; '
            f'else echo "DENIED {name}"; fi'
            for name, path in self.targets().items()
        ]
        lines += [
            # The content too, should a read succeed: the test looks for the secrets.
            " ".join(f'cat "{p}" 2>/dev/null;' for p in self.targets().values()),
            f"echo DATA: $(ls -A {self.data})",
            f"echo WORKSPACES: $(ls -A {self.data}/workspaces)",
            # Other processes' environments and command lines (the server's).
            "cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' '\\n' "
            "| grep -c 'corral.serv[e]' | sed 's/^/SERVER PROCESSES: /'",
            "echo ENV-BEGIN; env; echo ENV-END",
            "touch /etc/corral-was-here 2>/dev/null && echo WROTE-ETC || echo RO-ETC",
            "echo ok > in-workspace.txt && echo WROTE-WORKSPACE",
        ]
        return "\n".join(lines)


def env_names(lines: list[str]) -> set[str]:
    start, end = lines.index("ENV-BEGIN"), lines.index("ENV-END")
    return {line.split("=", 1)[0] for line in lines[start + 1 : end] if "=" in line}


def assert_confined(box: Box, lines: list[str], everything: str) -> None:
    """``lines`` are a probe's output; ``everything`` all a job left behind."""
    for name in box.targets():
        assert f"DENIED {name}" in lines, (name, lines)
    keys = [(box.data / n).read_text().strip() for n in ("admin.key", "runner.key")]
    for secret in [*keys, *SECRETS.values()]:
        assert secret not in everything
    assert "RO-ETC" in lines and "WROTE-WORKSPACE" in lines, lines
    data = next(line for line in lines if line.startswith("DATA:")).split()[1:]
    assert set(data) <= {"workspaces", "providers", "agents"}, data  # mount points only
    [workspaces] = [line for line in lines if line.startswith("WORKSPACES:")]
    assert len(workspaces.split()) == 2, workspaces  # its own session only
    assert "SERVER PROCESSES: 0" in lines, lines


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as f:
        yield f


@pytest.fixture(scope="module")
def box() -> Iterator[Box]:
    needs_bwrap()
    root = Path(tempfile.mkdtemp(prefix="corral-sandbox-", dir="/var/tmp"))
    try:
        yield Box(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def srv(box: Box, fake: FakeAnthropic) -> Iterator[ServerProcess]:
    box.config.parent.mkdir()
    box.db.parent.mkdir()
    box.bot.mkdir()
    providers: dict[str, dict[str, Any]] = {
        "claude": {
            "kind": "claude-code",
            "command": [str(agent_bin("claude"))],
            "permission_mode": "acceptEdits",
            "allowed_tools": ["Bash"],
            "env": {
                "ANTHROPIC_BASE_URL": fake.url,
                "ANTHROPIC_API_KEY": fake.api_key,
                "CLAUDE_CODE_MAX_RETRIES": "0",
            },
        },
        "keyed": {"kind": "shell", "api_key_env": "SHELL_KEY", "env": {"TOOL_URL": "http://t"}},
        "offline": {"kind": "shell", "network": False},
        "gpu": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "GPU_KEY"},
        "far": {"kind": "shell"},  # served by a remote runner only
    }
    peek = [
        "sh",
        "-c",
        box.probe().replace("in-workspace.txt", "in-cwd.txt") + "\necho PROBED\nexec sleep 600",
    ]
    lines = ["[runner]", f"providers = {json.dumps(['shell', 'claude', 'keyed', 'offline'])}"]
    for name, table in providers.items():
        lines.append(f"\n[providers.{name}]")
        lines += [f"{key} = {_toml(value)}" for key, value in table.items()]
    lines += ["\n[agents.peek]", f"command = {_toml(peek)}", f"cwd = {_toml(str(box.bot))}"]
    box.config.write_text("\n".join(lines) + "\n")
    env = {**SECRETS, "CORRAL_DATABASE_URL": f"sqlite:///{box.db}"}
    with running_server(box.data, env=env, args=("--config", str(box.config))) as s:
        yield s
    kill_leftovers(str(box.root))


@pytest.fixture
def http(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.http() as client:
        yield client


def run(http: httpx.Client, **body: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    resp = http.post("/jobs", json=body)
    assert resp.status_code == 202, resp.text
    job = wait_job(http, resp.json()["job_id"], timeout=60)
    events = [e for e in session_events(http, job["session_id"]) if e["job_id"] == job["id"]]
    return job, events


def output(events: list[dict[str, Any]]) -> list[str]:
    return [e["payload"]["line"] for e in events if e["type"] == "output"]


def test_a_shell_job_cannot_read_the_servers_keys_database_or_config(
    srv: ServerProcess, http: httpx.Client, box: Box
) -> None:
    # Another session's workspace, with something in it.
    other, _ = run(http, command="echo private > notes.txt")
    assert other["state"] == "done", other
    assert "sandbox: bwrap" in srv.output()
    [runner] = http.get("/status").json()["runners"]
    assert runner["sandbox"] == "bwrap"

    job, events = run(http, command=box.probe())
    assert job["state"] == "done", job
    lines = output(events)
    assert_confined(box, lines, json.dumps(events) + json.dumps(job))
    assert not (box.data / "workspaces" / job["session_id"] / "notes.txt").exists()
    assert (box.data / "workspaces" / job["session_id"] / "in-workspace.txt").exists()
    # The environment: the allowlist and the job's ids; no server setting, no key.
    assert env_names(lines) <= ALLOWED_ENV | JOB_ENV, env_names(lines) - ALLOWED_ENV
    assert env_names(lines) >= JOB_ENV
    assert f"HOME={box.data}/providers/shell/home" in lines


def test_a_jobs_environment_has_its_own_providers_key_only(http: httpx.Client, box: Box) -> None:
    job, events = run(http, command='env; printf %s "$SHELL_KEY" | sha256sum', provider="keyed")
    assert job["state"] == "done", job
    env = dict(line.split("=", 1) for line in output(events) if "=" in line)
    # The job has its key; what it prints is stored redacted (a known secret).
    assert env["SHELL_KEY"] == "[redacted]" and env["TOOL_URL"] == "http://t"
    digest = hashlib.sha256(SECRETS["SHELL_KEY"].encode()).hexdigest()
    assert output(events)[-1].split()[0] == digest
    assert set(env) - ALLOWED_ENV - JOB_ENV == {"SHELL_KEY", "TOOL_URL"}
    assert SECRETS["GPU_KEY"] not in json.dumps(events)


def test_network_false_leaves_only_a_loopback_of_its_own(
    srv: ServerProcess, http: httpx.Client
) -> None:
    connect = (
        'python3 -c \'import socket; socket.create_connection(("127.0.0.1", '
        f"{srv.port}), 5)' && echo CONNECTED || echo NO-NETWORK"
    )
    job, events = run(http, command=connect)
    assert output(events)[-1] == "CONNECTED", events
    job, events = run(http, command=connect, provider="offline")
    assert job["state"] == "done", job
    assert output(events)[-1] == "NO-NETWORK", events


def test_a_claude_code_bash_call_cannot_read_them_either(
    http: httpx.Client, fake: FakeAnthropic, box: Box
) -> None:
    prompt = f"look around [{uuid.uuid4().hex[:8]}]"
    fake.reply(tool_use("Bash", {"command": box.probe()}), match=prompt)
    fake.reply(text("looked"), match=prompt)
    job, events = run(http, prompt=prompt, provider="claude")
    assert job["state"] == "done" and job["result"] == "looked", job
    [started] = [e["payload"] for e in events if e["type"] == "agent.started"]
    assert started["sandbox"] == "bwrap"
    [result] = [e["payload"] for e in events if e["type"] == "agent.tool_result"]
    assert result["is_error"] is False, result
    lines = str(result["content"]).splitlines()
    # What went back to the model holds no secret either.
    sent = json.dumps([r for r in fake.requests if prompt in json.dumps(r)])
    assert_confined(box, lines, json.dumps(events) + sent)
    assert env_names(lines) >= JOB_ENV
    # Claude Code's own key is its provider's `env`: there, as configured.
    assert "ANTHROPIC_API_KEY" in env_names(lines)


def test_an_agent_daemon_is_sandboxed_with_its_cwd_writable(http: httpx.Client, box: Box) -> None:
    def probed() -> list[str] | None:
        lines = [entry["line"] for entry in http.get("/agents/peek/logs?n=500").json()]
        return lines if "PROBED" in lines else None

    lines = wait_for(probed, timeout=30, what="the daemon's probe")
    lines = lines[: lines.index("PROBED")]
    for name in box.targets():
        if name != "relative admin.key":  # its cwd is not in the data dir
            assert f"DENIED {name}" in lines, (name, lines)
    assert "WROTE-WORKSPACE" in lines and (box.bot / "in-cwd.txt").exists()
    assert "RO-ETC" in lines
    assert "SERVER PROCESSES: 0" in lines
    assert env_names(lines) <= ALLOWED_ENV | {"CORRAL_RUN", "CORRAL_AGENT"}
    assert f"HOME={box.data}/agents/home/peek" in lines
    for secret in SECRETS.values():
        assert secret not in "\n".join(lines)


def test_a_remote_runner_hides_its_workdir_and_token(
    srv: ServerProcess, http: httpx.Client, box: Box
) -> None:
    key = create_key(srv, "runner")
    workdir, config = box.root / "remote", box.root / "remote.toml"
    config.write_text("[providers.far]\nkind = 'shell'\n")
    args = ("--name", "remote", "--provider", "far", "--config", str(config), "--sandbox", "bwrap")
    proc, log = start_runner(srv, key, workdir, *args)
    try:
        probe = (
            f"echo WORKDIR: $(ls -A {workdir}); "
            f"cat {config} >/dev/null 2>&1 && echo READ-CONFIG || echo DENIED-CONFIG; "
            "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' '\\n' | grep -c 'crl[_]' "
            "| sed 's/^/TOKENS: /'"
        )
        job, events = run(http, command=probe, provider="far")
        assert job["state"] == "done", job
        [runner] = [r for r in http.get("/status").json()["runners"] if r["name"] == "remote"]
        assert job["runner_id"] == runner["id"] and runner["sandbox"] == "bwrap"
        assert "sandbox: bwrap" in log.read_text()
        lines = output(events)
        # Mount points only: no runner state, no pid records.
        assert lines[0].split()[1:] == ["providers", "workspaces"], lines
        assert lines[1:] == ["DENIED-CONFIG", "TOKENS: 0"], lines
        assert key not in json.dumps(events)
    finally:
        stop_process(proc)


def test_sandboxed_jobs_die_with_their_server() -> None:
    needs_bwrap()
    root = Path(tempfile.mkdtemp(prefix="corral-sandbox-", dir="/var/tmp"))
    m = f"300.{marker()}"
    try:
        srv = start_server(root / "data")
        try:
            with srv.http() as http:
                resp = http.post("/jobs", json={"command": f"setsid sleep {m} & sleep {m}"})
                job_id = resp.json()["job_id"]
                wait_job(http, job_id, "running")
            wait_for(lambda: len(pids_matching(f"sleep {m}")) >= 2, what="the sleeps")
        finally:
            srv.kill()  # kill -9: the runner has no chance to stop anything
        # bwrap --die-with-parent, then the PID namespace goes with its pid 1.
        wait_for(lambda: not pids_matching(m), timeout=10, what="the job's processes to die")
    finally:
        kill_leftovers(m)
        shutil.rmtree(root, ignore_errors=True)


def test_without_bwrap_auto_warns_and_bwrap_refuses_to_start(tmp_path: Path) -> None:
    no_bwrap = {"PATH": str(tmp_path / "empty")}
    with pytest.raises(RuntimeError, match="bwrap is not installed"):
        start_server(tmp_path / "strict", env={**no_bwrap, "CORRAL_RUNNER__SANDBOX": "bwrap"})
    with running_server(tmp_path / "data", env=no_bwrap) as srv:
        assert "JOBS ARE NOT SANDBOXED" in srv.output()
        with srv.http() as http:
            runners = wait_for(lambda: http.get("/status").json()["runners"], what="a runner")
            assert [r["sandbox"] for r in runners] == ["none"]
        status = srv.cli("status")
        assert status.returncode == 0, status.stderr
        assert "sandbox none" in status.stdout and "NOT sandboxed" in status.stdout


def test_a_program_installed_under_tmp_runs_sandboxed(tmp_path: Path) -> None:
    """A checkout under /tmp (CI may clone there): its tools stay reachable
    through the private /tmp, read-only, and nothing else of /tmp is."""
    needs_bwrap()
    from corral.executors import sandbox

    modules = tmp_path / "node_modules"
    tool = modules / "pkg" / "tool"
    tool.parent.mkdir(parents=True)
    (modules / "pkg" / "data.txt").write_text("from the package\n")
    (tmp_path / "other.txt").write_text("private\n")
    tool.write_text(
        "#!/bin/sh\n"
        'cat "$(dirname "$0")/data.txt"\n'
        'touch "$(dirname "$0")/w" 2>/dev/null || echo read-only\n'
        f"cat {tmp_path}/other.txt 2>/dev/null || echo hidden\n"
    )
    tool.chmod(0o755)
    box = sandbox.make("bwrap", hidden=[], state_dir=tmp_path / "state")
    argv = box.confine()([str(tool)], cwd=Path("/"))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.stdout.splitlines() == ["from the package", "read-only", "hidden"], done
