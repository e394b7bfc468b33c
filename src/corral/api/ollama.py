"""The Ollama-compatible surface, so Ollama clients can point at corral and
get a queue and auth in front of their model servers:

- ``GET /api/tags``: the models of the enabled chat providers;
- ``POST /api/embed``: proxied straight to the ``[ollama] embed_provider``
  (not queued);
- ``POST /api/chat``: a synchronous facade over a chat job (non-streaming, or
  NDJSON streaming from the job's ``chat.delta`` events);
- ``POST /api/generate``: the same for a prompt, in generate's shape;
- ``POST /api/show``: a model's provider, capabilities and provider-listed details;
- ``GET /api/ps``: the models with a chat job running; ``GET /api/version``;
- ``POST /api/embeddings``: the legacy one-prompt form of /api/embed.

Authenticated like every endpoint. Errors use Ollama's shape
(``{"error": "..."}``) here (api/errors.py does the same for every /api/
path), because that is what its clients parse."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field, ValidationError

from corral import __version__
from corral.api.deps import Reader, Svc, Writer
from corral.errors import ConfigError, CorralError
from corral.executors.chat import AnthropicSettings, ChatSettings, OpenAISettings
from corral.executors.settings import RemoteSettings
from corral.intake.submit import submit
from corral.jobs import TERMINAL, JobState
from corral.models import Event, Job, JobCreate
from corral.protocol import topics
from corral.services import Services

router = APIRouter(tags=["ollama"])

STARTED = datetime(2024, 1, 1, tzinfo=UTC).isoformat()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _chat_providers(svc: Services) -> dict[str, ChatSettings]:
    return {
        name: p
        for name, p in svc.settings.providers.items()
        if isinstance(p, ChatSettings) and p.enabled
    }


def _models(p: ChatSettings) -> list[str]:
    names = list(p.models)
    if p.model and p.model not in names:
        names.append(p.model)
    return names


def provider_for(svc: Services, model: str) -> str | None:
    for name, p in _chat_providers(svc).items():
        if model in _models(p):
            return name
    return None


def _details(provider: str) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "",
        "family": "",
        "families": None,
        "parameter_size": "",
        "quantization_level": "",
        "provider": provider,
    }


def _entry(provider: str, model: str) -> dict[str, Any]:
    """A model as /api/tags and /api/ps list it."""
    return {
        "name": model,
        "model": model,
        "modified_at": STARTED,
        "size": 0,
        "digest": hashlib.sha256(f"{provider}/{model}".encode()).hexdigest(),
        "details": _details(provider),
    }


@router.get("/api/tags")
async def tags(svc: Svc, who: Reader) -> dict[str, Any]:
    """The models of the enabled chat providers, in Ollama's shape."""
    return {
        "models": [_entry(name, m) for name, p in _chat_providers(svc).items() for m in _models(p)]
    }


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
    started = time.perf_counter_ns()
    done = await _embeddings(svc, body.model, body.input, body.dimensions)
    if isinstance(done, Response):
        return done
    model, vectors, prompt_tokens = done
    return JSONResponse(
        {
            "model": model,
            "embeddings": vectors,
            "total_duration": time.perf_counter_ns() - started,
            "load_duration": 0,
            "prompt_eval_count": prompt_tokens,
        }
    )


async def _embeddings(
    svc: Services, model: str | None, inputs: str | list[str], dimensions: int | None
) -> tuple[str, list[list[float]], int] | Response:
    """The embed provider's vectors for ``inputs`` (model, vectors, prompt
    tokens), or the error response to give."""
    name = svc.settings.ollama.embed_provider
    provider = svc.settings.providers.get(name or "")
    if not isinstance(provider, OpenAISettings):
        return _error(
            501, "no embedding provider: set [ollama] embed_provider to an openai provider"
        )
    model = model or provider.embedding_model
    if not model:
        return _error(400, "no model: pass model or set embedding_model of the provider")
    try:
        import openai
    except ImportError:
        return _error(501, "the openai SDK is not installed: pip install 'corral[remote]'")
    try:
        key = await provider.credential()
    except ConfigError as exc:
        return _error(500, exc.message)
    client = openai.AsyncOpenAI(
        base_url=provider.base_url,
        api_key=key or "none",
        timeout=provider.timeout,
        max_retries=provider.max_retries,
    )
    try:
        extra: dict[str, Any] = {"dimensions": dimensions} if dimensions else {}
        result = await client.embeddings.create(model=model, input=inputs, **extra)
    except openai.APIStatusError as exc:
        return _error(exc.status_code if exc.status_code < 500 else 502, f"{name}: {exc.message}")
    except (openai.APIConnectionError, openai.APITimeoutError) as exc:
        return _error(502, f"{name}: {exc}")
    finally:
        await client.close()
    vectors = [list(d.embedding) for d in result.data]
    return model, vectors, result.usage.prompt_tokens if result.usage else 0


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
    begun = await _start_chat_job(svc, spec)
    if isinstance(begun, Response):
        return begun
    job, sub = begun
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


