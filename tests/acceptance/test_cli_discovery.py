"""The CLI finds the server that uses its data dir, whatever port and host
it was started with (`DATA_DIR/server.json`), and `corral service install`
puts the data dir, host and port into the unit's command line."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

from corral import discovery
from corral.testing import start_server

from ._helpers import clean_env


def _corral(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        env=clean_env(**env),  # no CORRAL_URL, no CORRAL_TOKEN
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_cli_finds_a_server_started_with_another_port_and_data_dir(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    data = xdg / "corral"  # the default data dir of a user whose XDG_DATA_HOME is xdg
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    srv = start_server(data)  # --port: a free one, not 8487
    try:
        assert json.loads((data / "server.json").read_text())["url"] == srv.url
        by_default = _corral("status", "--json", cwd=elsewhere, XDG_DATA_HOME=str(xdg))
        assert by_default.returncode == 0, by_default.stderr
        assert json.loads(by_default.stdout)["runners"]
        by_env = _corral("jobs", "ls", "--json", cwd=elsewhere, CORRAL_DATA_DIR=str(data))
        assert by_env.returncode == 0, by_env.stderr
    finally:
        srv.stop()
    assert not (data / "server.json").exists()  # a stopped server leaves no record

    crashed = start_server(data)
    crashed.kill()  # kill -9: the record stays, but names a process that is gone
    assert (data / "server.json").exists()
    assert discovery.recorded(data) is None


def test_service_install_carries_the_data_dir_host_and_port(tmp_path: Path) -> None:
    def exec_start(*args: str, **env: str) -> list[str]:
        res = _corral("service", "install", "--dry-run", *args, cwd=tmp_path, **env)
        assert res.returncode == 0, res.stderr
        line = next(x for x in res.stdout.splitlines() if x.startswith("ExecStart="))
        argv = shlex.split(line.removeprefix("ExecStart="))
        return argv[argv.index("serve") + 1 :]

    assert exec_start("--data-dir", "d", "--port", "9000", "--host", "0.0.0.0") == [
        "--data-dir",
        str(tmp_path / "d"),
        "--host",
        "0.0.0.0",
        "--port",
        "9000",
    ]
    assert exec_start(CORRAL_DATA_DIR="/srv/corral", CORRAL_PORT="9001") == [
        "--data-dir",
        "/srv/corral",
        "--port",
        "9001",
    ]
    assert exec_start() == []


def test_service_unit_reloads_on_sighup_and_is_hardened(tmp_path: Path) -> None:
    def lines(*args: str) -> list[str]:
        res = _corral("service", "install", "--dry-run", *args, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        return res.stdout.splitlines()

    system, user = lines(), lines("--user")
    for unit in (system, user):
        assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
        assert "NoNewPrivileges=yes" in unit
    assert "ProtectSystem=full" in system and "ProtectSystem=full" not in user
    # The agents' sandbox needs user namespaces: nothing may take them away.
    assert not any(x.startswith(("RestrictNamespaces", "PrivateUsers")) for x in system)


def test_the_config_file_is_found_without_config(tmp_path: Path) -> None:
    """--config, else $CORRAL_CONFIG, else ./corral.toml, else
    ~/.config/corral/corral.toml; one named explicitly must exist."""
    xdg, work = tmp_path / "xdg", tmp_path / "work"
    (xdg / "corral").mkdir(parents=True)
    work.mkdir()
    (xdg / "corral" / "corral.toml").write_text("lease_ttl = 41\n")
    named = tmp_path / "named.toml"
    named.write_text("lease_ttl = 42\n")

    def lease_ttl(*args: str, **env: str) -> float:
        res = _corral("config", "show", "--json", *args, cwd=work, XDG_CONFIG_HOME=str(xdg), **env)
        assert res.returncode == 0, res.stderr
        return float(json.loads(res.stdout)["lease_ttl"])

    assert lease_ttl() == 41  # the user's file
    (work / "corral.toml").write_text("lease_ttl = 43\n")
    assert lease_ttl() == 43  # the working directory's wins over the user's
    assert lease_ttl(CORRAL_CONFIG=str(named)) == 42
    assert (
        lease_ttl("--config", str(xdg / "corral" / "corral.toml"), CORRAL_CONFIG=str(named)) == 41
    )
    res = _corral("config", "show", cwd=work, CORRAL_CONFIG=str(tmp_path / "missing.toml"))
    assert res.returncode != 0 and "CORRAL_CONFIG" in res.stderr, res.stderr
