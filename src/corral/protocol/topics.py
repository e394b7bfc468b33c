"""Bus topics: what a store write announces (after it commits) and who waits
on it. A message is a string (or, on ``session`` topics, the new events).

On PostgreSQL every announcement also goes out as a NOTIFY on ``CHANNEL``, so
other replicas hear it: topics and messages are a wire format between
replicas, named here and nowhere else."""

from __future__ import annotations

CHANNEL = "corral_events_v1"

# Work may be leasable (message: a job id, a provider or a setting changed):
# waiting leases look again.
DISPATCH = "dispatch"
# A job changed state (message: its id): sinks (the queue folder) act on it.
JOBS = "jobs"
# A job was created or changed state (message: its id): the dashboard's live
# jobs table (GET /sse/jobs) reads the job and sends it.
JOB_STATES = "job-states"
# Webhook deliveries may be due (message: a job id or a delivery seq).
WEBHOOKS = "webhooks"
# Chat messages may be due (message: a channel name or an outbox seq).
CHAT = "chat"
# An agent daemon's status changed (message: a StatusChange as JSON).
AGENTS = "agents"
# The desired agents changed (configuration, an action, a runner gone):
# hosts long-polling for them look again.
AGENTS_DESIRED = "agents-desired"
# A tracker should poll now (message: its name): the leader's tracker loop.
TRACKERS = "trackers"
# This replica is stopping (published on its own bus, never across replicas):
# the long-polls waiting here answer at once, so their runners go elsewhere.
SERVER_STOPPING = "server:stopping"

_SESSION = "session:"
_RUNNER = "runner:"
_CANCEL = "cancel:"
_AGENT_LOG = "agent-log:"
_AGENT_STATE = "agent-state:"


def session(session_id: str) -> str:
    """New events of a session (message: the events, or their last seq)."""
    return _SESSION + session_id


def session_of(topic: str) -> str | None:
    """The session a ``session`` topic is about (None: another topic)."""
    return topic.removeprefix(_SESSION) if topic.startswith(_SESSION) else None


def runner(runner_id: str) -> str:
    """What one runner's lease poll must hear at once (``cancel(job_id)``)."""
    return _RUNNER + runner_id


def cancel(job_id: str) -> str:
    """The message on a ``runner`` topic: stop this job."""
    return _CANCEL + job_id


def cancelled(message: object) -> str | None:
    """The job a ``runner`` topic's message cancels (None: another message)."""
    if isinstance(message, str) and message.startswith(_CANCEL):
        return message.removeprefix(_CANCEL)
    return None


def agent_log(name: str) -> str:
    """New log lines of an agent daemon (message: ``{"lines": [...]}``, or
    ``{"upto": offset}`` when they were too many to carry)."""
    return _AGENT_LOG + name


def agent_state(name: str) -> str:
    """Each state report of an agent daemon (operators' actions wait on it)."""
    return _AGENT_STATE + name
