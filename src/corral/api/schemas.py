"""Request and response bodies of the HTTP API that are not shared nouns."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from corral.models import Job, JobCreate, NewEvent, Outcome, Session


class SessionCreate(BaseModel):
    model_config = {"extra": "forbid"}
    title: str | None = Field(None, max_length=500)


class TurnCreate(JobCreate):
    """A follow-up turn: a job in an existing session (given by the path)."""


class RunnerRegister(BaseModel):
    model_config = {"extra": "forbid"}
    name: str = Field(min_length=1, max_length=200)
    hostname: str | None = Field(None, max_length=255)
    providers: list[str] = Field(min_length=1, max_length=64)
    labels: list[str] = Field(default_factory=list, max_length=64)
    slots: int = Field(ge=1, le=1024)
    sandbox: Literal["bwrap", "none"] | None = Field(
        None, description="Where the runner's local jobs run (executors/sandbox.py)."
    )
    protocol: Literal["v1"] = "v1"


class RunnerRegistered(BaseModel):
    runner_id: str
    protocol: str
    lease_ttl: float
    heartbeat_interval: float
    max_artifact_bytes: int


class LeaseRequest(BaseModel):
    model_config = {"extra": "forbid"}
    max_jobs: int = Field(ge=0, le=1024)
    wait: float = Field(20.0, ge=0, le=120)


class LeasedJob(BaseModel):
    job: Job
    session: Session
    epoch: int
    token: str = Field(description="Worker JWT for /worker/* calls about this job.")
    resume_handle: str | None = None


class LeaseResponse(BaseModel):
    jobs: list[LeasedJob]
    cancel: list[str] = Field(default_factory=list, description="Jobs to stop at once.")


class EventBatch(BaseModel):
    model_config = {"extra": "forbid"}
    events: list[NewEvent] = Field(max_length=1000)


class EventsAccepted(BaseModel):
    accepted: list[int]
    duplicates: list[str]


class WorkerState(BaseModel):
    model_config = {"extra": "forbid"}
    state: Literal["running", "requires_action", "idle"]
    started_at: datetime | None = None
    handle: str | None = Field(None, max_length=4096)
    details: dict[str, Any] = Field(default_factory=dict)


class Heartbeat(BaseModel):
    token: str
    state: str
    lease_expires_in: float


class Completion(BaseModel):
    model_config = {"extra": "forbid"}
    outcome: Outcome
    events: list[NewEvent] = Field(default_factory=list, max_length=1000)


class EventPage(BaseModel):
    events: list[Any]
    next_since: int
