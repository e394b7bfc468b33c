"""Runner protocol v1: the wire contract between the control plane and its
runners, written once and imported by both sides.

- ``bodies``: every request and answer, typed (pydantic). The server's routes
  take and return them; the runner builds its requests from them and reads
  the answers into them, never into raw dicts.
- ``paths``: where each call goes (route templates for the server, builders
  for the runner: ``paths.lease(runner_id)``); ``calls``: each call declared
  once (method, path, body, answer, credential), what the runner's link sends
  and what a test holds the server's routes to.
- ``topics``: the bus topics a store write announces and who waits on them
  (on PostgreSQL they cross replicas in NOTIFY payloads on
  ``topics.CHANNEL``, so they are a wire format too).
- ``handles``: the formats of a session's conversation handle
  (``PROVIDER:VALUE``) and of a remote executor's job handle (JSON).
- ``error_of``: the one reader of a refusal's ``{"error": {"code",
  "message"}}`` body (``error_body`` writes it).

Calls, with their credential:

- runner key: ``POST /runners/register`` (``RunnerRegister`` ->
  ``RunnerRegistered``; it carries the runner's journal of unacknowledged
  outcomes, ``JournalEntry``, and answers each with a ``JournalAnswer``),
  ``POST /runners/{id}/lease`` (``LeaseRequest`` ->
  ``LeaseResponse``: ``LeasedJob`` items and jobs to cancel),
  ``POST /runners/{id}/agents`` (``AgentPoll`` -> ``DesiredAgents``),
  ``POST /runners/{id}/agents/report`` (``AgentReport`` -> ``AgentsReported``);
- the job's worker JWT (from the lease, renewed by each heartbeat):
  ``PUT /worker/state`` (``WorkerState`` -> ``StateRecorded``),
  ``POST /worker/events`` (``EventBatch`` -> ``EventsAccepted``),
  ``POST /worker/heartbeat`` (-> ``Heartbeat``), ``PUT /worker/artifacts/{name}``
  (the raw bytes -> ``corral.models.Artifact``), ``POST /worker/complete``
  (``Completion`` -> ``Completed``); the job's MCP gateway's tools:
  ``POST /worker/children`` (``ChildSubmit`` -> ``ChildJob``: a sub-job),
  ``POST /worker/children/{id}/wait`` (``ChildWait`` -> ``ChildJob``),
  ``POST /worker/children/{id}/cancel`` (-> ``ChildJob``), ``POST
  /worker/progress`` (``Progress`` -> ``ProgressRecorded``). Every one is
  fenced like the other worker calls: a stale epoch is refused (409) and
  changes nothing.

Traces (corral.tracing): a ``LeasedJob`` carries the lease's W3C
``traceparent`` (optional); the runner sends its run span's in a
``traceparent`` header on the job's worker calls (``/worker/complete`` is
traced under it); both sides ignore it when they do not trace.

Compatibility: within v1 changes only add fields, and each side ignores the
fields it does not know (a newer runner registers with an older server; an
older runner reads a newer server's answers). A change a side must
understand is a new version (``VERSION``, sent in the registration)."""

from corral.protocol.bodies import (
    VERSION,
    AgentMessage,
    AgentPoll,
    AgentReport,
    AgentsReported,
    AgentState,
    AnswerWait,
    ChatSend,
    ChatSent,
    ChildJob,
    ChildSubmit,
    ChildWait,
    Completed,
    Completion,
    DesiredAgent,
    DesiredAgents,
    EventBatch,
    EventsAccepted,
    Heartbeat,
    JournalAnswer,
    JournalEntry,
    LeasedJob,
    LeaseRequest,
    LeaseResponse,
    LogLine,
    Progress,
    ProgressRecorded,
    QuestionAsk,
    RunnerRegister,
    RunnerRegistered,
    StateRecorded,
    StatusChange,
    WorkerState,
    error_body,
    error_of,
)

__all__ = [
    "VERSION",
    "AgentMessage",
    "AgentPoll",
    "AgentReport",
    "AgentState",
    "AgentsReported",
    "AnswerWait",
    "ChatSend",
    "ChatSent",
    "ChildJob",
    "ChildSubmit",
    "ChildWait",
    "Completed",
    "Completion",
    "DesiredAgent",
    "DesiredAgents",
    "EventBatch",
    "EventsAccepted",
    "Heartbeat",
    "JournalAnswer",
    "JournalEntry",
    "LeaseRequest",
    "LeaseResponse",
    "LeasedJob",
    "LogLine",
    "Progress",
    "ProgressRecorded",
    "QuestionAsk",
    "RunnerRegister",
    "RunnerRegistered",
    "StateRecorded",
    "StatusChange",
    "WorkerState",
    "error_body",
    "error_of",
]
