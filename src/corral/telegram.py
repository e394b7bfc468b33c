"""A small Telegram Bot API client: the two methods corral uses.

Wire format (https://core.telegram.org/bots/api): ``POST
{api_url}/bot<token>/<method>`` with a JSON body; every answer is
``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code": N,
"description": "...", "parameters": {"retry_after": S}}`` (flood control:
429 with ``retry_after`` seconds; 409 when another getUpdates or a webhook
holds the bot). ``getUpdates(offset, timeout)`` long-polls: it answers when
an update arrives or after ``timeout`` seconds; an update is confirmed (never
returned again) once getUpdates is called with a higher offset.
``sendMessage(chat_id, text)`` takes 1 to 4096 characters; corral sends
plain text (no ``parse_mode``), so nothing in an agent's answer can break
the formatting or be refused as bad Markdown.

The token is part of every URL: it is never logged (errors name the method,
not the URL).
"""

from __future__ import annotations

from typing import Any

import httpx

from corral.errors import CorralError


class TelegramError(CorralError):
    """The Telegram Bot API refused a call."""

    status = 502
    code = "telegram_error"

    def __init__(
        self,
        message: str,
        *,
        error_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Worth trying again: flood control, Telegram's own trouble, or no answer."""
        return self.error_code is None or self.error_code == 429 or self.error_code >= 500


class Bot:
    """One bot's calls, on a shared ``httpx.AsyncClient``."""

    def __init__(self, http: httpx.AsyncClient, api_url: str, token: str) -> None:
        self.http = http
        self._base = f"{api_url.rstrip('/')}/bot{token}/"

    async def call(self, method: str, params: dict[str, Any], *, timeout: float = 30.0) -> Any:
        """``method``'s result; raises ``TelegramError``."""
        try:
            resp = await self.http.post(self._base + method, json=params, timeout=timeout)
        except httpx.HTTPError as exc:
            # Not str(exc): httpx puts the URL, hence the token, in some messages.
            raise TelegramError(f"{method}: {type(exc).__name__}") from None
        try:
            data = resp.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise TelegramError(
                f"{method}: HTTP {resp.status_code}, not a Bot API answer",
                error_code=resp.status_code if resp.status_code >= 400 else 502,
            )
        if data.get("ok") is True:
            return data.get("result")
        params_ = data.get("parameters") or {}
        retry_after = params_.get("retry_after") if isinstance(params_, dict) else None
        code = data.get("error_code")
        raise TelegramError(
            f"{method}: {data.get('description') or 'refused'}",
            error_code=code if isinstance(code, int) else resp.status_code,
            retry_after=float(retry_after) if isinstance(retry_after, int | float) else None,
        )

    async def get_updates(self, offset: int | None, timeout: int) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"timeout": timeout, "allowed_updates": ["message"]}
        if offset is not None:
            params["offset"] = offset
        result = await self.call("getUpdates", params, timeout=timeout + 10.0)
        return [u for u in result or () if isinstance(u, dict)]

    async def send_message(
        self, chat_id: int | str, text: str, *, thread_id: int | None = None
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"chat_id": chat_id, "text": text}
        if thread_id is not None:
            params["message_thread_id"] = thread_id
        result = await self.call("sendMessage", params)
        return result if isinstance(result, dict) else {}
