"""`corral jobs ls|show|artifact|wait|cancel|retry|logs`."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from corral.cli.common import (
    JsonOpt,
    ServerOpt,
    TokenOpt,
    client,
    console,
    dump,
    err,
    esc,
    state,
    when,
)
from corral.cli.submit import follow, tool_line
from corral.errors import ClientError
from corral.jobs import JobState

if TYPE_CHECKING:
    from corral.models import Job

app = typer.Typer(help="Inspect and control jobs.", no_args_is_help=True)

# What a failed run's class means for the job (``failure``).
FAILURE_MEANING = {
    "agent": "the agent reported an error; it costs an attempt",
    "budget": "it passed its max_cost and was stopped",
    "infra": "the infrastructure failed (runner lost, hang guard); not the agent's fault",
    "quota": "the provider's quota ran out; the provider is paused until it resets",
    "input": "the job cannot run as given; it is not retried",
}


@app.command("ls")
def ls(
    state_: Annotated[list[str] | None, typer.Option("--state", help="Repeatable.")] = None,
    session: Annotated[str | None, typer.Option(help="Only this session's jobs.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List jobs, newest first."""
    with client(server, token) as c:
        jobs = c.list(state=state_, session_id=session, limit=limit)
    if as_json:
        dump(jobs)
        return
    if not jobs:
        console.print("No jobs. Submit one: corral submit 'echo hello' --wait", markup=False)
        return
    from rich.table import Table

    # The key columns keep their full width; the title or prompt gets what is
    # left of the line (80 columns when piped) and is cut there.
    header = ("ID", "STATE", "PROVIDER", "ATTEMPT", "CREATED")
    rows = [
        (j.id[:SHORT_ID], j.state.value, j.provider, f"{j.attempt}/{j.max_attempts}", _created(j))
        for j in jobs
    ]
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    room = max(console.width - sum(widths) - 2 * len(widths), 12)
    table = Table(box=None, pad_edge=False)
    for name, width in zip(header, widths, strict=True):
        table.add_column(name, no_wrap=True, min_width=width)
    table.add_column("TITLE / PROMPT", no_wrap=True, overflow="ellipsis", max_width=room)
    for j, row in zip(jobs, rows, strict=True):
        text = (j.title or j.prompt or j.command or "").strip().splitlines()[0:1]
        title = text[0] if text else ""
        if len(title) > room:
            title = title[: room - 1] + "…"
        cells = [esc(cell) for cell in row]
        cells[1] = state(row[1])
        table.add_row(*cells, esc(title))
    console.print(table)


# Ids in tables: as many leading characters as identify a job in practice
# (every command takes a unique prefix of 4 or more).
SHORT_ID = 12


def _created(job: Job) -> str:
    return job.created_at.astimezone().strftime("%m-%d %H:%M:%S")