async def _unserved(svc: Services, job: Job, wait: float) -> str | None:
    """Why no runner will take ``job``: None as soon as an active runner serves
    its provider (or it left the queue); after ``wait`` seconds without one,
    the job is cancelled and the reason returned."""
    deadline = time.monotonic() + wait
    while True:
        runners = await svc.store.runners.list()
        if any(job.provider in r.providers for r in runners):
            return None
        job = await svc.store.jobs.get(job.id)
        if job.state is not JobState.QUEUED:
            return None
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    unserved = f"no active runner serves provider {job.provider!r}"
    reason = await svc.store.jobs.waiting(job)
    if reason and reason != unserved:
        unserved = f"{reason}; and {unserved}"
    with contextlib.suppress(CorralError):  # it may have ended meanwhile
        await svc.store.jobs.cancel(job.id, by="ollama /api/chat (no runner serves it)")
    settings = svc.settings.providers.get(job.provider)
    assigned = settings.runner if isinstance(settings, RemoteSettings) else None
    start = f"corral runner --name {assigned}" if assigned else "a runner that serves it"
    return f"{unserved}: start {start} (job {job.id} cancelled)"


async def _deltas(svc: Services, sub: Any, job_id: str, timeout: float) -> AsyncIterator[str]:
    """The job's streamed text pieces, until it ends (also when it ended already).
    The bus says when it ends; the job is read from the database only when the
    bus has been quiet for a second (an end it did not carry is caught there).
    A job that ended before the first look still has its pieces, and its end,
    on the bus (subscribed before the job was made): they are read up to that
    end, not dropped (a quick job's pieces were, now and then)."""
    deadline = time.monotonic() + timeout
    ended = (await svc.store.jobs.get(job_id)).state in TERMINAL
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        messages = await sub.get(timeout=min(remaining, 1.0))
        if not messages and (ended or (await svc.store.jobs.get(job_id)).state in TERMINAL):
            return
        for message in messages:
            if message == job_id:
                return  # topics.JOBS: this job ended
            for event in message if isinstance(message, list) else ():
                if not isinstance(event, Event) or event.job_id != job_id:
                    continue
                if event.type == "chat.delta" and event.payload.get("content"):
                    yield str(event.payload["content"])
                elif event.type == "job.state" and event.payload.get("to") in TERMINAL:
                    return


# --- /api/version, /api/show, /api/ps, /api/generate, /api/embeddings -----------------------


@router.get("/api/version")
async def version(svc: Svc, who: Reader) -> dict[str, str]:
    """The Ollama version whose API this surface follows (``[ollama] version``;
    clients probe it first), and corral's own."""
    return {"version": svc.settings.ollama.version, "corral": __version__}


class ShowRequest(BaseModel):
    model: str = Field(min_length=1)
    verbose: bool | None = None
    name: str | None = None  # older clients' spelling of model


@router.post("/api/show", response_model=None)
async def show(request: Request, svc: Svc, who: Reader) -> Response:
    """A model's details: what corral's configuration says, and what its
    provider's model list says of it (``model_info``)."""
    try:
        raw = await request.json()
        if isinstance(raw, dict) and "model" not in raw and raw.get("name"):
            raw = {**raw, "model": raw["name"]}
        body = ShowRequest.model_validate(raw)
    except (ValueError, ValidationError) as exc:
        return _error(400, f"invalid request: {exc}")
    found = _known_model(svc, body.model)
    if found is None:
        return _error(404, f"model '{body.model}' not found")
    name, provider, capabilities = found
    listed = await _provider_model(name, provider, body.model)
    if isinstance(listed, Response):
        return listed
    info: dict[str, Any] = {"corral.provider": name, "corral.kind": provider.kind}
    info.update({f"{provider.kind}.{k}": v for k, v in listed.items() if _scalar(v)})
    return JSONResponse(
        {
            "modelfile": "",
            "parameters": "",
            "template": "",
            "details": _details(name),
            "model_info": info,
            "capabilities": capabilities,
            "modified_at": _modified(listed),
        }
    )


