"""`corral usage` (spend per group), `corral stats` (jobs per time bucket) and
`corral budgets ls`."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from corral.budgets import usd
from corral.cli.common import JsonOpt, ServerOpt, TokenOpt, client, console, dump, esc, when


class Bucket(StrEnum):
    minute = "minute"
    hour = "hour"
    day = "day"


class StatsGroup(StrEnum):
    state = "state"
    provider = "provider"


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


def stats(
    start: Annotated[
        str | None, typer.Option("--from", help="ISO-8601 (default: 24 hours before --to).")
    ] = None,
    end: Annotated[str | None, typer.Option("--to", help="ISO-8601 (default: now).")] = None,
    bucket: Annotated[
        Bucket, typer.Option("--bucket", "-b", help="The width of a row.")
    ] = Bucket.hour,
    group_by: Annotated[
        StatsGroup, typer.Option("--group-by", "-g", help="A column per state or per provider.")
    ] = StatsGroup.state,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Jobs that finished in a time range, per bucket and per state or provider, with
    queue wait and run time percentiles (GET /stats; what the dashboard's charts draw)."""
    with client(server, token) as c:
        report = c.stats(start=start, end=end, bucket=bucket.value, group_by=group_by.value)
    if as_json:
        dump(report)
        return
    from datetime import UTC, datetime

    from rich.table import Table

    keys = [s.key for s in report.series]
    counts: dict[int, dict[str, int]] = {}
    cost: dict[int, float] = {}
    for series in report.series:
        for point in series.points:
            counts.setdefault(point.t, {})[series.key] = point.count
            cost[point.t] = cost.get(point.t, 0.0) + point.cost
    table = Table(bucket.value, *(esc(k) for k in keys), "jobs", "cost", box=None)
    shown = {"minute": "%Y-%m-%d %H:%M", "hour": "%Y-%m-%d %H:00", "day": "%Y-%m-%d"}
    for t in sorted(counts):
        row = counts[t]
        at = datetime.fromtimestamp(t, UTC).astimezone().strftime(shown[bucket.value])
        table.add_row(
            at,
            *(str(row.get(k, "")) for k in keys),
            str(sum(row.values())),
            f"${cost[t]:.4f}",
        )
    if counts:
        console.print(table)
    else:
        console.print("no job finished in this range")

    def pct(p: Any) -> str:  # a Percentiles
        parts = [(n, getattr(p, n)) for n in ("p50", "p90", "p99")]
        return "  ".join(f"{n} {v:.2f} s" for n, v in parts if v is not None) or "-"

    console.print(
        f"{report.jobs} jobs finished {when(report.from_)} .. {when(report.to)}\n"
        f"queue wait  {pct(report.queue_wait)}\nrun time    {pct(report.run_time)}"
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
