"""Python client for the corral HTTP API. The CLI uses it for everything it
does over HTTP.

    from corral.client import Client
    with Client() as c:                       # CORRAL_URL / CORRAL_TOKEN / local admin key
        result = c.run("echo hello")          # submit, block until it ends
        print(result.state, result.result)

``run()`` learns that the job ended from a signed webhook to a receiver it
opens on a free port, and falls back to polling when it cannot bind one, when
``polling=True``, or when no delivery arrives within ``push_grace`` seconds
(the server cannot reach this host). ``AsyncClient`` has the same methods as
coroutines."""

from __future__ import annotations

import asyncio
import builtins
import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any, Literal

import httpx
from httpx_sse import aconnect_sse, connect_sse
from pydantic import BaseModel, Field

from corral.config import Settings, load_settings
from corral.discovery import recorded
from corral.errors import ClientError, CorralError
from corral.jobs import TERMINAL, JobState
from corral.models import Event, Job, Session
from corral.webhooks import Receiver


class ApiError(CorralError):
    """The server refused the request."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class RunTimeout(ClientError):
    """``run()`` or ``wait()`` gave up waiting; the job goes on unless
    ``cancel_on_timeout`` was set."""

    code = "timeout"

    def __init__(self, message: str, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class Result(BaseModel):
    """How a job ended, as ``run()`` returns it."""

    job_id: str
    session_id: str
    state: JobState
    result: str | None = None
    error: str | None = None
    reason: str | None = None
    failure: str | None = None
    attempts: int
    provider: str
    usage: dict[str, Any] | None = None
    cost: float | None = None
    artifacts: builtins.list[str] = Field(default_factory=list)
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    via: Literal["webhook", "polling"] = Field(description="How run() learnt that it ended.")

    @property
    def ok(self) -> bool:
        return self.state is JobState.DONE

    @classmethod
    def of(cls, job: Job, artifacts: builtins.list[str], via: str) -> Result:
        return cls.model_validate(
            {
                **job.model_dump(),
                "job_id": job.id,
                "attempts": job.attempt,
                "artifacts": artifacts,
                "via": via,
            }
        )


def _terminal(body: dict[str, object]) -> bool:
    return body.get("state") in {s.value for s in TERMINAL}


def _seen_any(body: dict[str, object]) -> bool:
    return True


# run(): how long a pushed job may stay silent before one safety poll.
SAFETY_POLL = 15.0


def resolve(
    url: str | None = None, token: str | None = None, settings: Settings | None = None
) -> tuple[str, str]:
    """The server URL and token: arguments, then CORRAL_URL / CORRAL_TOKEN,
    then what the server using the data dir recorded (else ``host``/``port``)
    and its admin key file."""
    url = url or os.environ.get("CORRAL_URL")
    token = token or os.environ.get("CORRAL_TOKEN")
    if url is None or token is None:
        settings = settings or load_settings()
        url = url or recorded(settings.data_dir) or settings.local_url()
        if token is None:
            key_file = settings.admin_key_file
            try:
                token = key_file.read_text().strip()
            except FileNotFoundError:
                raise ClientError(
                    f"no API key: pass --token or set CORRAL_TOKEN (no admin key at {key_file}; "
                    "`corral serve` writes one on first start; a server with another "
                    "--data-dir: set CORRAL_DATA_DIR)"
                ) from None
            except OSError as exc:
                raise ClientError(f"cannot read the admin key {key_file}: {exc}") from exc
    return url.rstrip("/"), token


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        err = resp.json()["error"]
        code, message = str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", f"HTTP {resp.status_code}: {resp.text[:200]}"
    raise ApiError(resp.status_code, code, message)


class Client:
    """Synchronous client. Methods return typed models where the API has one."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        settings: Settings | None = None,
    ) -> None:
        self.url, token = resolve(url, token, settings)
        self._http = httpx.Client(
            base_url=self.url, timeout=timeout, headers={"Authorization": f"Bearer {token}"}
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kw: Any) -> Any:
        return self._send(method, path, **kw).json()

    def _raw(self, method: str, path: str, **kw: Any) -> bytes:
        return self._send(method, path, **kw).content

    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise ClientError(
                f"cannot reach corral at {self.url} ({exc}); is `corral serve` running?"
            ) from exc
        _raise_for(resp)
        return resp

    # jobs
    def submit(
        self, prompt: str | None = None, *, command: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Submit a job: a ``prompt`` for an agent (routing picks the provider)
        or a shell ``command``; ``fields`` are the other job fields."""
        body = {"prompt": prompt, "command": command, **fields}
        return dict(
            self._request("POST", "/jobs", json={k: v for k, v in body.items() if v is not None})
        )

    def get(self, job_id: str) -> Job:
        return Job.model_validate(self._request("GET", f"/jobs/{job_id}"))

    def list(
        self,
        *,
        state: builtins.list[str] | None = None,
        session_id: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> builtins.list[Job]:
        data = self._request("GET", "/jobs", params=_job_params(limit, state, session_id, before))
        return [Job.model_validate(j) for j in data["jobs"]]

    def cancel(self, job_id: str) -> Job:
        return Job.model_validate(self._request("POST", f"/jobs/{job_id}/cancel"))

    def retry(self, job_id: str) -> Job:
        return Job.model_validate(self._request("POST", f"/jobs/{job_id}/retry"))

    def wait(self, job_id: str, timeout: float | None = None, interval: float = 0.2) -> Job:
        """Block until the job ends (following its event stream)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for _ in self.job_events(job_id, timeout=timeout):
            pass
        while True:
            job = self.get(job_id)
            if job.state in TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise RunTimeout(f"job {job_id} still {job.state.value} after {timeout:g}s", job_id)
            time.sleep(interval)

    def run(
        self,
        prompt: str | None = None,
        *,
        command: str | None = None,
        timeout: float | None = None,
        polling: bool = False,
        poll_interval: float = 0.05,
        push_grace: float = 5.0,
        cancel_on_timeout: bool = False,
        receiver_host: str = "127.0.0.1",
        advertise_host: str | None = None,
        **fields: Any,
    ) -> Result:
        """Submit a job (a ``prompt``, or a shell ``command``) and block until
        it ends; returns its ``Result``.

        Push first: a receiver on a free port of ``receiver_host`` (advertised
        as ``advertise_host``, e.g. this host's name as the server sees it) is
        the job's webhook, with a fresh secret. Polling (first after
        ``poll_interval`` seconds, then 1.5 times longer each time up to 5 s:
        a short job is seen soon, a long one costs few requests) when the receiver
        cannot bind, when ``polling=True``, or when nothing is delivered within
        ``push_grace`` seconds. On ``timeout`` raises RunTimeout; the job goes
        on unless ``cancel_on_timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        receiver = None if polling else _open_receiver(receiver_host, advertise_host)
        try:
            if receiver is not None:
                fields["webhook"] = _run_webhook(receiver)
            job_id = str(self.submit(prompt, command=command, **fields)["job_id"])
            try:
                via = "polling"
                if receiver is not None and self._pushed(receiver, job_id, deadline, push_grace):
                    via = "webhook"
                else:
                    self._poll(job_id, deadline, poll_interval)
            except RunTimeout:
                if cancel_on_timeout:
                    self.cancel(job_id)
                raise
            job = self.get(job_id)
            names = [a["name"] for a in self.artifacts(job_id)]
            return Result.of(job, names, via)
        finally:
            if receiver is not None:
                receiver.close()

    def _pushed(
        self, receiver: Receiver, job_id: str, deadline: float | None, grace: float
    ) -> bool:
        """Wait for the terminal delivery; False when push does not work here."""
        if receiver.wait(job_id, _seen_any, _remaining(deadline, grace)) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise RunTimeout(f"job {job_id} did not end in time", job_id)
            return False  # nothing reached us: poll
        while True:
            if receiver.wait(job_id, _terminal, _remaining(deadline, SAFETY_POLL)) is not None:
                return True
            if self.get(job_id).state in TERMINAL:  # a delivery lost for good: still right
                return True
            if deadline is not None and time.monotonic() >= deadline:
                raise RunTimeout(f"job {job_id} did not end in time", job_id)

    def _poll(self, job_id: str, deadline: float | None, interval: float) -> None:
        while self.get(job_id).state not in TERMINAL:
            if deadline is not None and time.monotonic() >= deadline:
                raise RunTimeout(f"job {job_id} did not end in time", job_id)
            time.sleep(_remaining(deadline, interval) or 0)
            interval = min(interval * 1.5, 5.0)

    def route(self, **fields: Any) -> dict[str, Any]:
        """Where a job with ``fields`` would run, and why."""
        return dict(self._request("POST", "/route", json=fields))

    # the Ollama-compatible endpoints
    def tags(self) -> builtins.list[dict[str, Any]]:
        """The models of the server's chat providers (``GET /api/tags``)."""
        return list(self._request("GET", "/api/tags")["models"])

    def embed(self, input: str | builtins.list[str], model: str | None = None) -> Any:
        """Embeddings from the server's embedding provider (``POST /api/embed``)."""
        body = {"input": input, **({"model": model} if model else {})}
        return self._request("POST", "/api/embed", json=body)["embeddings"]

    def chat(self, model: str, messages: builtins.list[dict[str, Any]], **kw: Any) -> Any:
        """One chat turn through a queued chat job (``POST /api/chat``); the
        assistant message."""
        body = {"model": model, "messages": messages, "stream": False, **kw}
        return self._request("POST", "/api/chat", json=body, timeout=None)["message"]

    # agent daemons
    def agents(self) -> builtins.list[dict[str, Any]]:
        return list(self._request("GET", "/agents"))

    def agent(self, name: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/agents/{name}"))

    def agent_action(self, name: str, action: str) -> dict[str, Any]:
        """``start``, ``stop`` or ``restart`` an agent daemon."""
        return dict(self._request("POST", f"/agents/{name}/{action}"))

    def reload_agents(self) -> dict[str, builtins.list[str]]:
        return dict(self._request("POST", "/agents/reload"))

    def agent_logs(self, name: str, n: int = 200) -> builtins.list[dict[str, Any]]:
        return list(self._request("GET", f"/agents/{name}/logs", params={"n": n}))

    def follow_agent_logs(self, name: str, n: int = 0) -> Iterator[dict[str, Any]]:
        """An agent's lines as they are written; resumes after a dropped connection."""
        last: int | None = None
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = str(last)
            try:
                with connect_sse(
                    self._http,
                    "GET",
                    f"/sse/agents/{name}/logs",
                    params={"n": n if last is None else 0},
                    headers=headers,
                    timeout=httpx.Timeout(30.0, read=None),
                ) as source:
                    _raise_for_stream(source.response)
                    failures = 0
                    for sse in source.iter_sse():
                        if sse.data:
                            item = dict(json.loads(sse.data))
                            last = int(item["offset"])
                            yield item
            except httpx.TransportError as exc:
                failures += 1
                if failures > 20:
                    raise ClientError(f"lost the log stream from {self.url}: {exc}") from exc
                time.sleep(min(0.05 * 2**failures, 2.0))

    # webhooks
    def deliveries(self, job_id: str) -> builtins.list[dict[str, Any]]:
        """A job's webhook deliveries with their attempt logs."""
        return list(self._request("GET", f"/jobs/{job_id}/deliveries"))

    def all_deliveries(
        self, *, state: str | None = None, job_id: str | None = None, limit: int = 100
    ) -> builtins.list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if state:
            params["state"] = state
        if job_id:
            params["job_id"] = job_id
        return list(self._request("GET", "/webhooks/deliveries", params=params))

    def redeliver(self, delivery_id: str) -> dict[str, Any]:
        return dict(self._request("POST", f"/webhooks/deliveries/{delivery_id}/redeliver"))

    def webhook_secret(self) -> str:
        """The server's default webhook secret (admin)."""
        return str(self._request("GET", "/admin/webhook-secret")["secret"])

    # the kill switch and status
    def pause(self) -> bool:
        return bool(self._request("POST", "/admin/pause")["paused"])

    def resume(self) -> bool:
        return bool(self._request("POST", "/admin/resume")["paused"])

    def resume_provider(self, name: str) -> bool:
        """Lift a quota pause of provider ``name`` now; True if it was paused."""
        return bool(self._request("POST", f"/admin/providers/{name}/resume")["was_paused"])

    def artifacts(self, job_id: str) -> builtins.list[dict[str, Any]]:
        return list(self._request("GET", f"/jobs/{job_id}/artifacts"))

    def artifact(self, job_id: str, name: str) -> bytes:
        return self._raw("GET", f"/jobs/{job_id}/artifacts/{name}")

    def status(self) -> dict[str, Any]:
        return dict(self._request("GET", "/status"))

    # sessions
    def session(self, session_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/sessions/{session_id}"))

    def create_session(self, title: str | None = None) -> Session:
        return Session.model_validate(self._request("POST", "/sessions", json={"title": title}))

    def turn(self, session_id: str, prompt: str | None = None, **fields: Any) -> dict[str, Any]:
        body = {"prompt": prompt, **fields}
        return dict(
            self._request(
                "POST",
                f"/sessions/{session_id}/turns",
                json={k: v for k, v in body.items() if v is not None},
            )
        )

    def job_event_list(self, job_id: str, since: int = 0) -> builtins.list[Event]:
        """All of a job's stored events after ``since``, page by page."""
        events: builtins.list[Event] = []
        while True:
            data = self._request(
                "GET", f"/jobs/{job_id}/events", params={"since": since, "limit": 5000}
            )
            page = [Event.from_dict(e) for e in data["events"]]
            events.extend(page)
            if len(page) < 5000:
                return events
            since = data["next_since"]

    def session_events(self, session_id: str, since: int = 0) -> builtins.list[Event]:
        data = self._request("GET", f"/sessions/{session_id}/events", params={"since": since})
        return [Event.from_dict(e) for e in data["events"]]

    # streams
    def events(self, session_id: str, since: int = 0) -> Iterator[Event]:
        """Follow a session's events live; reconnects with Last-Event-ID and
        never yields an event twice."""
        return self._follow(f"/sessions/{session_id}/stream", since, None, None)

    def job_events(
        self, job_id: str, since: int = 0, timeout: float | None = None
    ) -> Iterator[Event]:
        """A job's events until it ends."""
        return self._follow(f"/jobs/{job_id}/events", since, timeout, job_id)

    def _follow(
        self, path: str, since: int, timeout: float | None, job_id: str | None
    ) -> Iterator[Event]:
        cursor = _Cursor(since, job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        failures = 0
        while True:
            try:
                with connect_sse(
                    self._http,
                    "GET",
                    path,
                    headers=cursor.headers(),
                    timeout=_stream_timeout(deadline),
                ) as source:
                    _raise_for_stream(source.response)
                    failures = 0
                    for sse in source.iter_sse():
                        event = cursor.take(sse.data)
                        if event is not None:
                            yield event
                    if cursor.ended:
                        return  # the server ends a job's stream once the job ends
            except httpx.TransportError as exc:
                failures += 1
                if failures > 20:
                    raise ClientError(f"lost the event stream from {self.url}: {exc}") from exc
                time.sleep(min(0.05 * 2**failures, 2.0))
            if deadline is not None and time.monotonic() > deadline:
                return


class _Cursor:
    """Where an event stream stands: the last seq yielded (the Last-Event-ID
    of a reconnect, so no event comes twice) and whether its job ended."""

    def __init__(self, since: int, job_id: str | None) -> None:
        self.last = since
        self.job_id = job_id
        self.ended = False

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if self.last:
            headers["Last-Event-ID"] = str(self.last)
        return headers

    def take(self, data: str) -> Event | None:
        """The event in an SSE ``data`` field, or None (a keep-alive, or one already seen)."""
        if not data:
            return None
        event = Event.from_json(data)
        if event.seq is not None:
            if event.seq <= self.last:
                return None
            self.last = event.seq
        if (
            self.job_id is not None
            and event.type == "job.state"
            and event.job_id == self.job_id
            and event.payload.get("to") in TERMINAL
        ):
            self.ended = True
        return event


def _stream_timeout(deadline: float | None) -> httpx.Timeout:
    read = 60.0 if deadline is None else max(0.1, deadline - time.monotonic())
    return httpx.Timeout(30.0, read=read)


def _job_params(
    limit: int, state: builtins.list[str] | None, session_id: str | None, before: str | None
) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": limit}
    if state:
        params["state"] = state
    if session_id:
        params["session_id"] = session_id
    if before:
        params["before"] = before
    return params


def _raise_for_stream(resp: httpx.Response) -> None:
    if resp.status_code >= 400:
        resp.read()
        _raise_for(resp)


def _run_webhook(receiver: Receiver) -> dict[str, Any]:
    """run()'s own webhook: `queued` proves the server reaches the receiver,
    then only the end (no deliveries for assigned and running to wait behind)."""
    states = ["queued", "done", "failed", "cancelled"]
    return {"url": receiver.url, "secret": receiver.secret, "states": states}


def _remaining(deadline: float | None, cap: float) -> float:
    if deadline is None:
        return cap
    return max(0.0, min(cap, deadline - time.monotonic()))


def _open_receiver(host: str, advertise: str | None) -> Receiver | None:
    try:
        return Receiver(secrets.token_urlsafe(32), host=host, advertise=advertise)
    except OSError:
        return None  # cannot bind here: run() polls


class AsyncClient:
    """The asynchronous twin of ``Client``: the same methods, as coroutines
    (``events`` and ``job_events`` are async iterators)."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        settings: Settings | None = None,
    ) -> None:
        self.url, token = resolve(url, token, settings)
        self._http = httpx.AsyncClient(
            base_url=self.url, timeout=timeout, headers={"Authorization": f"Bearer {token}"}
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = await self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise ClientError(
                f"cannot reach corral at {self.url} ({exc}); is `corral serve` running?"
            ) from exc
        _raise_for(resp)
        return resp

    async def _request(self, method: str, path: str, **kw: Any) -> Any:
        return (await self._send(method, path, **kw)).json()

    async def submit(
        self, prompt: str | None = None, *, command: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        body = {"prompt": prompt, "command": command, **fields}
        data = await self._request(
            "POST", "/jobs", json={k: v for k, v in body.items() if v is not None}
        )
        return dict(data)

    async def get(self, job_id: str) -> Job:
        return Job.model_validate(await self._request("GET", f"/jobs/{job_id}"))

    async def list(
        self,
        *,
        state: builtins.list[str] | None = None,
        session_id: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> builtins.list[Job]:
        params = _job_params(limit, state, session_id, before)
        data = await self._request("GET", "/jobs", params=params)
        return [Job.model_validate(j) for j in data["jobs"]]

    async def cancel(self, job_id: str) -> Job:
        return Job.model_validate(await self._request("POST", f"/jobs/{job_id}/cancel"))

    async def retry(self, job_id: str) -> Job:
        return Job.model_validate(await self._request("POST", f"/jobs/{job_id}/retry"))

    async def artifacts(self, job_id: str) -> builtins.list[dict[str, Any]]:
        return list(await self._request("GET", f"/jobs/{job_id}/artifacts"))

    async def artifact(self, job_id: str, name: str) -> bytes:
        return (await self._send("GET", f"/jobs/{job_id}/artifacts/{name}")).content

    async def deliveries(self, job_id: str) -> builtins.list[dict[str, Any]]:
        return list(await self._request("GET", f"/jobs/{job_id}/deliveries"))

    async def tags(self) -> builtins.list[dict[str, Any]]:
        return list((await self._request("GET", "/api/tags"))["models"])

    async def embed(self, input: str | builtins.list[str], model: str | None = None) -> Any:
        body = {"input": input, **({"model": model} if model else {})}
        return (await self._request("POST", "/api/embed", json=body))["embeddings"]

    async def chat(self, model: str, messages: builtins.list[dict[str, Any]], **kw: Any) -> Any:
        body = {"model": model, "messages": messages, "stream": False, **kw}
        return (await self._request("POST", "/api/chat", json=body, timeout=None))["message"]

    async def session(self, session_id: str) -> dict[str, Any]:
        return dict(await self._request("GET", f"/sessions/{session_id}"))

    async def turn(
        self, session_id: str, prompt: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        """A follow-up turn (a job) in a session."""
        body = {"prompt": prompt, **fields}
        data = await self._request(
            "POST",
            f"/sessions/{session_id}/turns",
            json={k: v for k, v in body.items() if v is not None},
        )
        return dict(data)

    async def route(self, **fields: Any) -> dict[str, Any]:
        return dict(await self._request("POST", "/route", json=fields))

    async def status(self) -> dict[str, Any]:
        return dict(await self._request("GET", "/status"))

    async def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Until the job ends (following its event stream)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        async for _ in self.job_events(job_id, timeout=timeout):
            pass
        interval = 0.2
        while (job := await self.get(job_id)).state not in TERMINAL:
            if deadline is not None and time.monotonic() >= deadline:
                raise RunTimeout(f"job {job_id} still {job.state.value} after {timeout:g}s", job_id)
            await asyncio.sleep(interval)
            interval = min(interval * 1.5, 5.0)
        return job

    async def run(
        self,
        prompt: str | None = None,
        *,
        command: str | None = None,
        timeout: float | None = None,
        polling: bool = False,
        poll_interval: float = 0.05,
        push_grace: float = 5.0,
        cancel_on_timeout: bool = False,
        receiver_host: str = "127.0.0.1",
        advertise_host: str | None = None,
        **fields: Any,
    ) -> Result:
        """``Client.run`` as a coroutine (the receiver runs in a thread)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        receiver = None if polling else _open_receiver(receiver_host, advertise_host)
        try:
            if receiver is not None:
                fields["webhook"] = _run_webhook(receiver)
            job_id = str((await self.submit(prompt, command=command, **fields))["job_id"])
            try:
                via = "polling"
                if receiver is not None and await self._pushed(
                    receiver, job_id, deadline, push_grace
                ):
                    via = "webhook"
                else:
                    await self._poll(job_id, deadline, poll_interval)
            except (RunTimeout, asyncio.CancelledError):
                if cancel_on_timeout:
                    await asyncio.shield(self.cancel(job_id))
                raise
            job = await self.get(job_id)
            names = [a["name"] for a in await self.artifacts(job_id)]
            return Result.of(job, names, via)
        finally:
            if receiver is not None:
                receiver.close()

    async def _wait_delivery(
        self, receiver: Receiver, job_id: str, until: Any, timeout: float
    ) -> dict[str, object] | None:
        # Short slices in a thread, so cancelling the caller takes effect soon.
        end = time.monotonic() + timeout
        while True:
            step = max(0.0, min(0.25, end - time.monotonic()))
            body = await asyncio.to_thread(receiver.wait, job_id, until, step)
            if body is not None or time.monotonic() >= end:
                return body

    async def _pushed(
        self, receiver: Receiver, job_id: str, deadline: float | None, grace: float
    ) -> bool:
        first = await self._wait_delivery(receiver, job_id, _seen_any, _remaining(deadline, grace))
        if first is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise RunTimeout(f"job {job_id} did not end in time", job_id)
            return False
        while True:
            body = await self._wait_delivery(
                receiver, job_id, _terminal, _remaining(deadline, SAFETY_POLL)
            )
            if body is not None or (await self.get(job_id)).state in TERMINAL:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                raise RunTimeout(f"job {job_id} did not end in time", job_id)

    async def _poll(self, job_id: str, deadline: float | None, interval: float) -> None:
        while (await self.get(job_id)).state not in TERMINAL:
            if deadline is not None and time.monotonic() >= deadline:
                raise RunTimeout(f"job {job_id} did not end in time", job_id)
            await asyncio.sleep(_remaining(deadline, interval))
            interval = min(interval * 1.5, 5.0)

    def events(self, session_id: str, since: int = 0) -> AsyncIterator[Event]:
        """Follow a session's events live; reconnects with Last-Event-ID and
        never yields an event twice."""
        return self._follow(f"/sessions/{session_id}/stream", since, None, None)

    def job_events(
        self, job_id: str, since: int = 0, timeout: float | None = None
    ) -> AsyncIterator[Event]:
        return self._follow(f"/jobs/{job_id}/events", since, timeout, job_id)

    async def _follow(
        self, path: str, since: int, timeout: float | None, job_id: str | None
    ) -> AsyncIterator[Event]:
        cursor = _Cursor(since, job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        failures = 0
        while True:
            try:
                async with aconnect_sse(
                    self._http,
                    "GET",
                    path,
                    headers=cursor.headers(),
                    timeout=_stream_timeout(deadline),
                ) as source:
                    if source.response.status_code >= 400:
                        await source.response.aread()
                        _raise_for(source.response)
                    failures = 0
                    async for sse in source.aiter_sse():
                        event = cursor.take(sse.data)
                        if event is not None:
                            yield event
                    if cursor.ended:
                        return
            except httpx.TransportError as exc:
                failures += 1
                if failures > 20:
                    raise ClientError(f"lost the event stream from {self.url}: {exc}") from exc
                await asyncio.sleep(min(0.05 * 2**failures, 2.0))
            if deadline is not None and time.monotonic() > deadline:
                return