@app.command()
def show(
    job_id: str, server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """Show one job: state, attempts, timings, result or error."""
    with client(server, token) as c:
        job = c.get(job_id)
        artifacts = c.artifacts(job_id)
        events = [] if as_json else c.job_event_list(job.id)
    if as_json:
        dump(job)
        return
    progress = [e.payload for e in events if e.type == "job.progress"]
    rows = [
        ("job", esc(job.id)),
        *([("title", esc(job.title))] if job.title else []),
        ("state", state(job.state.value)),
        ("session", esc(job.session_id)),
        ("turn", str(job.turn)),
        ("provider", esc(job.provider + (f" (model {job.model})" if job.model else ""))),
        ("attempt", f"{job.attempt} of {job.max_attempts}"),
        ("priority", str(job.priority)),
        ("source", esc(job.source + (f" ({job.source_ref})" if job.source_ref else ""))),
        ("created", when(job.created_at)),
        *([("run at", when(job.run_at))] if job.run_at else []),
        ("assigned", when(job.assigned_at)),
        ("started", when(job.started_at)),
        ("finished", when(job.finished_at)),
    ]
    if job.waiting:
        rows.append(("waiting", esc(job.waiting)))
    if job.waiting_for is not None:
        ask = job.waiting_for
        rows.append(("needs you", f"[bold yellow]{esc(ask.question)}[/]"))
        if ask.options:
            rows.append(("options", esc(" | ".join(ask.options))))
        rows.append(("answer", esc(f"corral answer {job.id[:SHORT_ID]} 'TEXT'")))
    if job.parent_job_id:
        rows.append(("parent", esc(f"job {job.parent_job_id} (a sub-job it submitted)")))
    if progress:
        last = progress[-1]
        percent = last.get("percent")
        done = f"{percent:g}%  " if isinstance(percent, int | float) else ""
        rows.append(("progress", esc(f"{done}{last.get('message', '')}")))
    if job.route_rule is not None:
        rows.append(("routed", esc(f"rule {job.route_rule}: {job.route_reason}")))
    if job.repo:
        rows.append(("repo", esc(job.repo + (f" at {job.base}" if job.base else ""))))
    if job.cost is not None:
        rows.append(("cost", f"${job.cost:.4f} ({job.cost_source or 'reported'})"))
    elif job.cost_source == "unknown":
        rows.append(("cost", "unknown (no price for this model)"))
    if job.max_cost is not None:
        rows.append(("max cost", f"${job.max_cost:.4f}"))
    if job.usage:
        tokens = ", ".join(f"{k} {v}" for k, v in job.usage.items() if isinstance(v, int))
        rows.append(("usage", esc(tokens or "-")))
    if job.infra_retries:
        rows.append(("re-runs", f"{job.infra_retries} after infrastructure failures"))
    if job.runner_id:
        rows.append(("runner", esc(job.runner_id)))
    if job.recovered:
        rows.append(
            (
                "outcome",
                esc(
                    f"from the journal of runner {job.recovered.get('from_runner')}: its process "
                    f"ended at {job.recovered.get('finished_at')}, the report was lost with the "
                    "runner, the job was not run again"
                ),
            )
        )
    if job.exit_code is not None:
        rows.append(("exit code", str(job.exit_code)))
    if job.error:
        why = f" ({esc(job.reason)})" if job.reason else ""
        label = "error" if job.state is JobState.FAILED else "last error"
        rows.append((label, f"[red]{esc(job.error)}[/]{why}"))
    if job.failure:
        rows.append(("failure", f"{esc(job.failure)}: {FAILURE_MEANING.get(job.failure, '')}"))
    if job.state is JobState.QUEUED and job.failure in ("infra", "quota"):
        rows.append(("note", "not the agent's fault: it runs again as the same attempt"))
    for a in artifacts:
        rows.append(("artifact", esc(f"{a.name}  {a.size} bytes  ({a.media_type})")))
    for key, value in rows:
        console.print(f"[bold]{key:>10}[/]  {value}")
    if job.result:
        console.print("[bold]    result[/]")
        console.print(job.result, markup=False, highlight=False)


@app.command()
def artifact(
    job_id: str,
    name: str,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file (default: stdout).")
    ] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Print (or save) one artifact of a job, e.g. diff.patch."""
    with client(server, token) as c:
        data = c.artifact(job_id, name)
    if output is not None:
        output.write_bytes(data)
        err.print(f"wrote {len(data)} bytes to {output}", markup=False)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()


@app.command()
def wait(
    job_id: str,
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Wait until a job ends; exit 1 unless it is done."""
    with client(server, token) as c:
        job = c.wait(c.get(job_id).id, timeout=timeout)  # the whole id of a prefix
    if as_json:
        dump(job)
    else:
        error = f"  {job.error}" if job.error else ""
        console.print(f"{state(job.state.value)}  job {job.id}{esc(error)}")
    if job.state is not JobState.DONE:
        raise typer.Exit(1)


@app.command()
def cancel(
    job_id: str, server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """Cancel a job; a running one has its whole process tree stopped."""
    with client(server, token) as c:
        job = c.cancel(job_id)
    if as_json:
        dump(job)
    else:
        console.print(f"Cancelled job {job.id}. Retry it: corral jobs retry {job.id}", markup=False)


@app.command()
def retry(
    job_id: str, server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """Run a failed or cancelled job once more."""
    with client(server, token) as c:
        job = c.retry(job_id)
    if as_json:
        dump(job)
    else:
        console.print(
            f"Job {job.id} queued again (attempt {job.attempt}). "
            f"Follow it: corral jobs logs -f {job.id}"
        )


@app.command()
def logs(
    job_id: str,
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="Keep following.")] = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print a job's output (and with -f, follow it until the job ends)."""
    with client(server, token) as c:
        if follow_:
            job_id = c.get(job_id).id  # the stream ends on the whole id's last state
        if follow_ and not as_json:
            with contextlib.suppress(typer.Exit):
                follow(c, job_id, as_json=False, connect=lambda: client(server, token))
            return
        if follow_:
            for event in c.job_events(job_id):
                sys.stdout.write(event.to_json() + "\n")
                sys.stdout.flush()
            return
        events = c.job_event_list(job_id)
    if as_json:
        dump(events)
        return
    for event in events:
        if event.type == "output":
            stream = sys.stderr if event.payload.get("stream") == "stderr" else sys.stdout
            stream.write(str(event.payload.get("line", "")) + "\n")
        elif (line := tool_line(event)) is not None:
            err.print(f"[dim]{esc(line)}[/]", highlight=False)
    if not events:
        raise ClientError(f"job {job_id} has no events")
