"""The Ollama-compatible surface, so Ollama clients can point at corral and
get a queue and auth in front of their model servers:

- ``GET /api/tags``: the models of the enabled chat providers;
- ``POST /api/embed``: proxied straight to the ``[ollama] embed_provider``
  (not queued);
- ``POST /api/chat``: a synchronous facade over a chat job (non-streaming, or
  NDJSON streaming from the job's ``chat.delta`` events).

Authenticated like every endpoint. Errors use Ollama's shape
(``{"error": "..."}``) here, because that is what its clients parse."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field, ValidationError

from corral.api.deps import Reader, Services, Svc, Writer
from corral.config import ProviderSettings
from corral.errors import ConfigError, CorralError
from corral.jobs import TERMINAL, JobState
from corral.models import Event, Job, JobCreate

router = APIRouter(tags=["ollama"])

CHAT_KINDS = ("openai", "anthropic")
STARTED = datetime(2024, 1, 1, tzinfo=UTC).isoformat()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _chat_providers(svc: Services) -> dict[str, ProviderSettings]:
    return {
        name: p for name, p in svc.settings.providers.items() if p.kind in CHAT_KINDS and p.enabled
    }


def _models(p: ProviderSettings) -> list[str]:
    names = list(p.models)
    if p.model and p.model not in names:
        names.append(p.model)
    return names


def provider_for(svc: Services, model: str) -> str | None:
    for name, p in _chat_providers(svc).items():
        if model in _models(p):
            return name
    return None


@router.get("/api/tags")
async def tags(svc: Svc, who: Reader) -> dict[str, Any]:
    """The models of the enabled chat providers, in Ollama's shape."""
    models = []
    for name, p in _chat_providers(svc).items():
        for m in _models(p):
            models.append(
                {
                    "name": m,
                    "model": m,
                    "modified_at": STARTED,
                    "size": 0,
                    "digest": hashlib.sha256(f"{name}/{m}".encode()).hexdigest(),
                    "details": {
                        "parent_model": "",
                        "format": "",
                        "family": "",
                        "families": None,
                        "parameter_size": "",
                        "quantization_level": "",
                        "provider": name,
                    },
                }
            )
    return {"models": models}


class EmbedRequest(BaseModel):
    model: str | None = None
    input: str | list[str] = Field(description="A string or a list of strings.")
    truncate: bool | None = None
    options: dict[str, Any] | None = None
    keep_alive: Any = None
    dimensions: int | None = None


@router.post("/api/embed", response_model=None)
async def embed(request: Request, svc: Svc, who: Writer) -> Response:
    """Embeddings from the ``[ollama] embed_provider``, proxied (not queued)."""
    try:
        body = EmbedRequest.model_validate(await request.json())
    except (ValueError, ValidationError) as exc:
        return _error(400, f"invalid request: {exc}")
    name = svc.settings.ollama.embed_provider
    provider = svc.settings.providers.get(name or "")
    if provider is None or provider.kind != "openai":
        return _error(
            501, "no embedding provider: set [ollama] embed_provider to an openai provider"
        )
    model = body.model or provider.embedding_model
    if not model:
        return _error(400, "no model: pass model or set embedding_model of the provider")
    try:
        import openai
    except ImportError:
        return _error(501, "the openai SDK is not installed: pip install 'corral[remote]'")
    try:
        key = provider.credential()
    except ConfigError as exc:
        return _error(500, exc.message)
    client = openai.AsyncOpenAI(
        base_url=provider.base_url,
        api_key=key or "none",
        timeout=provider.timeout,
        max_retries=provider.max_retries,
    )
    started = time.perf_counter_ns()
    try:
        extra: dict[str, Any] = {"dimensions": body.dimensions} if body.dimensions else {}
        result = await client.embeddings.create(model=model, input=body.input, **extra)
    except openai.APIStatusError as exc:
        return _error(exc.status_code if exc.status_code < 500 else 502, f"{name}: {exc.message}")
    except (openai.APIConnectionError, openai.APITimeoutError) as exc:
        return _error(502, f"{name}: {exc}")
    finally:
        await client.close()
    return JSONResponse(
        {
            "model": model,
            "embeddings": [d.embedding for d in result.data],
            "total_duration": time.perf_counter_ns() - started,
            "load_duration": 0,
            "prompt_eval_count": result.usage.prompt_tokens if result.usage else 0,
        }
    )


class ChatRequest(BaseModel):
    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    options: dict[str, Any] | None = None
    think: bool | None = None
    stream: bool = True
    format: Any = None
    keep_alive: Any = None


