"""The handles a session keeps, and their formats.

A session's handle is ``PROVIDER:VALUE``: the value an executor recorded to
continue the conversation (Claude Code's session id for ``--resume``), with
the provider that recorded it, since another provider's value means nothing
to it. The runner gets it back with the next lease (``resume_handle``).

Remote executors (corral, t3) record a JSON object as the value, as soon as
the remote side knows the job: ``RemoteHandle``. A runner that takes the job
over after a crash finds it and follows the remote job instead of submitting
it again."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError


def session_handle(provider: str, value: str) -> str:
    """The handle to record for ``provider``'s conversation ``value``."""
    return f"{provider}:{value}"


def own_handle(handle: str | None, provider: str) -> str | None:
    """The value of a session's handle if ``provider`` recorded it, else None."""
    owner, sep, value = (handle or "").partition(":")
    return value if sep and owner == provider and value else None


class RemoteHandle(BaseModel):
    """The value a remote executor records: which job of ours it is about
    (``job``: a later turn of the session has its own) and the remote ids."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    job: str | None = None
    remote_job: str | None = None
    remote_session: str | None = None  # corral
    thread: str | None = None  # t3: the thread, its project, our turn's message
    project: str | None = None
    message: str | None = None

    @classmethod
    def decode(cls, value: str | None) -> RemoteHandle:
        """The handle in ``value``; an empty one for none or another format."""
        if not value or not value.startswith("{"):
            return cls()
        try:
            return cls.model_validate_json(value)
        except ValidationError:
            return cls()

    def encode(self) -> str:
        return self.model_dump_json(exclude_none=True)
