"""corral's own tools, offered by every job's gateway (server ``corral``).

Each is a call of runner protocol v1 made with the job's worker token
(``Control``: the runner's worker link), so the control plane fences them
like every other write of the worker: once the job's lease is lost, each
call fails with the server's refusal and changes nothing.

- ``submit_job``: a sub-job, recorded as the child of the calling job and
  routed, capped and budgeted like any job; ``wait`` blocks until it ends (or
  ``timeout``);
- ``get_job``, ``wait_job``, ``cancel_job``: the job's own sub-jobs only;
- ``report_progress``: a ``job.progress`` event of the job;
- ``send_message``: a message to the chat conversation the job's turn came
  from (its chat, or its user), sent in order with the turn's replies."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from corral.errors import CorralError
from corral.models import JobCreate, Question
from corral.protocol import (
    ChatSend,
    ChatSent,
    ChildJob,
    ChildSubmit,
    ChildWait,
    Progress,
    ProgressRecorded,
)

# Answers to a permission prompt that allow the tool use (any other denies it).
ALLOW = frozenset({"allow", "yes", "y", "ok", "approve"})
# One wait call of the protocol holds at most this long (protocol bound: 60 s);
# longer waits are several calls.
WAIT_STEP = 55.0


class Control(Protocol):
    """What the tools call: the job's worker link (the runner adapts its
    ``WorkerLink``, turning its refusals into ``ToolError``)."""

    async def submit_child(self, body: ChildSubmit) -> ChildJob: ...

    async def wait_child(self, job_id: str, body: ChildWait) -> ChildJob: ...

    async def cancel_child(self, job_id: str) -> ChildJob: ...

    async def progress(self, body: Progress) -> ProgressRecorded: ...

    async def send_message(self, body: ChatSend) -> ChatSent: ...

    async def ask(self, question: str, options: list[str], timeout: float | None) -> Question:
        """Ask a person and wait for the answer (or the timeout)."""
        ...


class ToolError(CorralError):
    """A tool call failed; its message goes back to the agent."""


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SubmitArgs(_Args):
    prompt: str | None = Field(None, description="What the sub-job should do.")
    messages: list[dict[str, Any]] | None = Field(
        None, description="Chat jobs: messages ({role, content}) instead of a prompt."
    )
    provider: str | None = Field(None, description="Provider to run it on (routing decides).")
    repo: str | None = Field(None, description="Git repository (absolute path or URL).")
    priority: int | None = Field(None, ge=0, le=9, description="0 is the most urgent.")
    labels: list[str] = Field(default_factory=list, description="Labels of the sub-job.")
    title: str | None = Field(None, description="A short title.")
    model: str | None = Field(None, description="Model (the provider's default otherwise).")
    mcp_tools: list[str] | None = Field(
        None, description="Narrow the sub-job's gateway tools (SERVER.TOOL, SERVER.*)."
    )
    wait: bool = Field(False, description="Wait until the sub-job ends and return its result.")
    timeout: float = Field(600.0, gt=0, le=86400, description="Seconds to wait at most.")


class ScheduleArgs(_Args):
    prompt: str | None = Field(None, description="What the job should do.")
    messages: list[dict[str, Any]] | None = Field(
        None, description="Chat jobs: messages ({role, content}) instead of a prompt."
    )
    run_at: datetime | None = Field(
        None, description="When to run it: ISO-8601 with a time zone (Z or an offset)."
    )
    delay: float | None = Field(
        None, gt=0, le=366 * 86400, description="Or: run it this many seconds from now."
    )
    provider: str | None = Field(None, description="Provider to run it on (routing decides).")
    repo: str | None = Field(None, description="Git repository (absolute path or URL).")
    priority: int | None = Field(None, ge=0, le=9, description="0 is the most urgent.")
    labels: list[str] = Field(default_factory=list, description="Labels of the job.")
    title: str | None = Field(None, description="A short title.")


class AskArgs(_Args):
    question: str = Field(min_length=1, max_length=16_384, description="What to ask a person.")
    options: list[str] = Field(
        default_factory=list, max_length=20, description="Suggested answers (any text is accepted)."
    )
    timeout: float | None = Field(
        None, gt=0, le=7 * 86400, description="Seconds to wait (default: while the job runs)."
    )


class ApproveArgs(BaseModel):
    """What Claude Code sends its --permission-prompt-tool (unknown keys kept)."""

    model_config = ConfigDict(extra="allow")

    tool_name: str = Field(description="The tool that needs permission.")
    input: dict[str, Any] = Field(default_factory=dict, description="Its input.")
    tool_use_id: str | None = None


class SendArgs(_Args):
    text: str = Field(min_length=1, max_length=65_536, description="The message.")
    to: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="The conversation's user id for a direct message; default: the "
        "conversation itself. Nobody else.",
    )


class JobArgs(_Args):
    job_id: str = Field(min_length=1, max_length=64, description="A sub-job's id.")


class WaitArgs(JobArgs):
    timeout: float = Field(600.0, ge=0, le=86400, description="Seconds to wait at most.")


class ProgressArgs(_Args):
    message: str = Field(min_length=1, max_length=4000, description="What is happening.")
    percent: float | None = Field(None, ge=0, le=100, description="How far along (0-100).")


Handler = Callable[["Builtins", Any], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    args: type[BaseModel]
    run: Handler

    def schema(self) -> dict[str, Any]:
        schema = self.args.model_json_schema()
        schema.pop("title", None)
        return schema


def _job(child: ChildJob, **extra: Any) -> dict[str, Any]:
    return {**child.model_dump(exclude={"created"} if child.created else set()), **extra}


class Builtins:
    """The tools of one job's gateway, over its worker link."""

    def __init__(self, control: Control, *, job_mcp_tools: Sequence[str] | None = None) -> None:
        self.control = control
        self.job_mcp_tools = None if job_mcp_tools is None else list(job_mcp_tools)

    async def call(self, tool: Tool, arguments: dict[str, Any]) -> dict[str, Any]:
        try:
            args = tool.args.model_validate(arguments)
        except ValidationError as exc:
            raise ToolError(_invalid(exc)) from None
        try:
            return await tool.run(self, args)
        except ToolError:
            raise
        except CorralError as exc:
            raise ToolError(f"{type(exc).__name__}: {exc}") from exc

    async def submit_job(self, args: SubmitArgs) -> dict[str, Any]:
        narrowed = args.mcp_tools if args.mcp_tools is not None else self.job_mcp_tools
        fields: dict[str, Any] = {
            "prompt": args.prompt,
            "messages": args.messages,
            "provider": args.provider,
            "repo": args.repo,
            "labels": args.labels,
            "title": args.title,
            "model": args.model,
            "mcp_tools": narrowed,
        }
        if args.priority is not None:
            fields["priority"] = args.priority
        try:
            spec = JobCreate.model_validate({k: v for k, v in fields.items() if v is not None})
        except ValidationError as exc:
            raise ToolError(_invalid(exc)) from None
        child = await self.control.submit_child(ChildSubmit(spec=spec))
        if not args.wait:
            return _job(child)
        return await self._wait(child.job_id, args.timeout)

    async def get_job(self, args: JobArgs) -> dict[str, Any]:
        return _job(await self.control.wait_child(args.job_id, ChildWait(timeout=0)))

    async def wait_job(self, args: WaitArgs) -> dict[str, Any]:
        return await self._wait(args.job_id, args.timeout)

    async def cancel_job(self, args: JobArgs) -> dict[str, Any]:
        return _job(await self.control.cancel_child(args.job_id))

    async def report_progress(self, args: ProgressArgs) -> dict[str, Any]:
        recorded = await self.control.progress(Progress(message=args.message, percent=args.percent))
        return {"recorded": True, "seq": recorded.seq}

    async def send_message(self, args: SendArgs) -> dict[str, Any]:
        sent = await self.control.send_message(ChatSend(text=args.text, to=args.to))
        return {"sent": True, "channel": sent.channel, "id": sent.id}

    async def schedule_job(self, args: ScheduleArgs) -> dict[str, Any]:
        if (args.run_at is None) == (args.delay is None):
            raise ToolError("give either run_at (a time) or delay (seconds from now)")
        run_at = args.run_at or datetime.now(UTC) + timedelta(seconds=args.delay or 0)
        fields: dict[str, Any] = {
            "prompt": args.prompt,
            "messages": args.messages,
            "provider": args.provider,
            "repo": args.repo,
            "labels": args.labels,
            "title": args.title,
            "mcp_tools": self.job_mcp_tools,
            "run_at": run_at.isoformat() if run_at.tzinfo else run_at,
        }
        if args.priority is not None:
            fields["priority"] = args.priority
        try:
            spec = JobCreate.model_validate({k: v for k, v in fields.items() if v is not None})
        except ValidationError as exc:
            raise ToolError(_invalid(exc)) from None
        child = await self.control.submit_child(ChildSubmit(spec=spec))
        return _job(child, run_at=spec.run_at.isoformat() if spec.run_at else None)

    async def ask_human(self, args: AskArgs) -> dict[str, Any]:
        asked = await self.control.ask(args.question, list(args.options), args.timeout)
        return {
            "answered": asked.state == "answered",
            "answer": asked.reply(),
            "answered_by": asked.answered_by,
        }

    async def approve(self, args: ApproveArgs) -> dict[str, Any]:
        """Claude Code's permission prompt, asked of a person: "allow" (or
        "yes") allows the tool use as it is; any other answer denies it, the
        answer its message."""
        shown = json.dumps(args.input, default=str)
        if len(shown) > 4000:
            shown = shown[:4000] + f"... [{len(shown)} chars]"
        question = f"Allow the agent to use {args.tool_name}?\n\n{shown}"
        asked = await self.control.ask(question, ["allow", "deny"], None)
        answer = (asked.answer or "").strip() if asked.state == "answered" else ""
        if answer.lower() in ALLOW:
            return {"behavior": "allow", "updatedInput": args.input}
        if not answer:
            message = f"{args.tool_name} was not allowed: {asked.reply()}"
        elif answer.lower() == "deny":
            message = f"a person denied {args.tool_name}"
        else:
            message = answer
        return {"behavior": "deny", "message": message}

    async def _wait(self, job_id: str, timeout: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            step = max(0.0, min(WAIT_STEP, deadline - loop.time()))
            child = await self.control.wait_child(job_id, ChildWait(timeout=step))
            if child.ended:
                return _job(child)
            if loop.time() >= deadline:
                return _job(child, timed_out=True)


TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (
        Tool(
            "submit_job",
            "Submit a sub-job to corral (a prompt for another agent, or chat messages). "
            "It is routed like any job. Returns its job_id and state; with wait=true, waits "
            "until it ends and returns its result.",
            SubmitArgs,
            Builtins.submit_job,
        ),
        Tool(
            "get_job",
            "The state, result or error and artifacts of one of your sub-jobs.",
            JobArgs,
            Builtins.get_job,
        ),
        Tool(
            "wait_job",
            "Wait until one of your sub-jobs ends (or timeout seconds pass); returns its "
            "state, result or error and artifacts' names.",
            WaitArgs,
            Builtins.wait_job,
        ),
        Tool(
            "cancel_job",
            "Cancel one of your sub-jobs.",
            JobArgs,
            Builtins.cancel_job,
        ),
        Tool(
            "schedule_job",
            "Schedule a job to run later: at run_at (ISO-8601 with a time zone) or after "
            "delay seconds. Returns its job_id; it is one of your sub-jobs.",
            ScheduleArgs,
            Builtins.schedule_job,
        ),
        Tool(
            "ask_human",
            "Ask a person a question and wait for the answer (the job waits; people see the "
            "question on the job and answer it with `corral answer`). With timeout, returns "
            "'no answer' when none came in time.",
            AskArgs,
            Builtins.ask_human,
        ),
        Tool(
            "send_message",
            "Message the chat conversation this job's turn came from (e.g. to say what you "
            "are doing); with `to`, its user directly. Fails for a job no chat started.",
            SendArgs,
            Builtins.send_message,
        ),
        Tool(
            "report_progress",
            "Tell the people watching this job how far along it is.",
            ProgressArgs,
            Builtins.report_progress,
        ),
    )
}

# Claude Code's --permission-prompt-tool: offered only to providers with
# permission_prompt = "human", whatever their mcp_tools say.
APPROVE = Tool(
    "approve",
    "Decides whether a tool use the agent asked for is allowed (asks a person).",
    ApproveArgs,
    Builtins.approve,
)


def _invalid(exc: ValidationError) -> str:
    problems = [
        f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in exc.errors()
    ]
    return "invalid arguments: " + "; ".join(problems)
