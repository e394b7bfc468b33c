"""`corral route`, `corral pause|resume`, `corral status`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from corral.cli.common import JsonOpt, ServerOpt, TokenOpt, client, console, dump, esc
from corral.errors import BadRequest, CorralError


def route(
    file: Annotated[str, typer.Argument(help="A queue file (Markdown + front matter), or -.")],
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show where a job would run: the provider, the rule that fired, and why
    the earlier rules did not (asks the server, whose providers count)."""
    if file == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BadRequest(f"cannot read {file}: {exc}") from exc
    from corral import queue_file

    spec = queue_file.parse(text, source_ref=file)
    with client(server, token) as c:
        try:
            decision = c.route(**spec.model_dump(exclude_none=True, exclude={"source_ref"}))
        except CorralError as exc:  # the server's refusal, as the client raises it
            if exc.code != "unroutable":
                raise
            if as_json:
                dump({"error": {"code": exc.code, "message": exc.message}})
            else:
                console.print(f"refused (422): {exc.message}", markup=False)
            raise typer.Exit(1) from None
    if as_json:
        dump(decision)
        return
    model = f" (model {esc(decision.model)})" if decision.model else ""
    console.print(
        f"[bold]{esc(decision.provider)}[/]{model} by rule {decision.rule}: {esc(decision.reason)}"
    )
    for line in decision.skipped:
        console.print(f"  not rule {line}", markup=False)


def pause(server: ServerOpt = None, token: TokenOpt = None) -> None:
    """Kill switch on: no new leases; running jobs finish, submissions queue."""
    with client(server, token) as c:
        c.pause()
    console.print("Paused: no job starts until `corral resume`.")


def resume(
    server: ServerOpt = None,
    token: TokenOpt = None,
    provider: Annotated[
        str | None,
        typer.Option(help="Lift this provider's quota pause instead of the kill switch."),
    ] = None,
) -> None:
    """Kill switch off: queued jobs start again (or, with --provider, lift a quota pause)."""
    with client(server, token) as c:
        if provider is not None:
            was = c.resume_provider(provider)
            console.print(
                f"Provider {provider}: " + ("pause lifted." if was else "was not paused."),
                markup=False,
            )
            return
        c.resume()
    console.print("Resumed: queued jobs start again.")


def status(server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Server status: kill switch, job counts, runners."""
    with client(server, token) as c:
        data = c.status()
    if as_json:
        dump(data)
        return
    switch = "[red]PAUSED[/] (corral resume)" if data.paused else "[green]running[/]"
    console.print(f"corral {data.version} on {esc(data.database)}: {switch}")
    counts = ", ".join(f"{n} {s}" for s, n in sorted(data.jobs.items())) or "no jobs"
    console.print(f"jobs: {counts}", markup=False)
    for p in data.providers_paused:
        fallback = f"; jobs go to {p.fallback}" if p.fallback else ""
        until = p.until.isoformat()
        console.print(
            f"provider {p.provider} PAUSED until {until} ({p.reason}){fallback}", markup=False
        )
    embedded = data.embedded_providers
    if embedded is not None:
        served = ", ".join(embedded) if embedded else "none (no embedded runner)"
        console.print(f"embedded runner serves: {served}", markup=False)
    for r in data.runners:
        console.print(
            f"runner {r.name}: {r.slots} slots, providers {', '.join(r.providers)}, "
            f"sandbox {r.sandbox or 'unknown'}",
            markup=False,
        )
        if r.sandbox == "none":
            console.print(
                f"[bold red]runner {esc(r.name)}: jobs are NOT sandboxed[/] "
                "(install bubblewrap on its host)"
            )