def _known_model(svc: Services, model: str) -> tuple[str, ChatSettings, list[str]] | None:
    """The provider serving ``model`` and what the model does here: a chat
    provider's model, or the embed provider's embedding model."""
    name = provider_for(svc, model)
    if name is not None:
        return name, _chat_providers(svc)[name], ["completion", "tools"]
    embedder = svc.settings.ollama.embed_provider or ""
    provider = svc.settings.providers.get(embedder)
    if (
        isinstance(provider, OpenAISettings)
        and provider.enabled
        and provider.embedding_model == model
    ):
        return embedder, provider, ["embedding"]
    return None


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _modified(listed: dict[str, Any]) -> str:
    created = listed.get("created") or listed.get("created_at")
    if isinstance(created, int | float) and not isinstance(created, bool):
        return datetime.fromtimestamp(created, UTC).isoformat()
    if isinstance(created, str) and created:
        return created
    if isinstance(created, datetime):
        return created.isoformat()
    return STARTED


# How long /api/show waits for a provider's model list.
SHOW_TIMEOUT = 10.0


async def _provider_model(
    name: str, provider: ChatSettings, model: str
) -> dict[str, Any] | Response:
    """The entry for ``model`` in the provider's own model list ({} when it does
    not list it, e.g. an alias), or the error response to give when it cannot
    be asked."""
    try:
        key = await provider.credential()
    except ConfigError as exc:
        return _error(500, f"{name}: {exc.message}")
    timeout = min(provider.timeout, SHOW_TIMEOUT)
    try:
        if isinstance(provider, AnthropicSettings):
            import anthropic

            a_client = anthropic.AsyncAnthropic(
                base_url=provider.base_url, api_key=key, timeout=timeout, max_retries=0
            )
            try:
                a_page = await a_client.models.list(limit=1000)
                entries = [m.model_dump(mode="json") for m in a_page.data]
            except anthropic.APIStatusError as exc:
                return _error(502, f"{name}: listing models failed: {exc.message}")
            except anthropic.APIError as exc:
                return _error(502, f"{name}: listing models failed: {exc}")
            finally:
                await a_client.close()
        else:
            import openai

            o_client = openai.AsyncOpenAI(
                base_url=provider.base_url, api_key=key or "none", timeout=timeout, max_retries=0
            )
            try:
                o_page = await o_client.models.list()
                entries = [m.model_dump(mode="json") for m in o_page.data]
            except openai.APIStatusError as exc:
                return _error(502, f"{name}: listing models failed: {exc.message}")
            except openai.APIError as exc:
                return _error(502, f"{name}: listing models failed: {exc}")
            finally:
                await o_client.close()
    except ImportError:
        return _error(501, "the provider SDKs are not installed: pip install 'corral[remote]'")
    for entry in entries:
        if entry.get("id") == model:
            return {k: v for k, v in entry.items() if k not in ("id", "object", "type")}
    return {}


@router.get("/api/ps")
async def ps(svc: Svc, who: Reader) -> dict[str, Any]:
    """The models busy now: those with a chat job assigned or running (a remote
    model is never "loaded" here; it is in use while a job runs on it)."""
    chat = _chat_providers(svc)
    active = await svc.store.jobs.list(states=[JobState.ASSIGNED, JobState.RUNNING], limit=500)
    seen: dict[tuple[str, str], None] = {}
    for job in active:
        provider = chat.get(job.provider)
        if provider is None:
            continue
        # The model its executor uses (executors/chat.py).
        model = job.model or provider.model or (provider.models[0] if provider.models else None)
        if model:
            seen[(job.provider, model)] = None
    now = _now()
    return {
        "models": [
            {**_entry(name, model), "expires_at": now, "size_vram": 0} for name, model in seen
        ]
    }


class GenerateRequest(BaseModel):
    model: str = Field(min_length=1)
    prompt: str | None = None
    system: str | None = None
    stream: bool = True
    options: dict[str, Any] | None = None
    think: bool | None = None
    format: Any = None
    keep_alive: Any = None
    # Ollama's, for a raw model on Ollama itself: refused when given (a chat job has none).
    suffix: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool | None = None
    images: list[str] | None = None


