"""A queue file: Markdown whose YAML front matter holds the job's fields and
whose body is the prompt. Pure: text in, a JobCreate (or a precise error) out.

    ---
    title: Fix the flaky test
    priority: 1
    preferred_ai: claude
    run_at: 2030-01-01T09:00:00Z
    ---
    The test in tests/test_api.py fails one run in ten. Find out why.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from corral.errors import InvalidInput
from corral.models import Job, JobCreate, is_repo_ref

# Front-matter keys and the JobCreate field each fills.
KEYS: dict[str, str] = {
    "title": "title",
    "priority": "priority",
    "labels": "labels",
    "timeout": "timeout",
    "max_attempts": "max_attempts",
    "preferred_ai": "preferred_ai",
    "provider": "preferred_ai",
    "executor": "preferred_ai",
    "allow_delegation": "allow_delegation",
    "needs_local_agent": "needs_local_agent",
    "needs_claude_code": "needs_local_agent",
    "complexity_hint": "complexity_hint",
    "model": "model",
    "session": "session_id",
    "command": "command",
    "idempotency_key": "idempotency_key",
    "repo": "repo",
    "base": "base",
    "webhook": "webhook",
    "run_at": "run_at",
    "mcp_tools": "mcp_tools",
}
# Known job fields this version cannot act on yet: refused rather than ignored.
NOT_YET: set[str] = set()


class QueueFileError(InvalidInput):
    """The queue file is not a valid job."""

    code = "invalid_queue_file"


def split(text: str) -> tuple[str | None, str]:
    """(front matter or None, body)."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].rstrip("\r\n") != "---":
        return None, text
    for i, line in enumerate(lines[1:], start=1):
        if line.rstrip("\r\n") in ("---", "..."):
            return "".join(lines[1:i]), "".join(lines[i + 1 :])
    raise QueueFileError("front matter starts with '---' but has no closing '---' line")


def parse(text: str, *, source_ref: str | None = None, base_dir: Path | None = None) -> JobCreate:
    """The job described by ``text``; raises QueueFileError saying what to fix.
    A relative ``repo`` path is taken from ``base_dir`` (the file's folder)."""
    if not text.strip():
        raise QueueFileError("the file is empty: write a prompt (and optional front matter)")
    head, body = split(text)
    fields: dict[str, Any] = {}
    if head is not None:
        try:
            data = yaml.safe_load(head)
        except yaml.YAMLError as exc:
            raise QueueFileError(f"front matter is not valid YAML: {exc}") from exc
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise QueueFileError(
                f"front matter must be a mapping of fields, not a {type(data).__name__}"
            )
        for key, value in data.items():
            name = str(key)
            if name in NOT_YET:
                raise QueueFileError(f"{name!r} is not supported by this corral version yet")
            if name not in KEYS:
                hint = difflib.get_close_matches(name, [*KEYS, *NOT_YET], n=1)
                suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise QueueFileError(f"unknown field {name!r}{suggestion}")
            target = KEYS[name]
            if target in fields:
                raise QueueFileError(f"{name!r} repeats a field already given by an alias")
            fields[target] = value
    prompt = body.strip()
    if prompt:
        fields["prompt"] = prompt
    repo = fields.get("repo")
    if isinstance(repo, str) and repo and not is_repo_ref(repo):
        path = Path(repo).expanduser()
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        fields["repo"] = str(path.resolve())
    try:
        return JobCreate.model_validate({**fields, "source": "folder", "source_ref": source_ref})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'job'}: {e['msg']}" for e in exc.errors()
        )
        raise QueueFileError(f"invalid job: {problems}") from exc


MARK = "<!-- corral:result "


def footer(job: Job) -> str:
    """What is appended to a finished queue file: Markdown a person reads and
    one HTML comment line (``<!-- corral:result {json} -->``) a program parses."""
    duration = None
    if job.started_at and job.finished_at:
        duration = round((job.finished_at - job.started_at).total_seconds(), 3)
    data = {
        "job_id": job.id,
        "state": job.state.value,
        "provider": job.provider,
        "model": job.model,
        "attempts": job.attempt,
        "duration_s": duration,
        "cost": job.cost,
        "cost_source": job.cost_source,
        "usage": job.usage,
        "exit_code": job.exit_code,
        "error": job.error,
        "reason": job.reason,
        "session_id": job.session_id,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }
    lines = [
        "",
        "---",
        "",
        f"## corral: {job.state.value}",
        "",
        f"- job: `{job.id}` (session `{job.session_id}`)",
        f"- provider: {job.provider}" + (f", model {job.model}" if job.model else ""),
        f"- attempts: {job.attempt}",
    ]
    if duration is not None:
        lines.append(f"- duration: {duration:g} s")
    if job.cost is not None:
        lines.append(f"- cost: ${job.cost:.4f} ({job.cost_source})")
    elif job.cost_source is not None:
        lines.append("- cost: unknown (no price for this model)")
    if job.usage:
        lines.append(f"- tokens: {json.dumps(job.usage)}")
    if job.error:
        why = f" ({job.reason})" if job.reason else ""
        lines.append(f"- error: {job.error}{why}")
    if job.result:
        lines += ["", "```text", job.result.replace("```", "`\u200b``"), "```"]
    lines += ["", MARK + json.dumps(data) + " -->", ""]
    return "\n".join(lines)


def rejection(reason: str) -> str:
    """The footer of a file that never became a job."""
    data = {"state": "rejected", "error": reason}
    return "\n".join(
        [
            "",
            "---",
            "",
            "## corral: rejected",
            "",
            f"- error: {reason}",
            "",
            MARK + json.dumps(data) + " -->",
            "",
        ]
    )


def result_of(text: str) -> dict[str, Any] | None:
    """The machine-readable block of a finished queue file, if any."""
    for line in reversed(text.splitlines()):
        if line.startswith(MARK) and line.endswith(" -->"):
            data: dict[str, Any] = json.loads(line[len(MARK) : -4])
            return data
    return None
