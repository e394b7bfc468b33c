"""Runner protocol v1 (corral/protocol/): the server's routes take and answer
exactly the calls the runner makes; handles, topics and refusals read back
what they write."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

from corral.api.app import create_app
from corral.config import Settings
from corral.protocol import (
    AgentPoll,
    LeaseResponse,
    RunnerRegister,
    RunnerRegistered,
    calls,
    error_body,
    error_of,
    paths,
    topics,
)
from corral.protocol.handles import RemoteHandle, own_handle, session_handle


def _flat(routes: list[Any]) -> Iterator[Any]:
    for route in routes:
        inner = getattr(route, "original_router", None)
        yield from _flat(inner.routes) if inner is not None else [route]


def _role(route: APIRoute) -> str | None:
    """The credential a route needs (api/deps.py marks each with its role)."""
    found: list[str] = []

    def walk(dependant: Any) -> None:
        for dep in dependant.dependencies:
            role = getattr(dep.call, "corral_role", None)
            if role is not None:
                found.append(role)
            walk(dep)

    walk(route.dependant)
    return found[0] if found else None


@pytest.fixture(scope="module")
def routes() -> dict[tuple[str, str], APIRoute]:
    app: FastAPI = create_app(Settings())
    return {
        (method, r.path): r
        for r in _flat(app.routes)
        if isinstance(r, APIRoute)
        for method in r.methods or ()
    }


@pytest.mark.parametrize("call", calls.ALL, ids=[f"{c.method} {c.path}" for c in calls.ALL])
def test_the_server_route_of_each_call_takes_and_answers_its_bodies(
    call: calls.Call[Any], routes: dict[tuple[str, str], APIRoute]
) -> None:
    route = routes.get((call.method, call.path))
    assert route is not None, f"the server has no route for {call.method} {call.path}"
    body = route.body_field.field_info.annotation if route.body_field else None
    if body is None:  # a route that parses its raw body itself says which model
        body = getattr(route.endpoint, "corral_body", None)
        if body is not None:
            schema = route.openapi_extra["requestBody"]["content"]["application/json"]["schema"]
            assert schema == body.model_json_schema()
    assert body is call.body
    assert route.response_model is call.answer
    assert _role(route) == call.credential


def test_every_runner_and_worker_route_is_a_declared_call(
    routes: dict[tuple[str, str], APIRoute],
) -> None:
    declared = {(c.method, c.path) for c in calls.ALL}
    protocol_routes = {
        key for key, route in routes.items() if _role(route) in ("runner", "worker JWT")
    }
    assert protocol_routes == declared


def test_paths_fill_the_templates() -> None:
    assert paths.lease("r1") == "/runners/r1/lease"
    assert paths.agents("r1") == "/runners/r1/agents"
    assert paths.agents_report("r1") == "/runners/r1/agents/report"
    assert paths.artifact("diff.patch") == "/worker/artifacts/diff.patch"
    assert paths.artifact("a/b") == "/worker/artifacts/a%2Fb"  # one segment, always


def test_requests_ignore_fields_they_do_not_know() -> None:
    """A runner newer than its server still registers (within v1, fields are only added)."""
    body = RunnerRegister.model_validate(
        {"name": "r", "providers": ["shell"], "slots": 1, "gpu": "A100"}
    )
    assert body.protocol == "v1" and not hasattr(body, "gpu")
    assert AgentPoll.model_validate({"wait": 1, "new_field": True}).wait == 1


def test_answers_ignore_fields_they_do_not_know_and_default_what_older_servers_omit() -> None:
    registered = RunnerRegistered.model_validate(
        {
            "runner_id": "r",
            "protocol": "v1",
            "lease_ttl": 30,
            "heartbeat_interval": 5,
            "region": "eu",
        }
    )
    assert registered.max_artifact_bytes == 10_485_760
    assert LeaseResponse.model_validate({"jobs": []}).cancel == []


@pytest.mark.parametrize(
    ("handle", "provider", "value"),
    [
        ("claude:abc", "claude", "abc"),
        ('peer:{"job": "j"}', "peer", '{"job": "j"}'),
        ("claude:abc", "backup", None),
        ("abc", "claude", None),
        ("claude:", "claude", None),
        (None, "claude", None),
    ],
    ids=["own", "json-value", "another-provider", "no-provider", "empty-value", "none"],
)
def test_a_session_handle_belongs_to_its_provider(
    handle: str | None, provider: str, value: str | None
) -> None:
    assert own_handle(handle, provider) == value


def test_session_handles_read_back() -> None:
    assert own_handle(session_handle("claude", "conv:1"), "claude") == "conv:1"


def test_remote_handles_read_back_and_garbage_reads_as_none() -> None:
    handle = RemoteHandle(job="j1", remote_job="r1", remote_session="s1")
    assert handle.encode() == '{"job":"j1","remote_job":"r1","remote_session":"s1"}'
    assert RemoteHandle.decode(handle.encode()) == handle
    assert RemoteHandle.decode('{"job": "j", "thread": "t", "future": 1}').thread == "t"
    for garbage in (None, "", "conv-1", "{not json", "[1, 2]", '{"job": 3}'):
        assert RemoteHandle.decode(garbage) == RemoteHandle()


def test_topics_read_back() -> None:
    assert topics.session_of(topics.session("s1")) == "s1"
    assert topics.session_of(topics.DISPATCH) is None
    assert topics.cancelled(topics.cancel("j1")) == "j1"
    assert topics.cancelled("j1") is None
    assert topics.cancelled(["cancel:j1"]) is None


@pytest.mark.parametrize(
    ("status", "content", "expected"),
    [
        (409, b'{"error": {"code": "stale_epoch", "message": "old"}}', ("stale_epoch", "old")),
        (502, b"<html>bad gateway</html>", ("http_error", "HTTP 502: <html>bad gateway</html>")),
        (
            404,
            '{"error": "model not found"}',
            ("http_error", 'HTTP 404: {"error": "model not found"}'),
        ),
        (500, b"", ("http_error", "HTTP 500: ")),
    ],
    ids=["corral", "not-json", "ollama-shape", "empty"],
)
def test_error_of_reads_refusals(
    status: int, content: bytes | str, expected: tuple[str, str]
) -> None:
    assert error_of(status, content) == expected


def test_error_of_reads_what_error_body_writes() -> None:
    import json

    body = json.dumps(error_body("job_not_found", "no job x", candidates=["a"]))
    assert error_of(404, body) == ("job_not_found", "no job x")