_NO_CHAT_EQUIVALENT = ("suffix", "template", "context", "raw", "images")


@router.post("/api/generate", response_model=None)
async def generate(request: Request, svc: Svc, who: Writer) -> Response:
    """A completion in Ollama's shape: a chat job of the prompt (and ``system``),
    answered when it ends; NDJSON pieces as it streams unless ``stream`` is false."""
    try:
        body = GenerateRequest.model_validate(await request.json())
    except (ValueError, ValidationError) as exc:
        return _error(400, f"invalid request: {exc}")
    unsupported = [f for f in _NO_CHAT_EQUIVALENT if getattr(body, f)]
    if unsupported:
        return _error(
            400, f"not supported by corral (a chat job has none): {', '.join(unsupported)}"
        )
    provider = provider_for(svc, body.model)
    if provider is None:
        return _error(404, f'model "{body.model}" not found, try pulling it first')
    if not body.prompt:
        # Ollama loads (or, with keep_alive 0, unloads) the model: nothing to load here.
        reason = "unload" if body.keep_alive in (0, "0", "0s") else "load"
        return JSONResponse(
            {
                "model": body.model,
                "created_at": _now(),
                "response": "",
                "done": True,
                "done_reason": reason,
            }
        )
    messages = [{"role": "system", "content": body.system}] if body.system else []
    messages.append({"role": "user", "content": body.prompt})
    try:
        spec = JobCreate(
            messages=messages,
            options=body.options,
            think=body.think,
            model=body.model,
            preferred_ai=provider,
            source="api",
            title="ollama /api/generate",
        )
    except ValidationError as exc:
        return _error(400, f"invalid request: {exc.errors()[0]['msg']}")
    started = time.perf_counter_ns()
    begun = await _start_chat_job(svc, spec)
    if isinstance(begun, Response):
        return begun
    job, sub = begun
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
        return JSONResponse(_generated(job, body.model, started, job.result or ""))

    async def lines() -> AsyncIterator[bytes]:
        try:
            async for delta in _deltas(svc, sub, job.id, timeout):
                piece = {
                    "model": body.model,
                    "created_at": _now(),
                    "response": delta,
                    "done": False,
                }
                yield (json.dumps(piece) + "\n").encode()
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
        yield (json.dumps(_generated(final, body.model, started, "")) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


async def _start_chat_job(svc: Services, spec: JobCreate) -> tuple[Job, Any] | Response:
    """A chat job in a session of its own, and a subscription to its events
    (made before the job, so no piece is missed); or the 503 saying that no
    runner serves its provider (after ``[ollama] unserved_wait``)."""
    session = await svc.store.sessions.create(title=spec.title)
    spec.session_id = session.id
    sub = svc.store.bus.subscribe(topics.session(session.id), topics.JOBS, maxsize=100_000)
    try:
        job, _ = await submit(svc, spec)
        unserved = await _unserved(svc, job, svc.settings.ollama.unserved_wait)
    except CorralError:
        sub.close()
        raise
    if unserved is not None:
        sub.close()
        return _error(503, unserved)
    return job, sub


def _generated(job: Job, model: str, started: int, text: str) -> dict[str, Any]:
    """The last /api/generate object (``context`` omitted: no token ids here)."""
    return {
        "model": model,
        "created_at": _now(),
        "response": text,
        "done": True,
        "done_reason": "stop",
        "total_duration": time.perf_counter_ns() - started,
        "load_duration": 0,
        "prompt_eval_duration": 0,
        "eval_duration": 0,
        **_counts(job),
    }


class EmbeddingsRequest(BaseModel):
    model: str | None = None
    prompt: str | None = None
    options: dict[str, Any] | None = None
    keep_alive: Any = None


@router.post("/api/embeddings", response_model=None)
async def embeddings(request: Request, svc: Svc, who: Writer) -> Response:
    """Ollama's legacy embeddings endpoint (one ``prompt``, one ``embedding``),
    proxied like /api/embed."""
    try:
        body = EmbeddingsRequest.model_validate(await request.json())
    except (ValueError, ValidationError) as exc:
        return _error(400, f"invalid request: {exc}")
    if not body.prompt:
        return JSONResponse({"embedding": []})
    done = await _embeddings(svc, body.model, body.prompt, None)
    if isinstance(done, Response):
        return done
    _, vectors, _ = done
    return JSONResponse({"embedding": vectors[0] if vectors else []})
