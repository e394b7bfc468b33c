"""The `corral` command. Errors print one line saying what to fix; `-v`
adds the traceback."""

from __future__ import annotations

import sys
import traceback
from typing import Annotated

import typer

from corral import __version__
from corral.cli import (
    admin,
    agents,
    answer,
    control,
    jobs,
    keys,
    mcp_server,
    runners,
    schedules,
    service,
    sessions,
    trackers,
    usage,
    webhooks,
    workspaces,
)
from corral.cli.common import err, esc
from corral.cli.runner import runner
from corral.cli.serve import serve
from corral.cli.submit import submit, turn
from corral.cli.ui import ui
from corral.errors import CorralError

app = typer.Typer(
    help="corral: a control plane for fleets of AI coding agents.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
_verbose = False


def _version(value: bool) -> None:
    if value:
        print(f"corral {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True)] = False,
) -> None:
    global _verbose
    _verbose = verbose


app.command()(serve)
app.command()(submit)
app.command()(turn)
app.command()(runner)
app.command()(answer.answer)
app.command()(mcp_server.mcp)
app.command()(control.route)
app.command()(control.status)
app.command()(usage.usage)
app.command()(usage.stats)
app.command()(control.pause)
app.command()(control.resume)
app.command()(admin.migrate)
app.command()(ui)
app.add_typer(jobs.app, name="jobs")
app.add_typer(sessions.app, name="sessions")
app.add_typer(keys.app, name="keys")
app.add_typer(runners.app, name="runners")
app.add_typer(workspaces.app, name="workspaces")
app.add_typer(webhooks.app, name="webhooks")
app.add_typer(trackers.app, name="trackers")
app.add_typer(agents.app, name="agents")
app.add_typer(schedules.app, name="schedules")
app.add_typer(usage.budgets_app, name="budgets")
app.add_typer(service.app, name="service")
config_app = typer.Typer(help="Configuration.", no_args_is_help=True)
config_app.command("show")(admin.config_show)
app.add_typer(config_app, name="config")


def main() -> None:
    try:
        app(prog_name="corral")
    except CorralError as exc:
        if _verbose:
            traceback.print_exc()
        err.print(f"[red]error:[/] {esc(exc.message)}", markup=True, highlight=False)
        sys.exit(1)
