"""The docs cannot drift: every setting, endpoint, CLI command, executor kind
and client method appears in the docs site (docs/: the guides and the
reference pages generated from the code), and the generated pages are
current."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from corral.api.app import create_app
from corral.cli import app as cli_app
from corral.config import RunnerSettings, Settings, load_settings
from corral.executors.base import kinds

DOCS = Path(__file__).parents[2] / "docs"
# Everything a reader can find: the guides and the generated reference pages.
TEXT = "\n".join(p.read_text() for p in sorted(DOCS.rglob("*.md")))


def test_every_setting_is_documented() -> None:
    from corral.config import OllamaSettings

    for name in Settings.model_fields:
        if name not in ("runner", "ollama"):
            assert f"`{name}`" in TEXT, name
            assert f"`CORRAL_{name.upper()}`" in TEXT, name
    for prefix, model in (("runner", RunnerSettings), ("ollama", OllamaSettings)):
        for name in model.model_fields:
            assert f"`{prefix}.{name}`" in TEXT, name
            assert f"`CORRAL_{prefix.upper()}__{name.upper()}`" in TEXT, name


def test_every_endpoint_is_documented() -> None:
    spec = create_app(load_settings()).openapi()
    for path, methods in spec["paths"].items():
        pattern = re.sub(r"\{[^}]+\}", "{id}", path)
        for method in methods:
            documented = f"{method.upper()} {pattern}"
            assert documented in re.sub(r"\{[^}]+\}", "{id}", TEXT), documented


def test_every_cli_command_is_documented() -> None:
    import typer.main

    group = typer.main.get_command(cli_app)
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        subs = getattr(command, "commands", None)
        for full in [f"corral {name} {s}" for s in subs] if subs else [f"corral {name}"]:
            assert full in TEXT, full


def test_every_executor_kind_is_documented() -> None:
    for kind in kinds():
        assert f"`{kind}`" in TEXT, kind


def test_every_provider_setting_is_documented() -> None:
    from corral.executors.base import load

    for kind in kinds():
        for name in load(kind).settings.model_fields:
            assert f"`providers.NAME.{name}`" in TEXT, (kind, name)


def test_generated_reference_pages_are_current(capsys: pytest.CaptureFixture[str]) -> None:
    """The reference pages are generated from the code (settings models, the
    typer app, the routes, the MCP tools); regenerate with
    `cog -r -I docs docs/reference/*.md docs/mcp.md`."""
    from cogapp import Cog

    pages = [*sorted(str(p) for p in (DOCS / "reference").glob("*.md")), str(DOCS / "mcp.md")]
    assert pages
    status = Cog().main(["cog", "--check", "--diff", "-I", str(DOCS), *pages])
    assert status == 0, (
        "stale docs: run `cog -r -I docs docs/reference/*.md docs/mcp.md`\n"
        + capsys.readouterr().out
    )


def test_every_client_method_is_documented() -> None:
    from corral.client import Client

    for name in dir(Client):
        if not name.startswith("_"):
            assert re.search(rf"`{name}[`(]", TEXT), name
