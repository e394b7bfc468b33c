"""`corral answer JOB TEXT`: reply to a job that waits for a person."""

from __future__ import annotations

from typing import Annotated

import typer

from corral.cli.common import JsonOpt, ServerOpt, TokenOpt, client, console, dump, esc


def answer(
    job_id: Annotated[str, typer.Argument(help="The job (an id or a unique prefix).")],
    text: Annotated[str, typer.Argument(help="The answer, as the agent will read it.")],
    question: Annotated[
        str | None,
        typer.Option("--question", help="The question's id (default: the one the job shows)."),
    ] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer the question a running job asks (`corral jobs show JOB` shows it
    under "needs you"); the waiting agent goes on with TEXT."""
    with client(server, token) as c:
        answered = c.answer(job_id, text, question_id=question)
    if as_json:
        dump(answered)
        return
    console.print(
        f"Answered job {esc(answered.job_id)}: {esc(answered.question)}\n"
        f"Follow it: corral jobs logs -f {esc(answered.job_id[:12])}"
    )
