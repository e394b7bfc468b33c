"""`corral usage` (spend per group) and `corral budgets ls`."""

from __future__ import annotations

from typing import Annotated

import typer

from corral.budgets import usd
from corral.cli.common import JsonOpt, ServerOpt, TokenOpt, client, console, dump, esc, when

budgets_app = typer.Typer(
    help="Budgets: the [[budgets]] tables of corral.toml.", no_args_is_help=True
)


def usage(
    start: Annotated[
        str | None, typer.Option("--from", help="ISO-8601 (default: 30 days before --to).")
    ] = None,
    end: Annotated[str | None, typer.Option("--to", help="ISO-8601 (default: now).")] = None,
    group_by: Annotated[
        str,
        typer.Option(
            "--group-by", "-g", help="Comma-separated: provider, model, label, source, day."
        ),
    ] = "provider",
    provider: Annotated[str | None, typer.Option(help="Only this provider's jobs.")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model's jobs.")] = None,
    label: Annotated[str | None, typer.Option(help="Only jobs with this label.")] = None,
    source: Annotated[str | None, typer.Option(help="Only jobs from this source.")] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """What the jobs that ended in a time range cost: USD, tokens, jobs and run time per
    group (GET /usage)."""
    groups = [g.strip() for g in group_by.split(",") if g.strip()]
    with client(server, token) as c:
        report = c.usage(
            start=start,
            end=end,
            group_by=groups,
            provider=provider,
            model=model,
            label=label,
            source=source,
        )
    if as_json:
        dump(report)
        return
    from rich.table import Table

    table = Table(
        *groups, "jobs", "cost", "unpriced", "in tokens", "out tokens", "run time", box=None
    )
    for row in [*report.rows, report.total]:
        keys = [esc(row.key.get(g) or "-") for g in groups] if row.key else []
        if row is report.total:
            keys = ["[bold]total[/]"] + [""] * (len(groups) - 1) if groups else []
        table.add_row(
            *keys,
            str(row.jobs),
            f"${row.cost:.4f}",
            str(row.unpriced) if row.unpriced else "-",
            f"{row.input_tokens:,}",
            f"{row.output_tokens:,}",
            f"{row.run_time:,.0f} s",
        )
    console.print(table)
    console.print(
        f"jobs ended {when(report.from_)} .. {when(report.to)}; "
        "unpriced: no cost reported and no price known (corral jobs show ID)"
    )


@budgets_app.command("ls")
def budgets_ls(server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Every budget: spend against its limit in the current period, and whether it holds
    its scope."""
    with client(server, token) as c:
        rows = c.budgets()
    if as_json:
        dump(rows)
        return
    if not rows:
        console.print("no budgets: add [[budgets]] tables to corral.toml (see docs/cost.md)")
        return
    from rich.table import Table

    table = Table("name", "scope", "spent / limit", "%", "period", "holds", box=None)
    for b in rows:
        pct = f"{b.percent:g}" if b.percent is not None else "-"
        color = "red" if (b.percent or 0) >= 100 else "yellow" if (b.percent or 0) >= 80 else ""
        holds = "paused" if b.paused_until else ("warns" if b.action == "warn" else "-")
        table.add_row(
            esc(b.name),
            esc(b.scope),
            f"{usd(b.spent)} / {usd(b.limit)}",
            f"[{color}]{pct}[/]" if color else pct,
            esc(f"{b.period}, {b.timezone}"),
            holds,
        )
    console.print(table)
    for b in rows:
        if b.paused_until:
            console.print(
                f"{esc(b.name)}: paused until {when(b.paused_until)} (the period's end); "
                "its scope takes no new jobs until then"
            )
