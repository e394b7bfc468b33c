"""Chat channels, the pure part: what a ``[[channels]]`` table holds, what an
inbound message is, which conversation it belongs to, which commands a chat
understands, and how a reply is cut to a channel's size.

A conversation is (channel, chat, thread or user): each one is a session,
created on its first message; a message is a turn in it. The I/O lives in
``intake/chat.py`` (inbound), ``intake/telegram.py`` (long polling) and
``sinks/chat.py`` (the replies, through the chat outbox).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator

# Telegram refuses a message longer than this (sendMessage: "1-4096 characters").
TELEGRAM_LIMIT = 4096

CHANNEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _Routing(BaseModel):
    """The job fields every turn of a channel's conversations carries."""

    model_config = {"extra": "forbid"}

    name: str = Field(pattern=CHANNEL_NAME, description="The channel's name (in URLs and logs).")
    enabled: bool = Field(True, description="false: nothing is taken in, nothing sent.")
    provider: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="Provider of its turns (routing decides, as for `preferred_ai`); "
        "default: the default provider.",
    )
    needs_local_agent: bool = Field(False, description="Its turns need a local agent.")
    allow_delegation: bool = Field(True, description="false keeps its turns local.")
    complexity_hint: Literal["low", "medium", "high"] | None = Field(
        None, description="Model tier of its turns."
    )
    model: str | None = Field(None, min_length=1, max_length=200, description="Model override.")
    repo: str | None = Field(
        None,
        min_length=1,
        max_length=2000,
        description="Git repository its sessions work in (a worktree per job).",
    )
    priority: int = Field(2, ge=0, le=9, description="Priority of its turns.")
    timeout: float | None = Field(None, gt=0, description="Seconds a turn may run.")
    labels: list[str] = Field(default_factory=list, description="Labels of its turns.")


class BridgeChannel(_Routing):
    """``[[channels]]`` with ``kind = "bridge"``: a generic IM bridge (Slack,
    Matrix, Discord... relays) that POSTs signed messages to
    ``/channels/NAME/inbound`` and receives signed replies at ``outbound_url``."""

    kind: Literal["bridge"] = Field("bridge", description="A signed IM bridge.")
    secret: SecretStr = Field(
        min_length=16, description="HMAC key signing both directions (X-Corral-Signature)."
    )
    outbound_url: str = Field(
        pattern=r"^https?://\S+$", description="Where replies are POSTed (signed)."
    )


class TelegramChannel(_Routing):
    """``[[channels]]`` with ``kind = "telegram"``: a Telegram bot, by long
    polling (no public URL needed)."""

    kind: Literal["telegram"] = Field("telegram", description="A Telegram bot.")
    token_env: str = Field(
        min_length=1, description="Environment variable holding the bot token (from @BotFather)."
    )
    allowed_chats: list[int] = Field(
        default_factory=list,
        description="Chat ids whose messages are taken (empty: none; a private chat's id "
        "is the user's id).",
    )
    api_url: str = Field(
        "https://api.telegram.org",
        pattern=r"^https?://\S+$",
        description="The Bot API server (a local telegram-bot-api, or a test double).",
    )
    poll_timeout: int = Field(
        30, ge=0, le=50, description="Seconds each getUpdates long-poll waits."
    )

    @field_validator("api_url")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.rstrip("/")


ChannelSettings = Annotated[BridgeChannel | TelegramChannel, Field(discriminator="kind")]


class BridgeInbound(BaseModel):
    """The body of ``POST /channels/{name}/inbound``."""

    model_config = {"extra": "forbid"}

    channel_id: str = Field(min_length=1, max_length=200, description="The chat room or channel.")
    user_id: str = Field(min_length=1, max_length=200, description="Who wrote it.")
    text: str = Field(min_length=1, max_length=65_536, description="What they wrote.")
    message_id: str = Field(
        min_length=1,
        max_length=200,
        description="The bridge's id of the message: a message sent again with the same "
        "id makes no second turn.",
    )
    thread_id: str | None = Field(
        None, min_length=1, max_length=200, description="The thread, if it is in one."
    )


@dataclass(frozen=True, slots=True)
class Message:
    """A message from a chat, whatever the channel."""

    channel: str  # the [[channels]] name
    chat_id: str
    user_id: str
    text: str
    message_id: str
    thread_id: str | None = None

    @property
    def conversation(self) -> str:
        """Its conversation within the channel: a thread of a chat, else the
        user's own conversation in that chat."""
        return conversation_key(self.chat_id, self.thread_id, self.user_id)

    @property
    def key(self) -> str:
        """Names this message across re-deliveries (an idempotency key)."""
        digest = hashlib.sha256(f"{self.chat_id}\0{self.message_id}".encode()).hexdigest()
        return f"chat:{self.channel}:{digest[:40]}"


def conversation_key(chat_id: str, thread_id: str | None, user_id: str) -> str:
    if thread_id:
        return f"{chat_id}/t/{thread_id}"
    return f"{chat_id}/u/{user_id}"


Command = Literal["status", "cancel", "new"]
_COMMAND = re.compile(r"^/(status|cancel|new)(?:@[A-Za-z0-9_]+)?\s*$")


def command(text: str) -> Command | None:
    """The chat command ``text`` is (``/status``, ``/cancel``, ``/new``; in a
    Telegram group also ``/new@botname``), or None: a message for the agent."""
    m = _COMMAND.match(text.strip())
    return m.group(1) if m else None  # type: ignore[return-value]


def reply_text(state: str, result: str | None, error: str | None) -> str:
    """What a finished turn says in the chat."""
    if state == "done":
        return result.strip() if result and result.strip() else "(done, no output)"
    if state == "cancelled":
        return "Cancelled."
    return f"Failed: {error.strip()}" if error and error.strip() else "Failed."


def _utf16(ch: str) -> int:
    return 2 if ord(ch) > 0xFFFF else 1


def split(text: str, limit: int = TELEGRAM_LIMIT) -> list[str]:
    """``text`` in pieces of at most ``limit`` UTF-16 code units (how Telegram
    counts), cut at a paragraph, else a line, else a space when one is in the
    second half of a piece; never an empty piece."""
    pieces: list[str] = []
    rest = text.strip()
    while rest:
        units = 0
        end = 0
        for end, ch in enumerate(rest):  # noqa: B007 - the index where the limit is hit
            units += _utf16(ch)
            if units > limit:
                break
        else:
            pieces.append(rest)
            break
        cut = max(end, 1)  # a character wider than the limit goes alone
        for sep in ("\n\n", "\n", " "):
            at = rest.rfind(sep, 0, end)
            if at > end // 2:
                cut = at
                break
        piece, rest = rest[:cut].rstrip(), rest[cut:].lstrip()
        if piece:
            pieces.append(piece)
    return pieces
