"""Issue-tracker intake, the pure part: which issue becomes which job, at what
priority, with what prompt; which comment continues a session; which label
says a job's state. Values in, values out (the I/O is in ``intake/tracker.py``,
``sinks/tracker.py`` and ``forges/``)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from corral.jobs import JobState

# Labels that set an issue's priority (0 is the most urgent); the first match
# in the labels, lowest value, wins. Unlabelled: the job default, 2.
DEFAULT_PRIORITIES: dict[str, int] = {
    **{f"P{n}": n for n in range(4)},
    **{f"priority/p{n}": n for n in range(4)},
    **{f"priority: p{n}": n for n in range(4)},
}
DEFAULT_PRIORITY = 2

DEFAULT_PREAMBLE = (
    "You are working on issue #{number} of {repo}: {title}\n"
    "{url}\n\n"
    "Make the change the issue asks for in this repository and commit it.\n\n"
    "---\n\n"
)
PREAMBLE_FIELDS = frozenset({"title", "body", "url", "repo", "number"})
_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

# Prompts longer than this are cut (JobCreate.prompt's limit, with room for the note).
PROMPT_LIMIT = 262_144
TRUNCATED = (
    "\n\n[corral: the issue text was truncated to fit the prompt limit of {limit} characters]"
)

STATE_LABELS: dict[JobState, str] = {
    JobState.QUEUED: "queued",
    JobState.ASSIGNED: "running",
    JobState.RUNNING: "running",
    JobState.DONE: "done",
    JobState.FAILED: "failed",
    JobState.CANCELLED: "failed",
}


def priority_of(labels: Iterable[str], priorities: Mapping[str, int]) -> int:
    """The most urgent priority the labels name (case-insensitive), else 2."""
    table = {k.casefold(): v for k, v in priorities.items()}
    found = [table[label.casefold()] for label in labels if label.casefold() in table]
    return min(found) if found else DEFAULT_PRIORITY


def check_template(template: str) -> str:
    """``template`` if it names only the known fields; else ValueError."""
    unknown = sorted({m.group(1) for m in _FIELD.finditer(template)} - PREAMBLE_FIELDS)
    if unknown:
        raise ValueError(
            f"preamble names unknown field(s) {', '.join(unknown)}: "
            f"use {', '.join('{' + f + '}' for f in sorted(PREAMBLE_FIELDS))}"
        )
    return template


def render(template: str, fields: Mapping[str, object]) -> str:
    """``{name}`` replaced by ``fields[name]``; nothing else is interpreted
    (no attribute access, no format specs: the issue text is not trusted)."""
    return _FIELD.sub(lambda m: str(fields.get(m.group(1), m.group(0))), template)


def prompt(template: str, *, title: str, body: str, url: str, repo: str, number: int) -> str:
    """The first turn's prompt: the preamble, then the issue text (cut to the limit)."""
    head = render(
        template, {"title": title, "body": body, "url": url, "repo": repo, "number": number}
    )
    text = head + (body or title)
    if len(text) > PROMPT_LIMIT:
        note = TRUNCATED.format(limit=PROMPT_LIMIT)
        text = text[: PROMPT_LIMIT - len(note)] + note
    return text


def job_key(tracker: str, repo: str, number: int) -> str:
    """The idempotency key of an issue's first turn: one job per issue,
    across polls, webhooks, restarts and replicas."""
    return f"tracker:{tracker}:{repo}#{number}"


def comment_key(tracker: str, repo: str, number: int, comment_id: int) -> str:
    """The idempotency key of the turn a comment asked for."""
    return f"{job_key(tracker, repo, number)}:comment:{comment_id}"


def follow_up(body: str, trigger: str) -> str | None:
    """The request of a comment that calls the trigger (the comment without
    it), or None: a comment that does not call corral is a conversation
    between people."""
    if not trigger or trigger.casefold() not in body.casefold():
        return None
    i = body.casefold().index(trigger.casefold())
    rest = (body[:i] + body[i + len(trigger) :]).strip()
    return rest or None


def by_corral(body: str) -> bool:
    """Whether a comment is one corral wrote (a result or a note)."""
    return "<!-- corral:" in body
