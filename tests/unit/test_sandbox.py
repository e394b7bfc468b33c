"""The sandbox's pieces: the job environment allowlist, the bwrap argv (what
is hidden, what is bound back, in which order), and choosing a sandbox."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.errors import ConfigError
from corral.executors import sandbox
from corral.executors.base import Context
from corral.executors.process import MARKER_VAR
from corral.executors.sandbox import Mount, Sandbox, job_environment, ro, rw
from corral.executors.shell import ShellSettings
from corral.jobs import JobState
from corral.models import Job, Session

RUNNER_ENV = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "TERM": "xterm",
    "HOME": "/root",
    "CORRAL_WEBHOOK_SECRET": "whsec-server",
    "CORRAL_PROVIDERS": '{"gpu": {"kind": "openai", "api_key": "sk-gpu"}}',
    "CORRAL_TOKEN": "tok",
    "CORRAL_JOB_ID": "spoofed",
    "ANTHROPIC_API_KEY": "sk-ant-server",
    "OTHER_KEY": "sk-other",
    "MY_KEY": "sk-mine",
    "SSH_AUTH_SOCK": "/run/user/0/agent.sock",
    "AWS_SECRET_ACCESS_KEY": "aws",
}


def test_job_environment_keeps_only_the_allowlist() -> None:
    env = job_environment(RUNNER_ENV, home=Path("/h"), extra={"X": "1"})
    assert env == {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TERM": "xterm",
        "HOME": "/h",
        "X": "1",
    }


def _context(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **settings: object) -> Context:
    monkeypatch.setattr("os.environ", dict(RUNNER_ENV))
    now = datetime.now(UTC)
    job = Job(
        id="job1",
        session_id="ses1",
        turn=1,
        state=JobState.RUNNING,
        provider="box",
        priority=2,
        attempt=2,
        max_attempts=2,
        source="api",
        epoch=1,
        created_at=now,
        available_at=now,
        updated_at=now,
    )
    session = Session(id="ses1", created_at=now, updated_at=now, epoch=1, last_seq=0, turns=1)
    return Context(
        job=job,
        session=session,
        workdir=tmp_path,
        emit=lambda *a, **k: None,
        started=lambda pid: None,
        provider="box",
        settings=ShellSettings(kind="shell", **settings),  # type: ignore[arg-type]
        run_marker="m1",
    )


def test_a_jobs_environment_has_its_providers_env_and_key_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ctx = _context(
        monkeypatch,
        tmp_path,
        env={"TOOL_URL": "http://tool", "LANG": "de_DE.UTF-8"},
        api_key_env="MY_KEY",
    )
    env = ctx.environment(tmp_path / "home", {"TMPDIR": "/tmp/t"})
    assert env == {
        "PATH": "/usr/bin:/bin",
        "LANG": "de_DE.UTF-8",  # the provider's env wins over the runner's
        "LC_ALL": "C.UTF-8",
        "TERM": "xterm",
        "HOME": str(tmp_path / "home"),
        "TMPDIR": "/tmp/t",
        "TOOL_URL": "http://tool",
        "MY_KEY": "sk-mine",
        "CORRAL_JOB_ID": "job1",
        "CORRAL_SESSION_ID": "ses1",
        "CORRAL_ATTEMPT": "2",
        MARKER_VAR: "m1",
    }


def test_a_provider_cannot_override_the_jobs_ids(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ctx = _context(monkeypatch, tmp_path, env={"CORRAL_JOB_ID": "x", MARKER_VAR: "y"})
    env = ctx.environment(tmp_path)
    assert env["CORRAL_JOB_ID"] == "job1" and env[MARKER_VAR] == "m1"


def test_a_jobs_process_gets_the_runners_otel_settings_and_its_traceparent(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ctx = _context(monkeypatch, tmp_path)
    monkeypatch.setitem(os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setitem(os.environ, "OTEL_SERVICE_NAME", "corral")
    monkeypatch.setitem(os.environ, "OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer s3cret")
    monkeypatch.setitem(os.environ, "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-key=s3cret")
    ctx.traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    env = ctx.environment(tmp_path)
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector:4318"
    assert env["OTEL_SERVICE_NAME"] == "corral"
    assert env["TRACEPARENT"] == ctx.traceparent
    assert not {"CORRAL_TOKEN", "OTHER_KEY", "AWS_SECRET_ACCESS_KEY"} & env.keys()
    # The exporter's headers carry the collector's credentials: not the job's.
    assert not [k for k in env if k.endswith("_HEADERS")]
    ctx.traceparent = None
    assert "TRACEPARENT" not in ctx.environment(tmp_path)


def _box(tmp_path: Path, *hidden: Path) -> Sandbox:
    void = tmp_path / "void"
    void.touch()
    return Sandbox("bwrap", "bwrap", bwrap="/usr/bin/bwrap", hidden=hidden, void=void)


def test_no_sandbox_runs_the_command_as_given(tmp_path: Path) -> None:
    confine = Sandbox().confine(rw(tmp_path))
    assert confine(["/bin/sh", "-c", "true"], cwd=tmp_path) == ["/bin/sh", "-c", "true"]
    assert confine.kind == "none"


def test_bwrap_argv_hides_then_binds_back_in_order(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ws = data / "workspaces" / "s1"
    home = data / "providers" / "shell" / "home"
    for d in (ws, home):
        d.mkdir(parents=True)
    config = tmp_path / "etc" / "corral.toml"
    config.parent.mkdir()
    config.write_text("")
    box = _box(tmp_path, data, config, data / "admin.key", tmp_path / "absent")
    argv = box.confine(rw(ws))(["/bin/sh", "-c", "id"], cwd=ws, writable=[home])
    real = tmp_path.resolve()
    w, h, d = str(ws.resolve()), str(home.resolve()), str(data.resolve())
    assert argv[:8] == [
        "/usr/bin/bwrap",
        "--die-with-parent",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--cap-drop",
        "ALL",
    ]
    rest = argv[8:]
    assert rest == [
        "--ro-bind", "/", "/",
        "--dev", "/dev",
        "--proc", "/proc",
        "--tmpfs", "/tmp",
        "--tmpfs", d,  # the data dir (admin.key inside it needs nothing more)
        "--ro-bind", str(box.void), str(real / "etc" / "corral.toml"),
        "--bind", w, w,
        "--bind", h, h,
        "--chdir", str(ws),
        "--", "/bin/sh", "-c", "id",
    ]  # fmt: skip


def test_a_secret_inside_a_path_bound_back_stays_hidden(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    secret = repo / ".git" / "token"
    secret.write_text("x")
    box = _box(tmp_path, secret)
    argv = box.confine([*ro(repo), Mount(repo / ".git", True)], network=False)(["true"], cwd=repo)
    s, g = str(secret.resolve()), str((repo / ".git").resolve())
    assert "--unshare-net" in argv
    tail = argv[argv.index("--tmpfs") + 2 :]
    assert tail == [
        "--ro-bind", str(box.void), s,
        "--ro-bind", str(repo.resolve()), str(repo.resolve()),
        "--bind", g, g,
        "--ro-bind", str(box.void), s,
        "--chdir", str(repo),
        "--", "true",
    ]  # fmt: skip


def test_found_looks_where_exec_would(tmp_path: Path) -> None:
    tool = tmp_path / "bin" / "tool"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert sandbox.found("tool", {"PATH": str(tool.parent)}, tmp_path)
    assert not sandbox.found("tool", {"PATH": "/nonexistent"}, tmp_path)
    assert sandbox.found("./bin/tool", {}, tmp_path)
    assert not sandbox.found("./bin/tool", {}, tool.parent)


def test_choosing_a_sandbox(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    none = sandbox.make("none", hidden=[], state_dir=tmp_path)
    assert none.kind == "none" and sandbox.warn_unsandboxed(none) is None
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap here
    auto = sandbox.make("auto", hidden=[], state_dir=tmp_path)
    assert auto.kind == "none" and auto.mode == "auto"
    warning = sandbox.warn_unsandboxed(auto)
    assert warning is not None and "NOT SANDBOXED" in warning and "bubblewrap" in warning
    with pytest.raises(ConfigError, match="bwrap is not installed"):
        sandbox.make("bwrap", hidden=[], state_dir=tmp_path)


def test_a_program_under_tmp_brings_its_installation(tmp_path: Path) -> None:
    """The sandbox's /tmp is private: a program installed under /tmp (a
    checkout there, with the pinned agent CLIs in its node_modules, or a
    virtualenv) gets its installation bound back read-only, and only that."""
    assert tmp_path.is_relative_to("/tmp")
    modules = tmp_path / "checkout" / "agents" / "node_modules"
    cli = modules / "@vendor" / "tool" / "cli.js"
    cli.parent.mkdir(parents=True)
    cli.write_text("")
    (modules / ".bin").mkdir()
    (modules / ".bin" / "tool").symlink_to(cli)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (venv / "bin" / "python").symlink_to("/bin/sh")
    plain = tmp_path / "bin" / "helper"
    plain.parent.mkdir()
    plain.write_text("")
    assert sandbox.installation(str(modules / ".bin" / "tool"), cwd=tmp_path) == [modules]
    assert sandbox.installation(str(venv / "bin" / "python"), cwd=tmp_path) == [venv]
    assert sandbox.installation("bin/helper", cwd=tmp_path) == [plain.parent]
    assert sandbox.installation("/bin/sh", cwd=tmp_path) == []
    assert sandbox.installation("no-such-program-here", cwd=tmp_path) == []

    # A configured wrapper: the paths among its words count too; a word that
    # is no existing path, or a program not under /tmp, binds nothing.
    wrapper = ["sh", "-c", '"$0" "$@"; sleep 1', str(modules / ".bin" / "tool"), "--x=/no/such"]
    assert sandbox._installations(wrapper, tmp_path) == [modules]

    box = Sandbox("bwrap", "bwrap", bwrap="/usr/bin/bwrap")
    argv = box.argv([str(modules / ".bin" / "tool")], cwd=tmp_path, mounts=[], network=True)
    tmpfs = argv.index("/tmp", argv.index("--tmpfs"))
    assert argv[tmpfs + 1 : tmpfs + 4] == ["--ro-bind", str(modules), str(modules)]


_PARTS = st.lists(st.sampled_from(["a", "b", "ab", "a.b", "x"]), max_size=4)


@given(_PARTS, _PARTS)
def test_within_is_is_relative_to(path: list[str], base: list[str]) -> None:
    """The string test the sandbox uses on resolved paths agrees with pathlib."""
    p, b = "/" + "/".join(path), "/" + "/".join(base)
    assert sandbox._within(p, b) == Path(p).is_relative_to(b)


_NAMES = st.sampled_from(["a", "b", ".c", "link", "loop"])
_KINDS = st.sampled_from(["dir", "file", "link-abs", "link-rel", "link-up", "dangling", "loop"])


@settings(deadline=None)  # file system work: a loaded machine may take its time
@given(
    tree=st.lists(st.tuples(st.lists(_NAMES, min_size=1, max_size=3), _KINDS), max_size=12),
    asked=st.lists(st.lists(_NAMES, min_size=1, max_size=4), max_size=10),
)
def test_resolved_is_realpath_of_what_exists(
    tree: list[tuple[list[str], str]], asked: list[list[str]]
) -> None:
    """The hidden paths, each folder resolved once per call, are exactly what
    ``realpath`` of each path ``lexists`` says is there gives: symbolic
    links at any depth, relative ones, dangling ones and loops."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.realpath(tmp)
        for parts, kind in tree:
            path = os.path.join(root, *parts)
            if os.path.lexists(path) or not os.path.isdir(os.path.dirname(path)):
                continue
            if kind == "dir":
                os.mkdir(path)
            elif kind == "file":
                Path(path).write_text("x")
            elif kind == "link-abs":
                os.symlink(os.path.join(root, "a"), path)
            elif kind == "link-rel":
                os.symlink("b", path)
            elif kind == "link-up":
                os.symlink("..", path)
            elif kind == "dangling":
                os.symlink(os.path.join(root, "nowhere", "x"), path)
            else:
                os.symlink(os.path.basename(path), path)  # itself
        # Always one folder reached through a link: its file is hidden at its target.
        fixed = os.path.join(root, "fixed")
        os.makedirs(os.path.join(fixed, "a"))
        Path(fixed, "a", "x").write_text("x")
        os.symlink("a", os.path.join(fixed, "l"))
        paths = [os.path.join(root, *parts) for parts in asked]
        paths += [root + "/", "/", os.path.join(fixed, "l", "x"), os.path.join(fixed, "l")]
        paths += [f"{fixed}/./a/x", f"{fixed}/l/../a", f"{fixed}//a", f"{fixed}/a/.."]
        want = sorted({os.path.realpath(p) for p in paths if os.path.lexists(p)})
        assert sandbox.resolved(paths) == want
