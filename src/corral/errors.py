"""One error tree. A class's docstring is its default message; user-visible
errors carry an HTTP ``status`` and a stable ``code``."""

from __future__ import annotations


class CorralError(Exception):
    """Something went wrong inside corral."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (type(self).__doc__ or "").strip()
        super().__init__(self.message)


class BadRequest(CorralError):
    """The request is malformed."""

    status = 400
    code = "bad_request"


class InvalidInput(CorralError):
    """The request body does not match the schema."""

    status = 422
    code = "invalid_input"


class Unroutable(CorralError):
    """No provider may run this job; name one, or configure a default."""

    status = 422
    code = "unroutable"


class SubjobTooDeep(InvalidInput):
    """A sub-job would nest deeper than ``max_subjob_depth``."""

    code = "subjob_too_deep"


class WebhookRefused(InvalidInput):
    """The server does not send webhooks to that address."""

    code = "webhook_refused"


class Unauthorized(CorralError):
    """Missing or invalid credentials."""

    status = 401
    code = "unauthorized"


class InvalidSignature(Unauthorized):
    """The request's X-Corral-Signature is missing, stale or does not match."""

    code = "invalid_signature"


class Forbidden(CorralError):
    """This credential's role may not do that."""

    status = 403
    code = "forbidden"


class NotFound(CorralError):
    """Not found."""

    status = 404
    code = "not_found"


class TrackerNotFound(NotFound):
    """No such tracker."""

    code = "tracker_not_found"


class JobNotFound(NotFound):
    """No such job."""

    code = "job_not_found"


class ArtifactNotFound(NotFound):
    """No such artifact."""

    code = "artifact_not_found"


class SessionNotFound(NotFound):
    """No such session."""

    code = "session_not_found"


class RunnerNotFound(NotFound):
    """No such runner; register again."""

    code = "runner_not_found"


class RunnerNameNotFound(NotFound):
    """No runner name is bound to a key under that name."""

    code = "runner_name_not_found"


class ChannelNotFound(NotFound):
    """No such chat channel."""

    code = "channel_not_found"


class ScheduleNotFound(NotFound):
    """No such schedule: [[schedules]] in corral.toml names them."""

    code = "schedule_not_found"


class KeyNotFound(NotFound):
    """No such API key."""

    code = "key_not_found"


class Conflict(CorralError):
    """The request conflicts with the current state."""

    status = 409
    code = "conflict"


class InvalidTransition(Conflict):
    """That state change is not allowed."""

    code = "invalid_transition"


class AmbiguousId(Conflict):
    """That id prefix matches more than one; give more characters."""

    code = "ambiguous_id"

    def __init__(self, message: str | None = None, candidates: list[str] | None = None) -> None:
        super().__init__(message)
        self.candidates = candidates or []


class RunnerNameTaken(Conflict):
    """That runner name belongs to another key."""

    code = "runner_name_taken"


class StaleEpoch(Conflict):
    """This worker no longer owns the job (stale epoch); stop working on it."""

    code = "stale_epoch"


class PayloadTooLarge(CorralError):
    """The request body is too large."""

    status = 413
    code = "payload_too_large"


class TooManyRequests(CorralError):
    """Too many requests; slow down."""

    status = 429
    code = "too_many_requests"


class StoreUnavailable(CorralError):
    """The database is unavailable."""

    status = 503
    code = "store_unavailable"


class ConfigError(CorralError):
    """The configuration is invalid."""

    code = "config_error"


class ClientError(CorralError):
    """The corral server could not be reached."""

    code = "client_error"


class JobNotActive(Conflict):
    """The job is no longer active (cancelled or finished); stop working on it."""

    code = "job_not_active"


class NotWaiting(Conflict):
    """The job is not waiting for an answer."""

    code = "not_waiting"


class QuestionNotFound(NotFound):
    """No such question."""

    code = "question_not_found"
