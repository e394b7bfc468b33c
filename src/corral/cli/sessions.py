"""`corral sessions show|events`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from corral.cli.common import (
    JsonOpt,
    ServerOpt,
    TokenOpt,
    client,
    console,
    dump,
    esc,
    state,
    when,
)

if TYPE_CHECKING:
    from corral.models import Event

app = typer.Typer(
    help="Inspect sessions (conversations whose turns are jobs).", no_args_is_help=True
)


@app.command()
def show(
    session_id: str, server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """Show a session and its turns."""
    with client(server, token) as c:
        data = c.session(session_id)
    if as_json:
        dump(data)
        return
    console.print(
        f"[bold]session[/] {esc(data.id)}  turns {data.turns}  "
        f"events {data.last_seq}  epoch {data.epoch}"
    )
    for job in data.jobs:
        prompt = (job.prompt or job.command or "").splitlines()[:1]
        console.print(
            f"  turn {job.turn:>3}  {state(job.state.value)}  {esc(job.id)}  "
            f"{esc((prompt[0] if prompt else '')[:60])}"
        )
    console.print(f"Add a turn: corral turn {data.id} 'TEXT' --wait", markup=False)


def _line(e: Event) -> str:
    body = e.payload.get("line") if e.type == "output" else e.payload
    return f"{e.seq:>6}  {when(e.created_at)}  {e.type:<12} {body}"


@app.command()
def events(
    session_id: str,
    since: Annotated[int, typer.Option(help="Only events after this seq.")] = 0,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream live.")] = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print a session's event log (with -f, follow it live)."""
    with client(server, token) as c:
        items = c.events(session_id, since, follow=follow)
        for e in items:
            if as_json:
                print(e.to_json(), flush=True)  # one JSON object per line
            else:
                console.print(_line(e), markup=False)
