"""One test drives every 4xx path of the API: the status, the one error shape
{"error": {"code", "message"}}, and never a 500."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.auth import Role
from corral.config import load_settings
from corral.server import Server


@dataclass
class Api:
    http: httpx.AsyncClient
    keys: dict[str, str]
    done_job: str
    queued_job: str
    session: str

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}


@pytest.fixture
async def api(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Api]:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(
        data_dir=tmp_path, database_url=db_url, max_body_bytes=4096, webhook_allow_private=False
    )
    async with Server(settings) as server:
        app = server.app
        store = server.store
        keys = {
            role.value: (await store.keys.create(name=role.value, role=role))[1] for role in Role
        }
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://corral") as http:
            admin = {"Authorization": f"Bearer {keys['admin']}"}
            done = (await http.post("/jobs", json={"command": "x"}, headers=admin)).json()
            await http.post(f"/jobs/{done['job_id']}/cancel", headers=admin)
            queued = (await http.post("/jobs", json={"command": "y"}, headers=admin)).json()
            runner = {"Authorization": f"Bearer {keys['runner']}"}
            bound = {"name": "bound", "providers": ["shell"], "slots": 1}
            assert (await http.post("/runners/register", json=bound, headers=runner)).is_success
            yield Api(http, keys, done["job_id"], queued["job_id"], queued["session_id"])


async def _chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def _cases(api: Api) -> list[tuple[str, str, str, dict[str, Any], int, str]]:
    big = "x" * 5000
    return [
        # (name, method, path, request kwargs, status, code)
        ("no credential", "GET", "/jobs", {"headers": {"Authorization": ""}}, 401, "unauthorized"),
        (
            "unknown key",
            "GET",
            "/jobs",
            {"headers": {"Authorization": "Bearer crl_abc_def"}},
            401,
            "unauthorized",
        ),
        (
            "malformed key",
            "GET",
            "/jobs",
            {"headers": {"Authorization": "Bearer nope"}},
            401,
            "unauthorized",
        ),
        (
            "viewer submits",
            "POST",
            "/jobs",
            {"json": {"prompt": "x"}, "role": "viewer"},
            403,
            "forbidden",
        ),
        ("runner reads jobs", "GET", "/jobs", {"role": "runner"}, 403, "forbidden"),
        (
            "runner reads a job it does not hold",
            "GET",
            f"/jobs/{api.queued_job}",
            {"role": "runner"},
            403,
            "forbidden",
        ),
        (
            "operator registers a runner",
            "POST",
            "/runners/register",
            {"role": "operator", "json": {"name": "r", "providers": ["shell"], "slots": 1}},
            403,
            "forbidden",
        ),
        (
            "malformed json",
            "POST",
            "/jobs",
            {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
            400,
            "malformed_json",
        ),
        ("empty job", "POST", "/jobs", {"json": {}}, 422, "invalid_input"),
        ("stats, bad bucket", "GET", "/stats?bucket=week", {}, 422, "invalid_input"),
        ("stats, bad time", "GET", "/stats?from=yesterday", {}, 422, "invalid_input"),
        (
            "stats, empty range",
            "GET",
            "/stats?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
            {},
            422,
            "invalid_input",
        ),
        (
            "stats, too many buckets",
            "GET",
            "/stats?from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z&bucket=minute",
            {},
            422,
            "invalid_input",
        ),
        ("stats, runner key", "GET", "/stats", {"role": "runner"}, 403, "forbidden"),
        (
            "a session cookie does not write",
            "POST",
            "/admin/pause",
            {"headers": {"Authorization": "", "Cookie": "corral_session=forged.x"}},
            401,
            "unauthorized",
        ),
        (
            "a forged session cookie",
            "GET",
            "/jobs",
            {"headers": {"Authorization": "", "Cookie": "corral_session=forged.x"}},
            401,
            "unauthorized",
        ),
        ("blank prompt", "POST", "/jobs", {"json": {"prompt": "   "}}, 422, "invalid_input"),
        ("wrong type", "POST", "/jobs", {"json": {"prompt": 5}}, 422, "invalid_input"),
        (
            "priority out of range",
            "POST",
            "/jobs",
            {"json": {"prompt": "x", "priority": 99}},
            422,
            "invalid_input",
        ),
        (
            "unknown field",
            "POST",
            "/jobs",
            {"json": {"prompt": "x", "prompts": "y"}},
            422,
            "invalid_input",
        ),
        ("not an object", "POST", "/jobs", {"json": ["x"]}, 422, "invalid_input"),
        ("too large", "POST", "/jobs", {"json": {"prompt": big}}, 413, "payload_too_large"),
        (
            "too large, chunked",
            "POST",
            "/jobs",
            {
                "content": _chunks([b'{"prompt": "', big.encode(), b'"}']),
                "headers": {"Content-Type": "application/json"},
            },
            413,
            "payload_too_large",
        ),
        ("unknown job", "GET", "/jobs/nope", {}, 404, "job_not_found"),
        ("cancel unknown job", "POST", "/jobs/nope/cancel", {}, 404, "job_not_found"),
        ("unknown state filter", "GET", "/jobs?state=bogus", {}, 400, "bad_request"),
        ("bad limit", "GET", "/jobs?limit=0", {}, 422, "invalid_input"),
        ("bad page anchor", "GET", "/jobs?before=nope", {}, 404, "job_not_found"),
        (
            "cancel a cancelled job",
            "POST",
            f"/jobs/{api.done_job}/cancel",
            {},
            409,
            "invalid_transition",
        ),
        (
            "retry a queued job",
            "POST",
            f"/jobs/{api.queued_job}/retry",
            {},
            409,
            "invalid_transition",
        ),
        (
            "unknown provider",
            "POST",
            "/jobs",
            {"json": {"prompt": "x", "provider": "claud"}},
            422,
            "unroutable",
        ),
        (
            "prose, no default provider",
            "POST",
            "/jobs",
            {"json": {"prompt": "x"}},
            422,
            "unroutable",
        ),
        (
            "route of a turn, unknown provider",
            "POST",
            "/route",
            {"json": {"prompt": "x", "provider": "nope", "session_id": api.session}},
            422,
            "unroutable",
        ),
        ("unknown session", "GET", "/sessions/nope", {}, 404, "session_not_found"),
        (
            "turn of unknown session",
            "POST",
            "/sessions/nope/turns",
            {"json": {"prompt": "x"}},
            404,
            "session_not_found",
        ),
        (
            "turn with another session id",
            "POST",
            f"/sessions/{api.session}/turns",
            {"json": {"prompt": "x", "session_id": "other"}},
            400,
            "bad_request",
        ),
        ("events of unknown session", "GET", "/sessions/nope/events", {}, 404, "session_not_found"),
        ("stream of unknown session", "GET", "/sessions/nope/stream", {}, 404, "session_not_found"),
        (
            "bad Last-Event-ID",
            "GET",
            f"/sessions/{api.session}/stream",
            {"headers": {"Last-Event-ID": "abc"}},
            400,
            "bad_request",
        ),
        (
            "negative since",
            "GET",
            f"/sessions/{api.session}/events?since=-1",
            {},
            422,
            "invalid_input",
        ),
        *[
            (f"since {since} on {path}", "GET", f"{path}?since={since}", {}, 422, "invalid_input")
            for path in (f"/sessions/{api.session}/events", f"/jobs/{api.queued_job}/events")
            for since in (2**31, 2**63, 2**64)
        ],
        (
            "Last-Event-ID beyond the integer range",
            "GET",
            f"/sessions/{api.session}/stream",
            {"headers": {"Last-Event-ID": str(2**63)}},
            400,
            "bad_request",
        ),
        (
            "another key's runner name",
            "POST",
            "/runners/register",
            {"json": {"name": "bound", "providers": ["shell"], "slots": 1}},
            409,
            "runner_name_taken",
        ),
        (
            "forget an unknown runner name",
            "POST",
            "/admin/runners/nope/forget",
            {},
            404,
            "runner_name_not_found",
        ),
        (
            "operator forgets a runner name",
            "POST",
            "/admin/runners/bound/forget",
            {"role": "operator"},
            403,
            "forbidden",
        ),
        (
            "webhook to loopback",
            "POST",
            "/jobs",
            {"json": {"command": "true", "webhook": "http://127.0.0.1:9/hook"}},
            422,
            "webhook_refused",
        ),
        (
            "webhook to the metadata service",
            "POST",
            f"/sessions/{api.session}/turns",
            {"json": {"command": "true", "webhook": {"url": "http://169.254.169.254/x"}}},
            422,
            "webhook_refused",
        ),
        ("unknown route", "GET", "/nope", {}, 404, "not_found"),
        ("wrong method", "DELETE", "/jobs", {}, 405, "method_not_allowed"),
        (
            "worker write without token",
            "POST",
            "/worker/events",
            {"json": {"events": []}, "headers": {"Authorization": ""}},
            401,
            "unauthorized",
        ),
        (
            "worker write with an API key",
            "POST",
            "/worker/events",
            {"json": {"events": []}},
            401,
            "unauthorized",
        ),
        (
            "lease for unknown runner",
            "POST",
            "/runners/nope/lease",
            {"json": {"max_jobs": 1}},
            404,
            "runner_not_found",
        ),
        (
            "unknown protocol",
            "POST",
            "/runners/register",
            {"json": {"name": "r", "providers": ["shell"], "slots": 1, "protocol": "v9"}},
            422,
            "invalid_input",
        ),
        (
            "zero slots",
            "POST",
            "/runners/register",
            {"json": {"name": "r", "providers": ["shell"], "slots": 0}},
            422,
            "invalid_input",
        ),
        (
            "unknown webhook state",
            "POST",
            "/jobs",
            {"json": {"prompt": "x", "webhook": {"url": "http://h/x", "states": ["finished"]}}},
            422,
            "invalid_input",
        ),
        (
            "agent report with a bad line",
            "POST",
            "/runners/nope/agents/report",
            {"json": {"lines": [{"agent": "../x", "offset": 0, "at": 1, "stream": "tty"}]}},
            422,
            "invalid_input",
        ),
        (
            "agent poll of an unknown runner",
            "POST",
            "/runners/nope/agents",
            {"json": {"wait": 0}},
            404,
            "runner_not_found",
        ),
        ("unknown schedule", "GET", "/schedules/nope", {}, 404, "schedule_not_found"),
        ("run an unknown schedule", "POST", "/schedules/nope/run", {}, 404, "schedule_not_found"),
        (
            "viewer enables a schedule",
            "POST",
            "/schedules/nope/enable",
            {"role": "viewer"},
            403,
            "forbidden",
        ),
        (
            "run_at without a time zone",
            "POST",
            "/jobs",
            {"json": {"command": "x", "run_at": "2030-01-01T09:00:00"}},
            422,
            "invalid_input",
        ),
        (
            "run_at out of range",
            "POST",
            "/jobs",
            {"json": {"command": "x", "run_at": "9999-12-31T23:59:59-05:00"}},
            422,
            "invalid_input",
        ),
    ]


async def test_every_error_path_has_the_shape(api: Api) -> None:
    seen = []
    for name, method, path, kwargs, status, code in _cases(api):
        kwargs = dict(kwargs)
        headers = {**api.auth(kwargs.pop("role", "admin")), **kwargs.pop("headers", {})}
        headers = {k: v for k, v in headers.items() if v}
        if path.endswith("/stream"):
            headers["Accept"] = "text/event-stream"
        resp = await api.http.request(method, path, headers=headers, **kwargs)
        assert resp.status_code == status, f"{name}: {resp.status_code} {resp.text}"
        assert resp.headers["content-type"].startswith("application/json"), name
        body = resp.json()
        assert set(body) == {"error"}, name
        assert body["error"]["code"] == code, f"{name}: {body}"
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], name
        seen.append(status)
    assert {400, 401, 403, 404, 405, 409, 413, 422} <= set(seen)


async def test_health_needs_no_credential_and_docs_exist(api: Api) -> None:
    assert (await api.http.get("/health")).json()["status"] == "ok"
    spec = (await api.http.get("/openapi.json")).json()
    for path in (
        "/jobs",
        "/jobs/{job_id}",
        "/sessions/{session_id}/stream",
        "/runners/{runner_id}/lease",
        "/worker/complete",
    ):
        assert path in spec["paths"]
    # The credential: a bearer scheme (Swagger UI's "Authorize"), required by
    # every operation but the unauthenticated ones.
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert spec["security"] == [{"bearer": []}]
    assert spec["paths"]["/health"]["get"]["security"] == []
    assert "security" not in spec["paths"]["/jobs"]["post"]


async def test_the_api_docs_page_needs_nothing_from_the_internet(api: Api) -> None:
    page = await api.http.get("/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    # Every script, stylesheet and icon it loads is served by corral itself.
    urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", page.text)
    assert urls and all(u.startswith("/") for u in urls), urls
    for url in urls:
        if url.startswith("/docs/assets/"):
            asset = await api.http.get(url)
            assert asset.status_code == 200 and len(asset.content) > 100, url
    assert (await api.http.get("/redoc")).status_code == 404  # it would need a CDN


async def test_idempotent_submit_is_200_with_the_same_job(api: Api) -> None:
    body = {"command": "x", "idempotency_key": "same"}
    first = await api.http.post("/jobs", json=body, headers=api.auth("operator"))
    second = await api.http.post("/jobs", json=body, headers=api.auth("operator"))
    assert (first.status_code, second.status_code) == (202, 200)
    assert first.json()["job_id"] == second.json()["job_id"]
    assert second.json()["created"] is False


async def test_a_runner_key_reads_only_the_jobs_its_runner_holds(api: Api) -> None:
    runner = api.auth("runner")
    registered = await api.http.post(
        "/runners/register",
        json={"name": "r", "providers": ["shell"], "slots": 4},
        headers=runner,
    )
    runner_id = registered.json()["runner_id"]
    leased = await api.http.post(
        f"/runners/{runner_id}/lease", json={"max_jobs": 1, "wait": 0}, headers=runner
    )
    (item,) = leased.json()["jobs"]
    own = await api.http.get(f"/jobs/{item['job']['id']}", headers=runner)
    assert own.status_code == 200 and own.json()["state"] == "assigned"
    other = (await api.http.post("/jobs", json={"command": "z"}, headers=api.auth("admin"))).json()
    refused = await api.http.get(f"/jobs/{other['job_id']}", headers=runner)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"


async def test_only_the_embedded_runner_key_hosts_embedded_agents(api: Api) -> None:
    runner = api.auth("runner")  # a key named "runner", as `corral keys create` makes
    registered = await api.http.post(
        "/runners/register",
        json={"name": "box", "providers": ["shell"], "slots": 1},
        headers=runner,
    )
    runner_id = registered.json()["runner_id"]
    body = {"wait": 0, "aliases": ["embedded"]}
    refused = await api.http.post(f"/runners/{runner_id}/agents", json=body, headers=runner)
    assert refused.status_code == 403, refused.text
    assert "embedded" in refused.json()["error"]["message"]
    mine = await api.http.post(f"/runners/{runner_id}/agents", json={"wait": 0}, headers=runner)
    assert mine.status_code == 200 and mine.json()["agents"] == []
