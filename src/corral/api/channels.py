"""Chat channels: the IM bridge's inbound route, and what the channels owe.

A bridge signs each request with its channel's secret exactly as corral signs
webhooks (``X-Corral-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">``,
see ``corral.webhooks``); the signature is the credential: a missing, bad or
stale one is a 401 and nothing is read or stored."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ValidationError

from corral.api.deps import Reader, Svc, Worker
from corral.chat import BridgeChannel, BridgeInbound, Message
from corral.errors import ChannelNotFound, InvalidInput, InvalidSignature
from corral.intake.chat import receive
from corral.protocol import ChatSend, ChatSent, paths
from corral.webhooks import SIGNATURE_HEADER, WebhookVerificationError, verify

router = APIRouter(tags=["channels"])


class InboundAccepted(BaseModel):
    """What became of an inbound message."""

    kind: Literal["turn", "command", "answer"]
    session_id: str | None
    job_id: str | None = None
    created: bool = True


async def _signed(request: Request, svc: Svc, name: str) -> tuple[BridgeChannel, bytes]:
    channel = svc.settings.channel(name)
    if not isinstance(channel, BridgeChannel) or not channel.enabled:
        raise ChannelNotFound(f"no bridge channel {name!r} (see [[channels]] in corral.toml)")
    body = await request.body()
    try:
        verify(body, request.headers.get(SIGNATURE_HEADER), channel.secret.get_secret_value())
    except WebhookVerificationError as exc:
        raise InvalidSignature(exc.message) from exc
    return channel, body


_signed.corral_role = "channel signature"  # type: ignore[attr-defined]
Signed = Annotated[tuple[BridgeChannel, bytes], Depends(_signed)]


@router.post(
    "/channels/{name}/inbound",
    status_code=202,
    response_model=InboundAccepted,
    responses={
        200: {"model": InboundAccepted, "description": "A command, or a message seen before."}
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": BridgeInbound.model_json_schema()}},
        }
    },
)
async def inbound(name: str, svc: Svc, signed: Signed, response: Response) -> InboundAccepted:
    """A message from an IM bridge, signed with the channel's secret: a turn of its
    conversation's session (a message id seen before makes none), a command
    (/status, /cancel, /new), or the answer to a question its turn asked."""
    channel, raw = signed
    try:
        body = BridgeInbound.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInput(f"invalid inbound message: {problems}") from None
    msg = Message(
        channel=channel.name,
        chat_id=body.channel_id,
        user_id=body.user_id,
        text=body.text,
        message_id=body.message_id,
        thread_id=body.thread_id,
    )
    got = await receive(svc, channel, msg)
    if got.kind != "turn" or not got.created:
        response.status_code = 200
    return InboundAccepted(
        kind=got.kind, session_id=got.session_id, job_id=got.job_id, created=got.created
    )


@router.post(paths.WORKER_MESSAGES, response_model=ChatSent)
async def worker_message(body: ChatSend, svc: Svc, claims: Worker) -> ChatSent:
    """An agent's message to the chat its turn came from (the ``send_message``
    tool): owed to the channel through the chat outbox, in order with the
    turn's reply (idempotent by ``message_id``; 409 for a job no chat started)."""
    outbox_id, channel, created = await svc.store.chat.send(
        claims, message_id=body.message_id, text=body.text, to=body.to, now=datetime.now(UTC)
    )
    return ChatSent(id=outbox_id, channel=channel, created=created)


@router.get("/channels/outbox")
async def outbox(
    svc: Svc,
    who: Reader,
    channel: str | None = None,
    session_id: str | None = None,
    state: Literal["pending", "delivered", "failed"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """What the chat channels were sent or still owe (replies, messages), newest first."""
    return await svc.store.chat.list(
        channel=channel, session_id=session_id, state=state, limit=limit
    )
