"""Options and output helpers shared by the CLI's command groups.

Every `corral` command imports the CLI modules, so they import only typer
and the standard library at start; the client, settings, models and rich
load when a command uses them (`corral --version` stays fast)."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from corral.client import Client
    from corral.config import Settings
    from corral.executors.sandbox import Sandbox


class _LazyConsole:
    """A rich Console made on first use."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return getattr(self._console, name)


console = cast("Console", _LazyConsole(highlight=False, soft_wrap=True))
err = cast("Console", _LazyConsole(stderr=True, highlight=False, soft_wrap=True))

ServerOpt = Annotated[
    str | None,
    typer.Option("--server", envvar="CORRAL_URL", help="corral URL (default: the local server)."),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="CORRAL_TOKEN",
        show_default=False,
        help="API key (default: the local admin key file).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="corral.toml to read (default: $CORRAL_CONFIG, ./corral.toml, "
        "~/.config/corral/corral.toml).",
    ),
]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", envvar="CORRAL_DATA_DIR", help="Data directory.")
]


def settings(config: Path | None = None, data_dir: Path | None = None) -> Settings:
    from corral.config import load_settings

    return load_settings(config, data_dir=data_dir)


def say_sandbox(sandbox: Sandbox) -> None:
    """Where a runner's jobs run: one line, loud when they are not sandboxed."""
    from corral.cli import logs
    from corral.executors.sandbox import warn_unsandboxed

    warning = warn_unsandboxed(sandbox)
    if warning is not None:
        logs.banner(
            f"WARNING: {warning}", warning=True, markup=f"[bold red]WARNING: {esc(warning)}[/]"
        )
    else:
        logs.banner(f"sandbox: {sandbox.describe()}")


def client(server: str | None, token: str | None) -> Client:
    from corral.client import Client

    return Client(server, token)


def dump(data: Any) -> None:
    """Print ``data`` as JSON on stdout."""
    from pydantic import BaseModel

    from corral.models import Event

    def plain(item: Any) -> Any:
        if isinstance(item, BaseModel):
            return item.model_dump(mode="json", by_alias=True)  # as the HTTP API says it
        if isinstance(item, Event):
            return item.to_dict()
        return item

    data = [plain(d) for d in data] if isinstance(data, list) else plain(data)
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def esc(value: object) -> str:
    """``value`` as text that rich prints as is: user data (an error such as
    ``[agent] ...``, a title, a path) is never read as markup."""
    from rich.markup import escape

    return escape(str(value))


def when(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


STATE_STYLE = {
    "queued": "cyan",
    "assigned": "blue",
    "running": "yellow",
    "done": "green",
    "failed": "red",
    "cancelled": "magenta",
}


def state(value: str) -> str:
    return f"[{STATE_STYLE.get(value, 'white')}]{value}[/]"