def _counts(job: Job) -> dict[str, int]:
    usage = job.usage or {}
    prompt = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    output = usage.get("completion_tokens", usage.get("output_tokens", 0))
    return {"prompt_eval_count": int(prompt or 0), "eval_count": int(output or 0)}


def _final(job: Job, model: str, started: int, content: str | None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    tool_calls = (job.message or {}).get("tool_calls")
    if tool_calls:
        message["tool_calls"] = [
            {"function": {"name": c["function"]["name"], "arguments": _args(c)}} for c in tool_calls
        ]
    return {
        "model": model,
        "created_at": _now(),
        "message": message,
        "done": True,
        "done_reason": "stop",
        "total_duration": time.perf_counter_ns() - started,
        "load_duration": 0,
        "prompt_eval_duration": 0,
        "eval_duration": 0,
        **_counts(job),
    }


def _args(call: dict[str, Any]) -> Any:
    raw = call["function"].get("arguments") or "{}"
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@router.post("/api/chat", response_model=None)
async def chat(request: Request, svc: Svc, who: Writer) -> Response:
    """A chat job, answered synchronously in Ollama's shape."""
    try:
        body = ChatRequest.model_validate(await request.json())
    except (ValueError, ValidationError) as exc:
        return _error(400, f"invalid request: {exc}")
    provider = provider_for(svc, body.model)
    if provider is None:
        return _error(404, f'model "{body.model}" not found, try pulling it first')
    try:
        spec = JobCreate(
            messages=body.messages,
            tools=body.tools,
            options=body.options,
            think=body.think,
            model=body.model,
            preferred_ai=provider,
            source="api",
            title="ollama /api/chat",
        )
    except ValidationError as exc:
        return _error(400, f"invalid request: {exc.errors()[0]['msg']}")
    started = time.perf_counter_ns()
    session = await svc.store.sessions.create(title="ollama /api/chat")
    spec.session_id = session.id
    sub = svc.store.bus.subscribe(f"session:{session.id}", "jobs", maxsize=100_000)
    try:
        job, _ = await svc.store.jobs.create(spec, svc.route(spec))
    except CorralError:
        sub.close()
        raise
    timeout = svc.settings.ollama.chat_timeout
    if not body.stream:
        try:
            async for _ in _deltas(svc, sub, job.id, timeout):
                pass
        except TimeoutError:
            return _error(504, f"job {job.id} did not end within {timeout:g}s")
        finally:
            sub.close()
        job = await svc.store.jobs.get(job.id)
        if job.state is not JobState.DONE:
            return _error(500, job.error or f"job {job.id} {job.state.value}")
        return JSONResponse(_final(job, body.model, started, job.result))

    async def lines() -> AsyncIterator[bytes]:
        try:
            async for delta in _deltas(svc, sub, job.id, timeout):
                chunk = {
                    "model": body.model,
                    "created_at": _now(),
                    "message": {"role": "assistant", "content": delta},
                    "done": False,
                }
                yield (json.dumps(chunk) + "\n").encode()
        except TimeoutError:
            yield (json.dumps({"error": f"job {job.id} did not end in time"}) + "\n").encode()
            return
        finally:
            sub.close()
        final = await svc.store.jobs.get(job.id)
        if final.state is not JobState.DONE:
            error = final.error or f"job {final.id} {final.state.value}"
            yield (json.dumps({"error": error}) + "\n").encode()
            return
        yield (json.dumps(_final(final, body.model, started, "")) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


async def _deltas(svc: Services, sub: Any, job_id: str, timeout: float) -> AsyncIterator[str]:
    """The job's streamed text pieces, until it ends (also when it ended already).
    The bus says when it ends; the job is read from the database only when the
    bus has been quiet for a second (an end it did not carry is caught there)."""
    deadline = time.monotonic() + timeout
    quiet = True  # before the first wait: the job may have ended already
    while True:
        if quiet and (await svc.store.jobs.get(job_id)).state in TERMINAL:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        messages = await sub.get(timeout=min(remaining, 1.0))
        quiet = not messages
        for message in messages:
            if message == job_id:
                return  # the "jobs" topic: this job ended
            for event in message if isinstance(message, list) else ():
                if not isinstance(event, Event) or event.job_id != job_id:
                    continue
                if event.type == "chat.delta" and event.payload.get("content"):
                    yield str(event.payload["content"])
                elif event.type == "job.state" and event.payload.get("to") in TERMINAL:
                    return
