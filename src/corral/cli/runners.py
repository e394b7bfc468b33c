"""`corral runners ls|forget`."""

from __future__ import annotations

import typer

from corral.cli.common import JsonOpt, ServerOpt, TokenOpt, client, console, dump, esc, when

app = typer.Typer(help="Registered runners and their names.", no_args_is_help=True)


@app.command("ls")
def ls(server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Active runners: name, providers, slots, key, last seen."""
    with client(server, token) as c:
        rows = c.runners()
    if as_json:
        dump(rows)
        return
    if not rows:
        console.print("no active runners")
        return
    from rich.table import Table

    table = Table("name", "providers", "slots", "key", "host", "last seen", box=None)
    for r in rows:
        table.add_row(
            esc(r.name),
            esc(",".join(r.providers)),
            str(r.slots),
            esc(r.key_id),
            esc(r.hostname or "-"),
            when(r.last_seen_at),
        )
    console.print(table)


@app.command()
def forget(name: str, server: ServerOpt = None, token: TokenOpt = None) -> None:
    """Release a runner name from the key that first registered it (admin key):
    the next runner to register under it, with any runner key, owns it."""
    with client(server, token) as c:
        c.forget_runner(name)
    console.print(
        f"runner name {name!r} released: the next key to register it owns it", markup=False
    )
