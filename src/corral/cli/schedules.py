"""`corral schedules ls|show|run|enable|disable`."""

from __future__ import annotations

import typer

from corral.cli.common import JsonOpt, ServerOpt, TokenOpt, client, console, dump, esc, when

app = typer.Typer(help="Cron schedules: the schedules tables of corral.toml.", no_args_is_help=True)


@app.command("ls")
def ls(server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Every schedule: cron, enabled, next slot, last job, slots fired and skipped."""
    with client(server, token) as c:
        rows = c.schedules()
    if as_json:
        dump(rows)
        return
    if not rows:
        console.print("no schedules: add [[schedules]] tables to corral.toml")
        return
    from rich.table import Table

    table = Table("name", "cron", "enabled", "next", "last job", "fired", "skipped", box=None)
    for s in rows:
        on = ("yes" if s.enabled else "no") + (" (operator)" if s.enabled_by == "operator" else "")
        table.add_row(
            esc(s.name),
            esc(f"{s.cron} {s.timezone}"),
            on,
            when(s.next_slot),
            esc(s.last_job_id or "-"),
            str(s.fired),
            str(s.skipped),
        )
    console.print(table)


@app.command()
def show(
    name: str, server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """One schedule, with the job each slot submits."""
    with client(server, token) as c:
        s = c.schedule(name)
    if as_json:
        dump(s)
        return
    rows = [
        ("schedule", esc(s.name)),
        ("cron", esc(f"{s.cron}  ({s.timezone})")),
        ("enabled", ("yes" if s.enabled else "no") + f" (by the {s.enabled_by})"),
        ("catch up", esc(s.catch_up)),
        ("next", when(s.next_slot)),
        ("last slot", when(s.last_slot)),
        ("last job", esc(s.last_job_id or "-")),
        ("fired", str(s.fired)),
        ("skipped", str(s.skipped)),
        ("events", esc(f"corral sessions events {s.session_id}" if s.session_id else "-")),
    ]
    for key, value in rows:
        console.print(f"[bold]{key:>9}[/]  {value}")
    for key, value in s.job.items():
        console.print(f"[bold]{'job ' + key:>9}[/]  {esc(str(value))}")


@app.command()
def run(
    name: str, server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """Submit the schedule's job now, outside its slots."""
    with client(server, token) as c:
        accepted = c.run_schedule(name)
    if as_json:
        dump(accepted)
        return
    console.print(f"Submitted job [bold]{accepted.job_id}[/] of schedule {esc(name)}.")
    console.print(f"Follow it: corral jobs logs -f {accepted.job_id}", markup=False)


@app.command()
def enable(name: str, server: ServerOpt = None, token: TokenOpt = None) -> None:
    """Fire the schedule's slots from now on (wins over corral.toml)."""
    with client(server, token) as c:
        s = c.enable_schedule(name)
    console.print(f"schedule {name!r} enabled; next slot {when(s.next_slot)}", markup=False)


@app.command()
def disable(name: str, server: ServerOpt = None, token: TokenOpt = None) -> None:
    """Fire none of the schedule's slots until enabled again (wins over corral.toml)."""
    with client(server, token) as c:
        c.disable_schedule(name)
    console.print(
        f"schedule {name!r} disabled; enable it again: corral schedules enable {name}",
        markup=False,
    )
