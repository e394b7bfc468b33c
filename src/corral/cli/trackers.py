"""`corral trackers ls|show|sync|enable|disable`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import typer

from corral.cli.common import JsonOpt, ServerOpt, TokenOpt, client, console, dump, esc

if TYPE_CHECKING:
    from corral.models import Tracker

app = typer.Typer(help="Issue trackers whose labelled issues become jobs.", no_args_is_help=True)


def _ago(at: float | None) -> str:
    return "-" if at is None else f"{max(0.0, time.time() - at):.0f}s ago"


@app.command("ls")
def ls(server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """The configured trackers: kind, switch, state, last poll, jobs taken."""
    with client(server, token) as c:
        rows = c.trackers()
    if as_json:
        dump(rows)
        return
    if not rows:
        console.print("no trackers: add a [[trackers]] table to corral.toml")
        return
    from rich.table import Table

    table = Table("tracker", "kind", "enabled", "state", "last poll", "taken", "repos", box=None)
    for t in rows:
        cells = (
            t.name,
            t.kind,
            "yes" if t.enabled else "no",
            t.state,
            _ago(t.last_poll_at),
            t.taken,
            ", ".join(t.repos) or "(none)",
        )
        table.add_row(*(esc(str(x)) for x in cells))
    console.print(table)


def _show(t: Tracker) -> None:
    console.print(
        f"[bold]{esc(t.name)}[/bold] ({t.kind}{', ' + esc(t.base_url) if t.base_url else ''})"
    )
    console.print(
        f"  enabled: {'yes' if t.enabled else 'no'}   state: {esc(t.state)}"
        + (f"   error: {esc(t.error)}" if t.error else "")
    )
    console.print(f"  repos: {esc(', '.join(t.repos) or '(none: nothing is taken)')}")
    console.print(
        f"  label: {esc(t.label)}   trigger: {esc(t.trigger)}   "
        f"webhook: {'yes' if t.webhook else 'no'}   poll every {t.poll_interval:g}s"
    )
    console.print(
        f"  last poll: {_ago(t.last_poll_at)}   polls: {t.polls}   taken: {t.taken}   "
        f"turns: {t.turns}   cancelled: {t.cancelled}   ignored: {t.ignored}"
    )
    console.print(f"  requests: {t.requests} ({t.not_modified} not modified)")
    if t.jobs:
        console.print("  jobs: " + ", ".join(f"{k} {v}" for k, v in sorted(t.jobs.items())))
    for item in t.items or []:
        pull = f"  {item.pull_url}" if item.pull_url else ""
        console.print(
            f"  {esc(item.repo)}#{item.number} {esc(item.job_state or '?')} "
            f"job {item.job_id[:12]}{esc(pull)}  {esc(item.title[:60])}"
        )


@app.command()
def show(
    name: str, server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """One tracker: its settings, its state (with the tracker's error), its issues."""
    with client(server, token) as c:
        t = c.tracker(name)
    if as_json:
        dump(t)
        return
    _show(t)


@app.command()
def sync(name: str, server: ServerOpt = None, token: TokenOpt = None) -> None:
    """Poll the tracker now."""
    with client(server, token) as c:
        t = c.tracker_action(name, "sync")
    console.print(
        f"tracker {esc(t.name)}: poll requested; "
        f"`corral trackers show {esc(t.name)}` tells how it went"
    )


@app.command()
def enable(name: str, server: ServerOpt = None, token: TokenOpt = None) -> None:
    """Take issues in from the tracker (remembered across restarts)."""
    with client(server, token) as c:
        t = c.tracker_action(name, "enable")
    repos = ", ".join(t.repos)
    hint = f"repos: {repos}" if repos else "its repos allowlist is empty: nothing will be taken"
    console.print(f"tracker {esc(t.name)} enabled ({esc(hint)})")


@app.command()
def disable(name: str, server: ServerOpt = None, token: TokenOpt = None) -> None:
    """Stop taking issues in (jobs running finish and still report)."""
    with client(server, token) as c:
        t = c.tracker_action(name, "disable")
    console.print(
        f"tracker {esc(t.name)} disabled; `corral trackers enable {esc(t.name)}` resumes it"
    )
