"""`corral agents ls|show|start|stop|restart|reload|logs`."""

from __future__ import annotations

from typing import Annotated

import typer

from corral.cli.common import JsonOpt, ServerOpt, TokenOpt, client, console, dump, esc

app = typer.Typer(help="Agent daemons (long-running, supervised).", no_args_is_help=True)

STATUS_STYLE = {
    "running": "green",
    "starting": "cyan",
    "backoff": "yellow",
    "exited": "yellow",
    "fatal": "red",
    "stopped": "dim",
}


def _status(value: str) -> str:
    return f"[{STATUS_STYLE.get(value, 'white')}]{value}[/]"


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


@app.command("ls")
def ls(server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Every agent: status, pid, uptime, restarts, last exit code, runner, messages."""
    with client(server, token) as c:
        rows = c.agents()
    if as_json:
        dump(rows)
        return
    if not rows:
        console.print("no agents: add [agents.NAME] tables to corral.toml", markup=False)
        return
    from rich.table import Table

    table = Table(
        "agent", "status", "pid", "uptime", "restarts", "last exit", "runner", "msgs/24h", box=None
    )
    for r in rows:
        exit_code = r.last_exit_code
        table.add_row(
            esc(r.name),
            _status(r.status),
            str(r.pid or "-"),
            _uptime(r.uptime),
            str(r.restarts),
            "-" if exit_code is None else str(exit_code),
            esc(r.runner) if r.connected else f"[yellow]{esc(r.runner)} (not connected)[/]",
            "-" if r.messages_24h is None else str(r.messages_24h),
        )
    console.print(table)


@app.command()
def show(
    name: str, server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """One agent: status, configuration (env values masked), recent lines."""
    with client(server, token) as c:
        data = c.agent(name)
    if as_json:
        dump(data)
        return
    console.print(f"[bold]{esc(data.name)}[/] {_status(data.status)}  pid {data.pid or '-'}")
    console.print(f"command: {' '.join(data.config['command'])}", markup=False)
    host = data.host or "-"
    state = "connected" if data.connected else "[yellow]not connected[/]"
    console.print(f"runner: {esc(data.runner)} (host {esc(host)}, {state})")
    if data.pending:
        console.print("[yellow]an action waits for its runner[/]")
    if data.message:
        console.print(f"[red]{esc(data.message)}[/]")
    for line in data.logs[-20:]:
        console.print(f"{line.stream:>6} {line.line}", markup=False, highlight=False)


def _act(name: str, action: str, server: str | None, token: str | None) -> None:
    with client(server, token) as c:
        data = c.agent_action(name, action)
    console.print(f"{esc(data.name)}: {_status(data.status)}  pid {data.pid or '-'}")
    if data.pending:
        where = data.host or data.runner
        console.print(f"[yellow]recorded: runner {esc(where)} applies it when it connects[/]")


@app.command()
def start(name: str, server: ServerOpt = None, token: TokenOpt = None) -> None:
    """Start an agent."""
    _act(name, "start", server, token)


@app.command()
def stop(name: str, server: ServerOpt = None, token: TokenOpt = None) -> None:
    """Stop an agent and its whole process tree."""
    _act(name, "stop", server, token)


@app.command()
def restart(name: str, server: ServerOpt = None, token: TokenOpt = None) -> None:
    """Restart an agent; returns once the new process runs."""
    _act(name, "restart", server, token)


@app.command()
def reload(server: ServerOpt = None, token: TokenOpt = None) -> None:
    """Apply [agents.*] changes from corral.toml (the server's): add, remove, restart."""
    with client(server, token) as c:
        result = c.reload_agents()
    for key, names in (
        ("added", result.added),
        ("removed", result.removed),
        ("changed", result.changed),
    ):
        console.print(f"{key}: {', '.join(names) or '-'}", markup=False)


@app.command()
def logs(
    name: str,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
    n: Annotated[int, typer.Option("-n", min=0, max=1000, help="Lines to show first.")] = 50,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """An agent's output; -f follows it live."""
    with client(server, token) as c:
        if not follow:
            for line in c.agent_logs(name, n):
                console.print(line.line, markup=False, highlight=False)
            return
        for line in c.follow_agent_logs(name, n):
            console.print(line.line, markup=False, highlight=False)
