"""Python client for the corral HTTP API. The CLI uses it for everything it
does over HTTP.

    from corral.client import Client
    with Client() as c:                       # CORRAL_URL / CORRAL_TOKEN / local admin key
        job = c.submit("echo hello")
        print(c.wait(job["job_id"]).state)
"""

from __future__ import annotations

import builtins
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
from httpx_sse import connect_sse

from corral.config import Settings, load_settings
from corral.errors import ClientError, CorralError
from corral.jobs import TERMINAL
from corral.models import Event, Job, Session


class ApiError(CorralError):
    """The server refused the request."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def resolve(
    url: str | None = None, token: str | None = None, settings: Settings | None = None
) -> tuple[str, str]:
    """The server URL and token: arguments, then CORRAL_URL / CORRAL_TOKEN,
    then the local server's address and admin key file."""
    url = url or os.environ.get("CORRAL_URL")
    token = token or os.environ.get("CORRAL_TOKEN")
    if url is None or token is None:
        settings = settings or load_settings()
        url = url or settings.local_url()
        if token is None:
            key_file = settings.admin_key_file
            try:
                token = key_file.read_text().strip()
            except FileNotFoundError:
                raise ClientError(
                    f"no API key: pass --token or set CORRAL_TOKEN (no admin key at {key_file}; "
                    "`corral serve` writes one on first start)"
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
    def submit(self, prompt: str | None = None, **fields: Any) -> dict[str, Any]:
        body = {"prompt": prompt, **fields}
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
        params: dict[str, Any] = {"limit": limit}
        if state:
            params["state"] = state
        if session_id:
            params["session_id"] = session_id
        if before:
            params["before"] = before
        data = self._request("GET", "/jobs", params=params)
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
                raise ClientError(f"job {job_id} still {job.state.value} after {timeout:g}s")
            time.sleep(interval)

    def route(self, **fields: Any) -> dict[str, Any]:
        """Where a job with ``fields`` would run, and why."""
        return dict(self._request("POST", "/route", json=fields))

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
        last = since
        ended = False
        deadline = None if timeout is None else time.monotonic() + timeout
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last:
                headers["Last-Event-ID"] = str(last)
            read_timeout = 60.0 if deadline is None else max(0.1, deadline - time.monotonic())
            try:
                with connect_sse(
                    self._http,
                    "GET",
                    path,
                    headers=headers,
                    timeout=httpx.Timeout(30.0, read=read_timeout),
                ) as source:
                    _raise_for_stream(source.response)
                    failures = 0
                    for sse in source.iter_sse():
                        if not sse.data:
                            continue
                        event = Event.from_json(sse.data)
                        if event.seq is not None:
                            if event.seq <= last:
                                continue
                            last = event.seq
                        if (
                            job_id is not None
                            and event.type == "job.state"
                            and event.job_id == job_id
                            and event.payload.get("to") in TERMINAL
                        ):
                            ended = True
                        yield event
                    if ended:
                        return  # the server ends a job's stream once the job ends
            except httpx.TransportError as exc:
                failures += 1
                if failures > 20:
                    raise ClientError(f"lost the event stream from {self.url}: {exc}") from exc
                time.sleep(min(0.05 * 2**failures, 2.0))
            if deadline is not None and time.monotonic() > deadline:
                return


def _raise_for_stream(resp: httpx.Response) -> None:
    if resp.status_code >= 400:
        resp.read()
        _raise_for(resp)
