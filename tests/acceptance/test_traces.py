"""Traces (corral[otel]) against a real `corral serve` exporting over OTLP/HTTP
to a receiver here that decodes what it gets as the collector would
(opentelemetry-proto's ExportTraceServiceRequest): one trace per job across
submit -> lease -> run -> complete, and its webhook deliveries, with the
parent links, over the embedded runner and over a `corral runner` process;
with no OTEL settings nothing is exported."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from corral.testing import ServerProcess

from ._helpers import create_key, running_server, start_runner, stop_process, wait_for, wait_job

NAMES = ("corral.submit", "corral.lease", "corral.run", "corral.complete")


class Collector:
    """An OTLP/HTTP trace receiver on loopback (POST /v1/traces, protobuf)."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.requests = 0
        collector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                assert self.path == "/v1/traces", self.path
                assert self.headers["Content-Type"] == "application/x-protobuf"
                collector.add(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, request: ExportTraceServiceRequest) -> None:
        self.requests += 1
        for rs in request.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(
                        {
                            "name": s.name,
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent": s.parent_span_id.hex() or None,
                            "attributes": {a.key: _value(a.value) for a in s.attributes},
                            "status": s.status.code,
                            "service": resource.get("service.name"),
                            "start": s.start_time_unix_nano,
                            "end": s.end_time_unix_nano,
                        }
                    )

    def of(self, job_id: str) -> dict[str, list[dict[str, Any]]]:
        by_name: dict[str, list[dict[str, Any]]] = {}
        for s in list(self.spans):
            if s["attributes"].get("corral.job_id") == job_id:
                by_name.setdefault(s["name"], []).append(s)
        return by_name

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


