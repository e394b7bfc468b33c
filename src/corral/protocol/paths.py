"""Where each call of runner protocol v1 goes: the templates the server's
routes are declared with, and builders for the runner."""

from __future__ import annotations

from urllib.parse import quote

REGISTER = "/runners/register"
LEASE = "/runners/{runner_id}/lease"
AGENTS = "/runners/{runner_id}/agents"
AGENTS_REPORT = "/runners/{runner_id}/agents/report"

WORKER_STATE = "/worker/state"
WORKER_EVENTS = "/worker/events"
WORKER_HEARTBEAT = "/worker/heartbeat"
WORKER_ARTIFACTS = "/worker/artifacts/"  # + a name: the one call with a raw body
WORKER_ARTIFACT = WORKER_ARTIFACTS + "{name}"
WORKER_COMPLETE = "/worker/complete"
WORKER_QUESTIONS = "/worker/questions"
WORKER_QUESTION_WAIT = "/worker/questions/{question_id}/wait"
# The job's MCP gateway's corral tools (its children: sub-jobs it submitted).
WORKER_CHILDREN = "/worker/children"
WORKER_CHILD_WAIT = "/worker/children/{job_id}/wait"
WORKER_CHILD_CANCEL = "/worker/children/{job_id}/cancel"
WORKER_PROGRESS = "/worker/progress"
WORKER_MESSAGES = "/worker/messages"

# A question's id: minted by the worker, so a retried ask records one question.
QUESTION_ID = r"^[A-Za-z0-9_-]{1,64}$"
# An artifact's name: one path segment, no dot first (so never `..`).
ARTIFACT_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


def _segment(value: str) -> str:
    return quote(value, safe="")


def lease(runner_id: str) -> str:
    return LEASE.format(runner_id=_segment(runner_id))


def agents(runner_id: str) -> str:
    return AGENTS.format(runner_id=_segment(runner_id))


def agents_report(runner_id: str) -> str:
    return AGENTS_REPORT.format(runner_id=_segment(runner_id))


def artifact(name: str) -> str:
    return WORKER_ARTIFACT.format(name=_segment(name))


def question_wait(question_id: str) -> str:
    return WORKER_QUESTION_WAIT.format(question_id=_segment(question_id))


def child_wait(job_id: str) -> str:
    return WORKER_CHILD_WAIT.format(job_id=_segment(job_id))


def child_cancel(job_id: str) -> str:
    return WORKER_CHILD_CANCEL.format(job_id=_segment(job_id))
