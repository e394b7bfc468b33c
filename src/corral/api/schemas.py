"""Request and response bodies of the HTTP API that are not shared nouns (the
runner protocol's are in corral/protocol/)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from corral.models import JobCreate


class SessionCreate(BaseModel):
    model_config = {"extra": "forbid"}
    title: str | None = Field(None, max_length=500)


class TurnCreate(JobCreate):
    """A follow-up turn: a job in an existing session (given by the path)."""


class EventPage(BaseModel):
    events: list[Any]
    next_since: int
