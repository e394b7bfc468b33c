"""Chat jobs on remote model servers, through the official SDKs.

- ``openai``: any OpenAI-compatible server (OpenAI, Ollama's and vLLM's /v1,
  llama.cpp server, LM Studio, OpenRouter) with ``base_url``.
- ``anthropic``: the Anthropic Messages API.

A job's ``messages`` (OpenAI/Ollama shape) are sent as they are; a prompt
becomes one user message. Streaming deltas become ephemeral ``chat.delta``
events; the final assistant message goes on the job (``message``, and its
text as ``result``) with token usage. Cost is recorded only when the server
reports it (OpenRouter does): unknown prices stay unknown, never guessed.

The SDKs retry connection errors, 408/409/429 and 5xx with exponential
backoff and jitter, honouring ``Retry-After`` (``max_retries`` of the
provider). What still fails is classified: 429/529 is a quota (the provider
pauses, its jobs go to its ``fallback``), 401/403 and other 4xx are bad input
(failed at once with the server's message), the rest infrastructure."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import Field

from corral import pricing
from corral.errors import ConfigError
from corral.executors.agent import usage_of
from corral.executors.base import Context, failed, http_failed
from corral.executors.settings import ProviderSettings, RemoteSettings
from corral.models import Outcome

OPTION_NAMES = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "stop": "stop",
    "max_tokens": "max_tokens",
    "num_predict": "max_tokens",  # Ollama's name
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}


# SDK clients are reused across jobs (each one holds a connection pool and an
# SSL context that cost tens of milliseconds to build), keyed by everything
# that shapes them, the credential included: a rotated key gets a new client.
_CLIENTS: dict[tuple[Any, ...], Any] = {}
MAX_CLIENTS = 64


def _client(factory: Any, **kwargs: Any) -> Any:
    key = (factory, *sorted(kwargs.items()))
    client = _CLIENTS.get(key)
    if client is None:
        if len(_CLIENTS) >= MAX_CLIENTS:
            _CLIENTS.clear()  # old ones are closed by the garbage collector
        client = _CLIENTS[key] = factory(**kwargs)
    return client


class ChatSettings(RemoteSettings):
    """The chat kinds (openai, anthropic): what the Ollama-compatible surface serves."""


class OpenAISettings(ChatSettings):
    """Chat jobs on any OpenAI-compatible server (OpenAI, Ollama's and vLLM's
    /v1, llama.cpp server, LM Studio, OpenRouter) through the official SDK;
    also what /api/embed proxies to (`[ollama] embed_provider`)."""

    base_url: str | None = Field(
        None,
        description="API base URL, e.g. http://gpu:11434/v1 (Ollama), http://gpu:8000/v1 "
        "(vLLM); default: OpenAI's.",
    )
    embedding_model: str | None = Field(
        None, description="Model behind /api/embed (when this is the embed_provider)."
    )
    stream_usage: bool = Field(
        False,
        description="Ask for token usage in every streamed chunk (vLLM's "
        "stream_options.continuous_usage_stats), so a job's max_cost stops it mid-stream; "
        "otherwise usage comes with the last chunk only.",
    )


class AnthropicSettings(ChatSettings):
    """Chat jobs on the Anthropic Messages API through the official SDK."""

    base_url: str | None = Field(None, description="API base URL; default: Anthropic's.")


R = TypeVar("R", bound=ChatSettings)


class ChatExecutor(Generic[R]):
    """Shared run/cancel logic; subclasses talk to their SDK."""

    kind: ClassVar[str] = ""
    local: ClassVar[bool] = False
    package: ClassVar[str] = ""

    def __init__(self) -> None:
        self._inner: asyncio.Task[Outcome] | None = None
        self._cancelled = False

    async def run(self, ctx: Context[R]) -> Outcome:
        s = ctx.settings
        model = ctx.job.model or s.model or (s.models[0] if s.models else None)
        if not model:
            return failed(
                "input", "no_model", f"provider {ctx.provider!r} has no model: set `model`"
            )
        try:
            key = await s.credential()
        except ConfigError as exc:
            return failed("input", "credential", exc.message)
        messages = ctx.job.messages or [
            {"role": "user", "content": ctx.job.prompt or ctx.job.command or ""}
        ]
        ctx.started(None)
        self._inner = asyncio.ensure_future(self.chat(ctx, model, key, messages))
        try:
            if ctx.job.timeout:
                return await asyncio.wait_for(asyncio.shield(self._inner), ctx.job.timeout)
            return await self._inner
        except TimeoutError:
            self._inner.cancel()
            return failed("agent", "timeout", f"timed out after {ctx.job.timeout:g}s")
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._cancelled and not (task is not None and task.cancelling()):
                return failed("agent", "cancelled", "cancelled")
            self._inner.cancel()
            raise

    async def cancel(self) -> None:
        self._cancelled = True
        if self._inner is not None:
            self._inner.cancel()

    async def chat(
        self, ctx: Context[R], model: str, key: str | None, messages: list[dict[str, Any]]
    ) -> Outcome:
        raise NotImplementedError

    @staticmethod
    def options(ctx: Context[R]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in (ctx.job.options or {}).items():
            if name in OPTION_NAMES:
                out[OPTION_NAMES[name]] = value
        return out

    @staticmethod
    def done(
        ctx: Context[R],
        model: str,
        text: str,
        tool_calls: list[dict[str, Any]],
        finish: str | None,
        usage: dict[str, Any] | None,
        cost: float | None = None,
    ) -> Outcome:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if tool_calls:
            message["tool_calls"] = tool_calls
        usage = dict(usage or {})
        usage["model"] = model
        ctx.emit("chat.message", {"message": message, "finish_reason": finish, "usage": usage})
        return Outcome(status="done", result=text, message=message, usage=usage, cost=cost)


class OpenAIExecutor(ChatExecutor[OpenAISettings]):
    kind: ClassVar[str] = "openai"
    settings: ClassVar[type[ProviderSettings]] = OpenAISettings

    async def chat(
        self,
        ctx: Context[OpenAISettings],
        model: str,
        key: str | None,
        messages: list[dict[str, Any]],
    ) -> Outcome:
        try:
            import openai
        except ImportError:
            return failed("input", "missing_sdk", "pip install 'corral[remote]' (openai SDK)")
        s = ctx.settings
        client = _client(
            openai.AsyncOpenAI,
            base_url=s.base_url,
            api_key=key or "none",
            timeout=s.timeout,
            max_retries=s.max_retries,
        )
        kwargs = self.options(ctx)
        if ctx.job.tools:
            kwargs["tools"] = ctx.job.tools
        parts: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        finish: str | None = None
        usage: dict[str, Any] | None = None
        cost: float | None = None
        stream_options: dict[str, Any] = {"include_usage": True}
        if s.stream_usage:
            stream_options["continuous_usage_stats"] = True
        try:
            # The SDK's overloads want TypedDicts; jobs carry plain JSON.
            create: Any = client.chat.completions.create
            stream = await create(
                model=model,
                messages=messages,
                stream=True,
                stream_options=stream_options,
                **kwargs,
            )
            async for chunk in stream:
                if chunk.usage is not None:
                    raw = chunk.usage.model_dump()
                    usage = usage_of(raw)
                    if isinstance(raw.get("cost"), int | float):
                        cost = float(raw["cost"])
                    over = over_budget(ctx, model, usage, cost)
                    if over is not None:
                        await stream.close()
                        return over
                for choice in chunk.choices:
                    delta = choice.delta
                    if delta.content:
                        parts.append(delta.content)
                        ctx.emit("chat.delta", {"content": delta.content}, ephemeral=True)
                    for tc in delta.tool_calls or []:
                        call = calls.setdefault(
                            tc.index,
                            {
                                "id": None,
                                "type": "function",
                                "function": {"name": "", "arguments": ""},
                            },
                        )
                        if tc.id:
                            call["id"] = tc.id
                        if tc.function is not None:
                            call["function"]["name"] += tc.function.name or ""
                            call["function"]["arguments"] += tc.function.arguments or ""
                    if choice.finish_reason:
                        finish = choice.finish_reason
        except openai.APIStatusError as exc:
            return http_failed(ctx.provider, exc.status_code, _message(exc), exc.response.headers)
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            return failed("infra", "unreachable", f"{ctx.provider}: {exc}")
        tool_calls = [calls[i] for i in sorted(calls)]
        return self.done(ctx, model, "".join(parts), tool_calls, finish, usage, cost)


class AnthropicExecutor(ChatExecutor[AnthropicSettings]):
    kind: ClassVar[str] = "anthropic"
    settings: ClassVar[type[ProviderSettings]] = AnthropicSettings

    async def chat(
        self,
        ctx: Context[AnthropicSettings],
        model: str,
        key: str | None,
        messages: list[dict[str, Any]],
    ) -> Outcome:
        try:
            import anthropic
        except ImportError:
            return failed("input", "missing_sdk", "pip install 'corral[remote]' (anthropic SDK)")
        system = "\n\n".join(
            str(m.get("content", "")) for m in messages if m.get("role") in ("system", "developer")
        )
        turns = [
            {"role": m["role"], "content": m.get("content") or ""}
            for m in messages
            if m.get("role") in ("user", "assistant")
        ]
        if len(turns) != len([m for m in messages if m.get("role") not in ("system", "developer")]):
            return failed(
                "input",
                "bad_messages",
                "the anthropic provider takes system, user and "
                "assistant messages (tool messages: use the openai kind)",
            )
        s = ctx.settings
        client = _client(
            anthropic.AsyncAnthropic,
            base_url=s.base_url,
            api_key=key,
            timeout=s.timeout,
            max_retries=s.max_retries,
        )
        kwargs = self.options(ctx)
        kwargs.setdefault("max_tokens", 4096)
        if "stop" in kwargs:
            stop = kwargs.pop("stop")
            kwargs["stop_sequences"] = [stop] if isinstance(stop, str) else stop
        for unsupported in ("seed", "presence_penalty", "frequency_penalty"):
            kwargs.pop(unsupported, None)
        if system:
            kwargs["system"] = system
        if ctx.job.tools:
            kwargs["tools"] = [_anthropic_tool(t) for t in ctx.job.tools]
        try:
            open_stream: Any = client.messages.stream
            async with open_stream(model=model, messages=turns, **kwargs) as stream:
                async for text in stream.text_stream:
                    ctx.emit("chat.delta", {"content": text}, ephemeral=True)
                final = await stream.get_final_message()
        except anthropic.APIStatusError as exc:
            return http_failed(ctx.provider, exc.status_code, _message(exc), exc.response.headers)
        except (anthropic.APIConnectionError, anthropic.APITimeoutError) as exc:
            return failed("infra", "unreachable", f"{ctx.provider}: {exc}")
        text = "".join(b.text for b in final.content if b.type == "text")
        tool_calls = [
            {
                "id": b.id,
                "type": "function",
                "function": {"name": b.name, "arguments": _json(b.input)},
            }
            for b in final.content
            if b.type == "tool_use"
        ]
        usage = usage_of(final.usage.model_dump())
        return self.done(ctx, model, text, tool_calls, final.stop_reason, usage)


def over_budget(
    ctx: Context[Any], model: str, usage: dict[str, Any] | None, cost: float | None
) -> Outcome | None:
    """The outcome of a run stopped because the usage streamed so far costs
    more than the job's ``max_cost`` (None while it does not, or while its
    price is unknown: then nothing can be enforced)."""
    limit = ctx.job.max_cost
    if limit is None:
        return None
    spent, source = pricing.price(cost, usage, model, pricing.price_ref(ctx.settings))
    if spent is None or spent <= limit:
        return None
    return failed(
        "budget",
        "max_cost",
        f"stopped: the run cost ${spent:.6f} ({source}) so far, over its max_cost ${limit:g}",
        usage={**(usage or {}), "model": model},
        cost=spent if source == "reported" else None,
    )


def _anthropic_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI-shaped tool definition as Anthropic takes it."""
    fn = tool.get("function", tool)
    return {
        "name": fn.get("name"),
        "description": fn.get("description", ""),
        "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
    }


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(getattr(exc, "message", exc))
