"""`corral workspaces ls|gc`: the workspaces this host's runners made."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Annotated

import typer

from corral.cli.common import (
    ConfigOpt,
    DataDirOpt,
    JsonOpt,
    ServerOpt,
    TokenOpt,
    client,
    console,
    dump,
    err,
    esc,
    settings,
)
from corral.errors import BadRequest, NotFound

if TYPE_CHECKING:
    from corral.runner.workspace import Workspace

app = typer.Typer(
    help="Workspaces (git worktrees and directories) of this host.", no_args_is_help=True
)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """'90', '90s', '30m', '12h', '7d', '2w' -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if match is None:
        raise BadRequest(f"cannot read age {text!r}: use e.g. 90s, 30m, 12h, 7d")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _row(ws: Workspace, now: float) -> dict[str, object]:
    return {
        "session_id": ws.session_id,
        "kind": ws.kind,
        "path": str(ws.path),
        "repo": ws.repo,
        "branch": ws.branch,
        "base": ws.base,
        "idle_seconds": round(now - ws.used_at),
    }


@app.command("ls")
def ls(config: ConfigOpt = None, data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """List the workspaces under the data dir."""
    from corral.runner.workspace import Workspaces

    spaces = Workspaces(settings(config, data_dir).data_dir)
    now = time.time()
    rows = [_row(ws, now) for ws in spaces.all()]
    if as_json:
        dump(rows)
        return
    if not rows:
        console.print("no workspaces")
        return
    from rich.table import Table

    table = Table("session", "kind", "idle", "branch", "path", box=None, pad_edge=False)
    for r in rows:
        table.add_row(
            esc(r["session_id"]),
            esc(r["kind"]),
            _age(float(str(r["idle_seconds"]))),
            esc(r["branch"] or "-"),
            esc(r["path"]),
        )
    console.print(table)


@app.command()
def gc(
    older_than: Annotated[
        str | None,
        typer.Option(help="Idle age, e.g. 12h or 7d (default: the workspace_gc_age setting)."),
    ] = None,
    branches: Annotated[
        bool, typer.Option(help="Also delete the corral/<job-id> branches (their commits go).")
    ] = False,
    dry_run: Annotated[bool, typer.Option(help="Only say what would be removed.")] = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Remove workspaces of finished sessions idle longer than --older-than.

    A session with a queued or running turn is kept; only what corral made is
    removed (never the repository's own checkout, never a branch it did not make)."""
    from corral.jobs import TERMINAL
    from corral.runner.workspace import WorkspaceError, Workspaces

    s = settings(config, data_dir)
    limit = parse_age(older_than) if older_than is not None else s.workspace_gc_age
    spaces = Workspaces(s.data_dir)
    now = time.time()
    removed = kept = 0
    with client(server, token) as c:
        for ws in spaces.all():
            if now - ws.used_at < limit:
                kept += 1
                continue
            try:
                session = c.session(ws.session_id)
                active = [j for j in session.jobs if j.state not in TERMINAL]
            except NotFound:
                active = []  # the server no longer knows it
            if active:
                kept += 1
                continue
            what = f"{ws.kind} {ws.path}" + (f" (branch {ws.branch})" if ws.branch else "")
            if dry_run:
                console.print(f"would remove {what}", markup=False)
                removed += 1
                continue
            try:
                spaces.remove(ws, delete_branch=branches)
            except (WorkspaceError, OSError) as exc:
                err.print(f"could not remove {ws.path}: {exc}", markup=False)
                continue
            console.print(f"removed {what}", markup=False)
            removed += 1
    verb = "would remove" if dry_run else "removed"
    console.print(f"{verb} {removed}, kept {kept}")
