"""`corral webhooks ls|redeliver|secret`."""

from __future__ import annotations

from typing import Annotated

import typer

from corral.cli.common import JsonOpt, ServerOpt, TokenOpt, client, console, dump, esc

app = typer.Typer(help="Webhook deliveries.", no_args_is_help=True)


@app.command("ls")
def ls(
    job: Annotated[str | None, typer.Option(help="Only this job's deliveries.")] = None,
    state: Annotated[str | None, typer.Option(help="pending, delivered or failed.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Recent deliveries, newest first: where, what, state, attempts, last error."""
    with client(server, token) as c:
        rows = c.deliveries(job) if job else c.all_deliveries(state=state, limit=limit)
    if job and state:
        rows = [r for r in rows if r.state == state]
    if as_json:
        dump(rows)
        return
    if not rows:
        console.print("no deliveries")
        return
    from rich.table import Table

    table = Table("delivery", "job", "event", "state", "tries", "last", "url", box=None)
    for r in rows:
        last = str(r.last_status or r.last_error or "-")[:40]
        body_state = r.body.get("state", "")
        event = r.event + (f" {body_state}" if r.event == "job.state" else "")
        cells = (r.id, r.job_id[:12], event, r.state, r.attempts, last, r.url)
        table.add_row(*(esc(c) for c in cells))
    console.print(table)


@app.command()
def redeliver(delivery_id: str, server: ServerOpt = None, token: TokenOpt = None) -> None:
    """Send a delivery again (same delivery id: receivers may drop it as a duplicate)."""
    with client(server, token) as c:
        row = c.redeliver(delivery_id)
    console.print(f"delivery {row.id} to {row.url} queued again", markup=False)


@app.command()
def secret(server: ServerOpt = None, token: TokenOpt = None) -> None:
    """Print the server's default webhook secret (admin key)."""
    with client(server, token) as c:
        print(c.webhook_secret())
