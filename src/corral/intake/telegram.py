"""A Telegram bot by long polling: ``getUpdates`` waits on Telegram's side for
new messages, so the bot works behind NAT with no public URL.

One replica polls (a leader loop of ``corral.server``). The offset of the
next update is kept in the database after each update is handled, so a
restart neither loses nor repeats updates; an update fetched twice anyway
(a crash between handling and saving the offset) makes no second turn (the
message's idempotency key). Messages of chats not in ``allowed_chats`` are
dropped unread (the default allows none). Text messages only; edits,
photos and the rest are ignored."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import httpx

from corral import __version__
from corral.chat import Message, TelegramChannel
from corral.errors import CorralError, StoreUnavailable
from corral.intake.chat import receive
from corral.jobs import backoff
from corral.services import Services
from corral.telegram import Bot, TelegramError

log = logging.getLogger(__name__)


def offset_key(channel: str) -> str:
    return f"telegram:{channel}:offset"


def message(channel: TelegramChannel, update: dict[str, Any]) -> Message | None:
    """The chat message in ``update``, if it is a text message from an allowed chat."""
    msg = update.get("message")
    if not isinstance(msg, dict) or not isinstance(msg.get("text"), str):
        return None
    chat = msg.get("chat")
    if not isinstance(chat, dict) or not isinstance(chat.get("id"), int):
        return None
    if chat["id"] not in channel.allowed_chats:
        return None
    sender = msg.get("from")
    user_id = sender.get("id") if isinstance(sender, dict) else None
    thread = msg.get("message_thread_id") if msg.get("is_topic_message") else None
    return Message(
        channel=channel.name,
        chat_id=str(chat["id"]),
        user_id=str(user_id if user_id is not None else chat["id"]),
        text=msg["text"],
        message_id=str(msg.get("message_id")),
        thread_id=str(thread) if thread is not None else None,
    )


class TelegramIntake:
    def __init__(self, services: Services, channel: TelegramChannel) -> None:
        self.services = services
        self.channel = channel
        self.ignored = 0  # updates of chats not allowed (or not text)

    async def run(self) -> None:
        channel, store = self.channel, self.services.store
        token = os.environ.get(channel.token_env)
        if not token:
            log.error(
                "channel %s: $%s is not set: the Telegram bot does not run",
                channel.name,
                channel.token_env,
            )
            return
        saved = await store.settings.get(offset_key(channel.name))
        offset = int(saved) if saved else None
        failures = 0
        headers = {"User-Agent": f"corral-chat/{__version__}"}
        async with httpx.AsyncClient(headers=headers) as http:
            bot = Bot(http, channel.api_url, token)
            while True:
                try:
                    updates = await bot.get_updates(offset, channel.poll_timeout)
                    failures = 0
                except TelegramError as exc:
                    failures += 1
                    wait = backoff(failures, base=1.0, cap=60.0)
                    if exc.retry_after is not None:
                        wait = max(wait, exc.retry_after)
                    if exc.error_code in (401, 404):
                        wait = 60.0  # the token is refused: nothing works until it is fixed
                    log.warning("channel %s: %s; again in %.0fs", channel.name, exc.message, wait)
                    await asyncio.sleep(wait)
                    continue
                for update in updates:
                    update_id = update.get("update_id")
                    if not isinstance(update_id, int):
                        continue
                    try:
                        await self._handle(update)
                        await store.settings.set(offset_key(channel.name), str(update_id + 1))
                    except StoreUnavailable as exc:
                        # Not confirmed: the next getUpdates returns it again.
                        log.warning("channel %s: %s; retrying", channel.name, exc.message)
                        await asyncio.sleep(1.0)
                        break
                    offset = update_id + 1

    async def _handle(self, update: dict[str, Any]) -> None:
        msg = message(self.channel, update)
        if msg is None:
            self.ignored += 1
            log.debug("channel %s: update %s ignored", self.channel.name, update.get("update_id"))
            return
        try:
            await receive(self.services, self.channel, msg)
        except StoreUnavailable:
            raise
        except CorralError as exc:  # the chat has been told why
            log.warning("channel %s: message not taken: %s", self.channel.name, exc.message)