class Hook:
    """A webhook receiver that records the traceparent of each delivery."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, Any], str | None]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.got.append((json.loads(body), self.headers.get("traceparent")))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def states(self, job_id: str) -> list[str]:
        return [body["state"] for body, _ in self.got if body["job_id"] == job_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


def otel_env(collector: Collector, **extra: str) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_SERVICE_NAME": "corral-under-test",
        # Passed to the job's process (with TRACEPARENT); nothing else of the server's.
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
        **extra,
    }


# The job prints what a CLI that traces would read from its environment.
PRINT_ENV = 'echo "tp=$TRACEPARENT svc=$OTEL_SERVICE_NAME"'


def run_traced_job(
    srv: ServerProcess, collector: Collector, hook: Hook
) -> tuple[str, dict[str, Any], dict[str, list[dict[str, Any]]]]:
    with srv.http() as http:
        resp = http.post(
            "/jobs",
            json={
                "command": PRINT_ENV,
                "webhook": {"url": hook.url, "states": ["running", "done"]},
            },
        )
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["job_id"]
        job = wait_job(http, job_id, timeout=30)
        assert job["state"] == "done", job

    def complete() -> dict[str, list[dict[str, Any]]] | None:
        spans = collector.of(job_id)
        if all(name in spans for name in NAMES) and len(spans.get("corral.webhook", [])) >= 2:
            return spans
        return None

    spans = wait_for(complete, timeout=20, what=f"the spans of job {job_id}")
    return job_id, job, spans


def check_trace(
    job_id: str,
    job: dict[str, Any],
    spans: dict[str, list[dict[str, Any]]],
    hook: Hook,
    runner_service: str = "corral-under-test",
) -> None:
    (submit,) = spans["corral.submit"]
    (lease,) = spans["corral.lease"]
    (run,) = spans["corral.run"]
    (complete,) = spans["corral.complete"]
    webhooks = spans["corral.webhook"]
    trace_id = submit["trace_id"]
    assert {s["trace_id"] for group in spans.values() for s in group} == {trace_id}
    # submit -> lease -> run -> complete; each delivery under the submit.
    assert submit["parent"] is None
    assert lease["parent"] == submit["span_id"]
    assert run["parent"] == lease["span_id"]
    assert complete["parent"] == run["span_id"]
    assert all(w["parent"] == submit["span_id"] for w in webhooks)
    assert submit["service"] == "corral-under-test"
    assert submit["attributes"]["corral.provider"] == "shell"
    assert submit["attributes"]["corral.attempt"] == 1
    assert lease["attributes"]["corral.attempt"] == 1
    assert run["attributes"]["corral.outcome"] == "done"
    assert complete["attributes"]["corral.state"] == "done"
    assert {w["attributes"]["corral.outcome"] for w in webhooks} == {"delivered"}
    assert complete["start"] >= run["start"] and complete["end"] <= run["end"]
    # The job keeps its submit span's context; its process read the run span's.
    assert job["traceparent"].startswith(f"00-{trace_id}-{submit['span_id']}-")
    assert f"tp=00-{trace_id}-{run['span_id']}-" in job["result"]
    assert f"svc={runner_service}" in job["result"]
    # Each delivery says which span sent it.
    mine = [tp[:52] for body, tp in hook.got if body["job_id"] == job_id and tp]
    assert len(mine) == len(hook.states(job_id))
    assert sorted(mine) == sorted(f"00-{trace_id}-{w['span_id']}" for w in webhooks)


def test_a_jobs_spans_form_one_trace(tmp_path: Path, collector: Collector, hook: Hook) -> None:
    with running_server(tmp_path / "data", env=otel_env(collector)) as srv:
        job_id, job, spans = run_traced_job(srv, collector, hook)
        check_trace(job_id, job, spans, hook)
        assert spans["corral.run"][0]["service"] == "corral-under-test"


def test_the_trace_crosses_an_http_runner(tmp_path: Path, collector: Collector, hook: Hook) -> None:
    env = otel_env(collector, CORRAL_RUNNER__EMBEDDED="false")
    with running_server(tmp_path / "data", env=env) as srv, srv.http() as http:
        key = create_key(srv, "runner")
        runner_env = {k: v for k, v in env.items() if k.startswith("OTEL_")}
        runner_env["OTEL_SERVICE_NAME"] = "corral-runner"
        proc, log = start_runner(srv, key, tmp_path / "remote", "--name", "remote", env=runner_env)
        try:
            wait_for(lambda: http.get("/runners").json(), timeout=20, what="the runner")
            job_id, job, spans = run_traced_job(srv, collector, hook)
        finally:
            assert stop_process(proc) == 0, log.read_text()
        (run,) = spans["corral.run"]
        assert run["service"] == "corral-runner"
        assert run["attributes"]["corral.runner"] == "remote"
        assert spans["corral.complete"][0]["service"] == "corral-under-test"
        # The run span's context reached the server in the complete call's header.
        check_trace(job_id, job, spans, hook, runner_service="corral-runner")


def test_nothing_is_exported_without_otel_settings(
    tmp_path: Path, collector: Collector, hook: Hook
) -> None:
    # The endpoint is known but OTEL_TRACES_EXPORTER=none turns traces off.
    env = {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint}
    with running_server(tmp_path / "data", env=env) as srv, srv.http() as http:
        resp = http.post("/jobs", json={"command": PRINT_ENV, "webhook": {"url": hook.url}})
        job = wait_job(http, resp.json()["job_id"], timeout=30)
        assert job["state"] == "done" and job["traceparent"] is None
        assert "tp= " in job["result"]  # no TRACEPARENT
        wait_for(lambda: len(hook.got) >= 3, timeout=10, what="the webhook deliveries")
        assert all(tp is None for _, tp in hook.got)
        # A client's own traceparent is kept and passed on even so.
        theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        resp = http.post("/jobs", json={"command": PRINT_ENV}, headers={"traceparent": theirs})
        job = wait_job(http, resp.json()["job_id"], timeout=30)
        assert job["traceparent"] == theirs and f"tp={theirs}" in job["result"]
        time.sleep(0.5)
    assert collector.requests == 0 and collector.spans == []


def test_the_protocol_carries_the_context_on_the_wire(tmp_path: Path, collector: Collector) -> None:
    """What a runner of its own must do: read LeasedJob.traceparent, send its
    run span's in a traceparent header; a sub-job joins the trace."""
    env = otel_env(collector, CORRAL_RUNNER__EMBEDDED="false")
    with running_server(tmp_path / "data", env=env) as srv, srv.http() as http:
        key = create_key(srv, "runner")
        runner = {"Authorization": f"Bearer {key}"}
        resp = http.post(
            "/runners/register",
            json={"name": "by-hand", "providers": ["shell"], "slots": 1},
            headers=runner,
        )
        runner_id = resp.json()["runner_id"]
        resp = http.post("/jobs", json={"command": "true"})
        job_id = resp.json()["job_id"]
        resp = http.post(
            f"/runners/{runner_id}/lease", json={"max_jobs": 1, "wait": 10}, headers=runner
        )
        (leased,) = resp.json()["jobs"]
        trace_id = leased["job"]["traceparent"].split("-")[1]
        _, lease_trace, lease_span, _ = leased["traceparent"].split("-")
        assert lease_trace == trace_id
        # This runner's run span, as it would send it.
        run_span = "00f067aa0ba902b7"
        mine = {
            "Authorization": f"Bearer {leased['token']}",
            "traceparent": f"00-{trace_id}-{run_span}-01",
        }
        resp = http.post("/worker/children", json={"spec": {"command": "true"}}, headers=mine)
        assert resp.status_code == 200, resp.text
        child_id = resp.json()["job_id"]
        child = http.get(f"/jobs/{child_id}").json()
        assert child["traceparent"].split("-")[1] == trace_id
        resp = http.post(
            "/worker/complete",
            json={"outcome": {"status": "done", "result": "ok", "exit_code": 0}},
            headers=mine,
        )
        assert resp.status_code == 200, resp.text

        def spans() -> dict[str, list[dict[str, Any]]] | None:
            mine, child = collector.of(job_id), collector.of(child_id)
            if "corral.complete" in mine and "corral.submit" in child:
                return {**mine, "child.submit": child["corral.submit"]}
            return None

        got = wait_for(spans, timeout=20, what="the spans")
        (lease,) = got["corral.lease"]
        assert lease["span_id"] == lease_span
        assert lease["parent"] == got["corral.submit"][0]["span_id"]
        assert got["corral.complete"][0]["parent"] == run_span
        assert got["child.submit"][0]["parent"] == run_span
        assert got["child.submit"][0]["trace_id"] == trace_id
