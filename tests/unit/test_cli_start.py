"""What every `corral` command pays at start: the CLI modules import only
typer and the standard library (the client, the database and server stacks
load when a command needs them); shell completion is available."""

from __future__ import annotations

import json
import os
import subprocess
import sys

HEAVY = ("sqlalchemy", "alembic", "asyncpg", "fastapi", "uvicorn", "corral.store", "corral.runner")


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def test_importing_the_cli_loads_no_database_or_server_stack() -> None:
    res = _python(
        "import json, sys\n"
        "import corral.cli\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}"
        f" or m.startswith({HEAVY!r}))))"
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == []


def test_version_loads_no_client_either() -> None:
    res = _python(
        "import json, sys\n"
        "sys.argv = ['corral', '--version']\n"
        "from corral.cli import main\n"
        "try:\n    main()\n"
        "except SystemExit:\n    pass\n"
        "print(json.dumps([m for m in ('httpx', 'pydantic', 'rich', 'corral.client') "
        "if m in sys.modules]))"
    )
    assert res.returncode == 0, res.stderr
    version, loaded = res.stdout.splitlines()
    assert version.startswith("corral ")
    assert json.loads(loaded) == []


def test_shell_completion_is_on() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "corral"],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "_CORRAL_COMPLETE": "complete_bash",
            "COMP_WORDS": "corral jobs sh",
            "COMP_CWORD": "2",
        },
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["show"]
    helped = subprocess.run(
        [sys.executable, "-m", "corral", "--help"], capture_output=True, text=True, timeout=60
    )
    assert "--install-completion" in helped.stdout
