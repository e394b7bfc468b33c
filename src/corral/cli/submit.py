"""`corral submit` and `corral turn`: add work, optionally follow it live."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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
)
from corral.cli.common import when as stamp
from corral.errors import BadRequest
from corral.jobs import JobState

if TYPE_CHECKING:
    from corral.cli.waiting import Waiting
    from corral.client import Client
    from corral.models import Event

WaitOpt = Annotated[bool, typer.Option("--wait", "-w", help="Follow the output until it ends.")]
ShellOpt = Annotated[
    bool,
    typer.Option(
        "--shell",
        "--command",
        help="TEXT is a shell command (run by the shell provider); without this it is a "
        "prompt for an agent, and never runs in a shell.",
    ),
]


_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_RELATIVE = re.compile(r"\+(\d{1,9})([smhd])")
AT_HELP = (
    "Run no earlier than TIME: ISO-8601 with a time zone (2030-01-01T09:00Z, "
    "2030-01-01T10:00+01:00) or from now: +90s, +10m, +2h, +1d."
)


def when(text: str, *, now: datetime | None = None) -> datetime:
    """The instant ``--at TEXT`` means, in UTC: ISO-8601 with a time zone, or
    ``+N`` seconds/minutes/hours/days from ``now``. A time without a zone is
    refused (the server may not share this machine's zone)."""
    text = text.strip()
    relative = _RELATIVE.fullmatch(text)
    if relative:
        amount, unit = relative.groups()
        try:
            return (now or datetime.now(UTC)) + timedelta(**{_UNITS[unit]: int(amount)})
        except OverflowError as exc:
            raise BadRequest(f"--at {text}: too far in the future") from exc
    try:
        at = datetime.fromisoformat(text)
    except ValueError as exc:
        raise BadRequest(
            f"--at {text!r} is not a time: give ISO-8601 with a time zone "
            "(2030-01-01T09:00Z) or a delay from now (+90s, +10m, +2h, +1d)"
        ) from exc
    if at.tzinfo is None:
        raise BadRequest(
            f"--at {text!r} has no time zone: add Z (UTC) or an offset, "
            f"e.g. {text}Z or {text}+01:00"
        )
    return at.astimezone(UTC)


def _work(text: str, shell: bool) -> dict[str, str]:
    return {"command": text} if shell else {"prompt": text}


def _text(text: str | None, file: Path | None) -> str:
    if file is not None:
        try:
            return file.read_text()
        except OSError as exc:
            raise BadRequest(f"cannot read {file}: {exc.strerror}") from exc
    if text == "-" or (text is None and not sys.stdin.isatty()):
        return sys.stdin.read()
    if text is None:
        raise BadRequest("nothing to run: give TEXT, --file FILE, or pipe it on stdin")
    return text


def follow(
    c: Client, job_id: str, *, as_json: bool, connect: Callable[[], Client] | None = None
) -> None:
    """Print a job's output live (shell lines, an agent's messages and tool
    calls, a chat reply as it streams), then its outcome; exit 1 unless done.
    With ``connect`` (a second client), while the job is queued, why it waits."""
    from corral.cli.waiting import Waiting

    waiting = Waiting(connect, job_id) if connect is not None and not as_json else None
    try:
        printed = _print_events(c, job_id, as_json=as_json, waiting=waiting)
    finally:
        if waiting is not None:
            waiting.close()
    job = c.get(job_id)
    if as_json:
        dump(job)
    else:
        if not printed and job.result:
            # Nothing streamed (e.g. a delegated job): the result itself.
            sys.stdout.write(job.result.rstrip("\n") + "\n")
            sys.stdout.flush()
        line = f"{state(job.state.value)}  job {job.id}  attempt {job.attempt}"
        if job.error:
            line += f"  [red]{esc(job.error)}[/]"
        err.print(line)
    if job.state is not JobState.DONE:
        raise typer.Exit(1)


# Events whose text follow() prints.
_PRINTED = frozenset({"chat.delta", "output", "agent.message", "agent.tool_call"})


def tool_line(event: Event) -> str | None:
    """One line for an event of the job's MCP gateway (None: another event)."""
    p = event.payload
    name = f"{p.get('server')}.{p.get('tool')}"
    if event.type == "tool.call":
        return f"tool {name} {json.dumps(p.get('arguments'), default=str)[:300]}"
    if event.type == "tool.result":
        took = f"{p.get('duration_ms')} ms"
        if p.get("is_error"):
            return f"tool {name} failed after {took}: {str(p.get('error', ''))[:300]}"
        return f"tool {name} ok after {took}"
    if event.type == "job.progress":
        percent = p.get("percent")
        done = f"{percent:g}% " if isinstance(percent, int | float) else ""
        return f"progress {done}{p.get('message', '')}"
    return None


def _started(event: Event) -> bool:
    return event.type == "job.state" and event.payload.get("to") not in (None, "queued")


def _print_events(c: Client, job_id: str, *, as_json: bool, waiting: Waiting | None) -> bool:
    """The job's events as they come, until it ends; whether any output was printed."""
    printed = False
    streaming = False  # in the middle of a streamed chat reply
    for event in c.job_events(job_id):
        if as_json:
            continue
        requeued = event.type == "job.state" and event.payload.get("to") == "queued"
        if waiting is not None and (event.type in _PRINTED or _started(event)):
            waiting.hide()  # the job runs: its output owns the screen
        if event.type == "chat.delta":
            sys.stdout.write(str(event.payload.get("content", "")))
            sys.stdout.flush()
            printed = streaming = True
            continue
        if streaming:
            sys.stdout.write("\n")
            streaming = False
        if event.type == "output":
            line = str(event.payload.get("line", ""))
            stream = sys.stderr if event.payload.get("stream") == "stderr" else sys.stdout
            stream.write(line + "\n")
            stream.flush()
            printed = True
        elif event.type == "agent.message":
            sys.stdout.write(str(event.payload.get("text", "")) + "\n")
            sys.stdout.flush()
            printed = True
        elif event.type == "agent.tool_call":
            err.print(f"[dim]-> {esc(event.payload.get('name'))}[/]", highlight=False)
        elif (note := tool_line(event)) is not None:
            err.print(f"[dim]{esc(note)}[/]", highlight=False)
        elif requeued and event.payload.get("from") is not None:
            if waiting is not None:
                waiting.hide()
            err.print(
                f"[dim]attempt {event.payload.get('attempt')} queued "
                f"({esc(event.payload.get('error', 'retry'))})[/]"
            )
            if waiting is not None:
                waiting.show()
    if streaming:
        sys.stdout.write("\n")
    return printed


def _submit(
    c: Client,
    fields: dict[str, Any],
    wait: bool,
    as_json: bool,
    session: str | None,
    connect: Callable[[], Client] | None = None,
) -> None:
    body = {k: v for k, v in fields.items() if v not in (None, [], ())}
    accepted = c.turn(session, **body) if session else c.submit(**body)
    job_id = accepted.job_id
    if wait:
        if not as_json:
            err.print(f"[dim]job {job_id} (session {accepted.session_id})[/]")
        follow(c, job_id, as_json=as_json, connect=connect)
        return
    if as_json:
        dump(accepted)
        return
    verb = "Submitted" if accepted.created else "Already submitted (same idempotency key):"
    console.print(f"{verb} job [bold]{job_id}[/] in session {esc(accepted.session_id)}.")
    if accepted.created and fields.get("run_at") is not None:
        console.print(f"It runs at {stamp(fields['run_at'])}.", markup=False)
    console.print(f"Follow it: corral jobs logs -f {job_id}", markup=False)


def submit(
    text: Annotated[
        str | None, typer.Argument(help="The prompt (with --shell: the command; '-': stdin).")
    ] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Read it from a file.")] = None,
    shell: ShellOpt = False,
    wait: WaitOpt = False,
    provider: Annotated[
        str | None, typer.Option(help="Preferred provider (routing decides; see corral route).")
    ] = None,
    session: Annotated[str | None, typer.Option(help="Add as a turn of this session.")] = None,
    title: Annotated[str | None, typer.Option()] = None,
    priority: Annotated[int, typer.Option(min=0, max=9, help="0 is the most urgent.")] = 2,
    timeout: Annotated[float | None, typer.Option(help="Seconds.")] = None,
    max_attempts: Annotated[int | None, typer.Option(min=1)] = None,
    max_cost: Annotated[
        float | None, typer.Option(help="USD the run may spend (failure class budget past it).")
    ] = None,
    label: Annotated[list[str] | None, typer.Option(help="Repeatable.")] = None,
    idempotency_key: Annotated[str | None, typer.Option()] = None,
    at: Annotated[str | None, typer.Option("--at", metavar="TIME", help=AT_HELP)] = None,
    repo: Annotated[
        str | None,
        typer.Option(help="Git repository (path or URL): run in a worktree on corral/<job-id>."),
    ] = None,
    base: Annotated[
        str | None, typer.Option(help="Branch, tag or commit to start from (default: HEAD).")
    ] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Submit a job: a prompt for an agent (routing picks the provider; see corral
    route), or with --shell a shell command; with --wait, print its output live."""
    from corral.models import is_repo_ref

    if repo is not None and not is_repo_ref(repo):
        repo = str(Path(repo).expanduser().resolve())
    fields = {
        **_work(_text(text, file), shell),
        "provider": provider,
        "repo": repo,
        "base": base,
        "title": title,
        "priority": priority,
        "timeout": timeout,
        "max_attempts": max_attempts,
        "max_cost": max_cost,
        "labels": label or [],
        "idempotency_key": idempotency_key,
        "run_at": when(at) if at is not None else None,
        "source": "cli",
    }
    with client(server, token) as c:
        _submit(c, fields, wait, as_json, session, lambda: client(server, token))


def turn(
    session: Annotated[str, typer.Argument(help="Session id.")],
    text: Annotated[str | None, typer.Argument(help="The follow-up ('-' for stdin).")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f")] = None,
    shell: ShellOpt = False,
    wait: WaitOpt = False,
    provider: Annotated[
        str | None, typer.Option(help="Preferred provider (default: the session's).")
    ] = None,
    timeout: Annotated[float | None, typer.Option()] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a follow-up turn to a session (on the session's provider unless
    --provider names another; --shell: TEXT is a shell command)."""
    fields = {
        **_work(_text(text, file), shell),
        "provider": provider,
        "timeout": timeout,
        "source": "cli",
    }
    with client(server, token) as c:
        _submit(c, fields, wait, as_json, session, lambda: client(server, token))
