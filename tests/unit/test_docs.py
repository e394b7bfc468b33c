"""The README cannot drift: every setting, endpoint, CLI command and executor
kind appears in it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from corral.api.app import create_app
from corral.cli import app as cli_app
from corral.config import RunnerSettings, Settings, load_settings
from corral.executors.base import kinds

README = (Path(__file__).parents[2] / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    for name in Settings.model_fields:
        if name != "runner":
            assert f"`{name}`" in README, name
            assert f"`CORRAL_{name.upper()}`" in README, name
    for name in RunnerSettings.model_fields:
        assert f"`runner.{name}`" in README, name
        assert f"`CORRAL_RUNNER__{name.upper()}`" in README, name


def test_every_endpoint_is_documented() -> None:
    spec = create_app(load_settings()).openapi()
    for path, methods in spec["paths"].items():
        pattern = re.sub(r"\{[^}]+\}", "{id}", path)
        for method in methods:
            documented = f"{method.upper()} {pattern}"
            assert documented in re.sub(r"\{[^}]+\}", "{id}", README), documented


def test_every_cli_command_is_documented() -> None:
    import typer.main

    group = typer.main.get_command(cli_app)
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        subs = getattr(command, "commands", None)
        for full in [f"corral {name} {s}" for s in subs] if subs else [f"corral {name}"]:
            assert full in README, full


def test_every_executor_kind_is_documented() -> None:
    for kind in kinds():
        assert f"`{kind}`" in README, kind


def test_every_provider_setting_is_documented() -> None:
    from corral.executors.base import load

    for kind in kinds():
        for name in load(kind).settings.model_fields:
            assert f"`{name}`" in README, (kind, name)


DOCS = Path(__file__).parents[2] / "docs"


def test_generated_reference_pages_are_current(capsys: pytest.CaptureFixture[str]) -> None:
    """The reference pages are generated from the code (settings models, the
    typer app, the routes); regenerate with `cog -r -I docs docs/reference/*.md`."""
    from cogapp import Cog

    pages = sorted(str(p) for p in (DOCS / "reference").glob("*.md"))
    assert pages
    status = Cog().main(["cog", "--check", "--diff", "-I", str(DOCS), *pages])
    assert status == 0, (
        "stale docs: run `cog -r -I docs docs/reference/*.md`\n" + capsys.readouterr().out
    )


def test_every_client_method_is_documented() -> None:
    from corral.client import Client

    for name in dir(Client):
        if not name.startswith("_"):
            assert re.search(rf"`{name}[`(]", README), name
