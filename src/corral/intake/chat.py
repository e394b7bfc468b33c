"""Chat messages in: a message from any channel (the bridge's inbound route,
the Telegram bot's long poll) becomes a turn of its conversation's session,
through ``submit()``; ``/status``, ``/cancel`` and ``/new`` are answered here.

A message's idempotency key comes from its chat and message id, so a
message delivered twice (a bridge retrying, an update fetched again after a
crash) makes one turn. Every answer goes through the chat outbox
(``store/chat.py``), in order with the turns' replies."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from corral.chat import ChannelSettings, Message, command
from corral.errors import CorralError, InvalidTransition, JobNotActive, NotWaiting
from corral.intake.submit import submit
from corral.jobs import ACTIVE, JobState
from corral.models import JobCreate
from corral.services import Services
from corral.store.chat import Target

log = logging.getLogger(__name__)

_OPEN = (JobState.QUEUED, *ACTIVE)


@dataclass(frozen=True, slots=True)
class Received:
    """What became of a message: a turn (``job_id``), a command answered, or
    the answer to the question a turn asked (``job_id``: that turn);
    ``created`` False for a message seen before."""

    kind: Literal["turn", "command", "answer"]
    session_id: str | None
    job_id: str | None = None
    created: bool = True


def target(msg: Message) -> Target:
    return Target(msg.channel, msg.conversation, msg.chat_id, msg.user_id, msg.thread_id)


async def receive(services: Services, channel: ChannelSettings, msg: Message) -> Received:
    """Take ``msg`` in. Raises what ``submit()`` raises (``Unroutable``...)
    after telling the chat why its message was not taken."""
    store = services.store
    existing = await store.jobs.by_idempotency_key(msg.key)
    if existing is not None:
        return Received("turn", existing.session_id, existing.id, created=False)
    if await store.chat.owed(f"answer:{msg.key}"):  # a command or an answer, seen before
        current = await store.chat.current(channel.name, msg.conversation)
        return Received("command", current, created=False)
    to = target(msg)
    now = datetime.now(UTC)
    title = f"{channel.name}: {msg.chat_id}"
    cmd = command(msg.text)
    if cmd == "new":
        session_id, _ = await store.chat.session(to, title=title, now=now, started_by=msg.key)
        await _answer(services, to, msg, "Started a new conversation.", session_id)
        return Received("command", session_id)
    if cmd is not None:
        current = await store.chat.current(channel.name, msg.conversation)
        text = await (_status(services, current) if cmd == "status" else _cancel(services, current))
        if text:
            await _answer(services, to, msg, text, current)
        return Received("command", current)
    answered = await _answer_question(services, channel, to, msg)
    if answered is not None:
        return answered
    session_id, _ = await store.chat.session(to, title=title, now=now)
    spec = JobCreate(
        prompt=msg.text,
        session_id=session_id,
        preferred_ai=channel.provider,
        needs_local_agent=channel.needs_local_agent,
        allow_delegation=channel.allow_delegation,
        complexity_hint=channel.complexity_hint,
        model=channel.model,
        repo=channel.repo,
        priority=channel.priority,
        timeout=channel.timeout,
        labels=channel.labels,
        idempotency_key=msg.key,
        source="chat",
        source_ref=msg.message_id,
        title=_title(msg.text),
    )
    try:
        job, created = await submit(services, spec)
    except CorralError as exc:
        await services.store.chat.enqueue(
            to,
            key=f"refused:{msg.key}",
            kind="reply",
            text=f"Not taken: {exc.message}",
            now=datetime.now(UTC),
            session_id=session_id,
        )
        raise
    return Received("turn", job.session_id, job.id, created)


def _title(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:80]


async def _answer(
    services: Services, to: Target, msg: Message, text: str, session_id: str | None
) -> None:
    await services.store.chat.enqueue(
        to,
        key=f"answer:{msg.key}",
        kind="reply",
        text=text,
        now=datetime.now(UTC),
        session_id=session_id,
    )


async def _answer_question(
    services: Services, channel: ChannelSettings, to: Target, msg: Message
) -> Received | None:
    """If a turn of this conversation waits on a question (``ask_human``) and
    the conversation's own user writes, the message is the answer."""
    store = services.store
    session_id = await store.chat.current(channel.name, msg.conversation)
    if session_id is None:
        return None
    started = await store.chat.target(session_id)
    if started is None or started.user_id != msg.user_id:
        return None
    for job in await store.jobs.list(session_id=session_id, states=tuple(ACTIVE), limit=20):
        try:
            await store.questions.answer(job.id, msg.text, by=f"chat:{msg.user_id}")
        except NotWaiting:
            continue
        await _answer(services, to, msg, "Thanks, passed on.", session_id)
        return Received("answer", session_id, job.id)
    return None


async def _status(services: Services, session_id: str | None) -> str:
    if session_id is None:
        return "No conversation yet: send a message to start one."
    jobs = await services.store.jobs.list(session_id=session_id, limit=20)
    if not jobs:
        return f"Session {session_id[:12]}: no turns yet."
    latest = jobs[0]
    waiting = sum(1 for j in jobs if j.state is JobState.QUEUED)
    text = (
        f"Session {session_id[:12]}, turn {latest.turn}: {latest.state.value} "
        f"on {latest.provider} (job {latest.id[:12]})."
    )
    if waiting > 1 or (waiting and latest.state is not JobState.QUEUED):
        text += f" {waiting} queued."
    return text


async def _cancel(services: Services, session_id: str | None) -> str | None:
    """Cancel the conversation's open turns (each then replies "Cancelled.")."""
    jobs = (
        []
        if session_id is None
        else await services.store.jobs.list(session_id=session_id, states=_OPEN, limit=100)
    )
    cancelled = 0
    for job in jobs:
        try:
            await services.store.jobs.cancel(job.id, by="chat")
            cancelled += 1
        except (InvalidTransition, JobNotActive):
            continue  # it ended meanwhile: its reply is on its way
    return None if cancelled else "Nothing to cancel."
