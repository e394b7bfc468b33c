"""Signed webhooks and the Python client against a real `corral serve`:
run() by webhook and by polling, deliveries to flaky, dead and absent
endpoints, restart with pending deliveries, and the async event iterator."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from corral.client import AsyncClient, Client, RunTimeout
from corral.testing import ServerProcess, free_port
from corral.webhooks import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, verify

from ._helpers import create_key, running_server, submit, wait_for, wait_job

SECRET = "endpoint-secret-0123456789"
ENV = {"CORRAL_WEBHOOK_TIMEOUT": "2"}


class Endpoint:
    """A webhook endpoint on loopback that answers with the scripted statuses
    (then 200), or never answers (``hang``), and records what it accepted."""

    def __init__(self, statuses: list[int] | None = None, *, hang: bool = False, port: int = 0):
        self.statuses = list(statuses or [])
        self.hang = hang
        self.accepted: list[dict[str, Any]] = []
        self.attempts = 0
        self._release = threading.Event()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                endpoint.attempts += 1
                if endpoint.hang:
                    endpoint._release.wait(30)
                    return
                status = endpoint.statuses.pop(0) if endpoint.statuses else 200
                if status == 200:
                    verify(body, self.headers[SIGNATURE_HEADER], SECRET)
                    endpoint.accepted.append(
                        {
                            **json.loads(body),
                            "delivery": self.headers[DELIVERY_HEADER],
                            "event": self.headers[EVENT_HEADER],
                            "received": time.monotonic(),
                        }
                    )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def states(self, job_id: str) -> list[str]:
        return [a["state"] for a in self.accepted if a["job_id"] == job_id]

    def close(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("hooks") / "data", env=ENV) as s:
        yield s


@pytest.fixture
def http(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.http() as client:
        yield client


@pytest.fixture
def client(srv: ServerProcess) -> Iterator[Client]:
    with Client(srv.url, srv.admin_key) as c:
        yield c


def test_run_by_webhook(client: Client, http: httpx.Client) -> None:
    result = client.run(command="echo pushed", timeout=30)
    assert result.ok and result.via == "webhook" and result.result == "pushed"
    assert result.attempts == 1 and result.started_at and result.finished_at

    # run() returns once its receiver has the last body; the server records
    # that delivery when the receiver's answer reaches it, a moment later.
    def recorded() -> list[dict[str, Any]] | None:
        found: list[dict[str, Any]] = http.get(f"/jobs/{result.job_id}/deliveries").json()
        return found if all(d["state"] != "pending" for d in found) else None

    deliveries = wait_for(recorded, timeout=10, what="the deliveries to be recorded")
    # run() asks for `queued` (the receiver is reachable) and the end; each
    # was delivered once, in order, on its first attempt.
    assert [d["body"]["state"] for d in reversed(deliveries)] == ["queued", "done"]
    assert {d["state"] for d in deliveries} == {"delivered"}
    assert all(
        len(d["attempt_log"]) == 1 and d["attempt_log"][0]["status"] == 204 for d in deliveries
    )
    assert "secret" not in json.dumps(deliveries)


def test_run_by_polling_when_asked_or_unreachable(client: Client) -> None:
    forced = client.run(command="echo polled", polling=True, timeout=30)
    assert forced.ok and forced.via == "polling" and forced.result == "polled"
    # The server cannot reach the advertised address: no delivery within the grace.
    started = time.monotonic()
    unreachable = client.run(
        command="echo fallback", advertise_host="unreachable.invalid", push_grace=1.0, timeout=30
    )
    assert unreachable.ok and unreachable.via == "polling" and unreachable.result == "fallback"
    assert time.monotonic() - started < 10
    # The receiver cannot bind (not an address of this host): polling at once.
    unbound = client.run(command="echo unbound", receiver_host="203.0.113.7", timeout=30)
    assert unbound.ok and unbound.via == "polling" and unbound.result == "unbound"


def test_run_timeout_leaves_the_job_or_cancels_it(client: Client) -> None:
    with pytest.raises(RunTimeout) as info:
        client.run(command="sleep 30", timeout=1.0)
    assert client.get(info.value.job_id).state.value in ("queued", "assigned", "running")
    client.cancel(info.value.job_id)
    with pytest.raises(RunTimeout) as info:
        client.run(command="sleep 30", timeout=1.0, cancel_on_timeout=True)
    assert client.get(info.value.job_id).state.value == "cancelled"


def test_flaky_endpoint_gets_every_delivery_once_in_order(http: httpx.Client) -> None:
    endpoint = Endpoint([500, 503])
    try:
        job_id = submit(http, "echo flaky", webhook={"url": endpoint.url, "secret": SECRET})
        wait_job(http, job_id)
        wait_for(
            lambda: endpoint.states(job_id)[-1:] == ["done"], timeout=30, what="all deliveries"
        )
        assert endpoint.states(job_id) == ["queued", "assigned", "running", "done"]
        assert len({a["delivery"] for a in endpoint.accepted}) == 4
        first = http.get(f"/jobs/{job_id}/deliveries").json()[-1]
        assert [a["status"] for a in first["attempt_log"]] == [500, 503, 200]
        assert first["state"] == "delivered" and first["attempts"] == 3
        assert endpoint.attempts == 6  # 3 for the first, then one each: none sent twice
    finally:
        endpoint.close()


def test_refusing_endpoint_stops_at_once(http: httpx.Client) -> None:
    endpoint = Endpoint([410, 410, 410, 410])
    try:
        job_id = submit(http, "echo gone", webhook={"url": endpoint.url, "secret": SECRET})
        wait_job(http, job_id)
        rows = wait_for(
            lambda: (
                (r := http.get(f"/jobs/{job_id}/deliveries").json())
                and all(d["state"] == "failed" for d in r)
                and len(r) == 4
                and r
            ),
            timeout=20,
            what="the deliveries to be given up",
        )
        assert all(d["attempts"] == 1 and d["last_status"] == 410 for d in rows)
        assert endpoint.attempts == 4  # none sent twice
    finally:
        endpoint.close()


def test_dead_endpoint_does_not_delay_others(http: httpx.Client) -> None:
    dead, good = Endpoint(hang=True), Endpoint()
    try:
        slow_job = submit(http, "echo a", webhook={"url": dead.url, "secret": SECRET})
        wait_job(http, slow_job)
        wait_for(lambda: dead.attempts >= 1, timeout=10, what="the dead endpoint to be tried")
        fast_job = submit(http, "echo b", webhook={"url": good.url, "secret": SECRET})
        done_at = time.monotonic()
        wait_job(http, fast_job)
        wait_for(lambda: good.states(fast_job)[-1:] == ["done"], timeout=10, what="deliveries")
        assert good.accepted[-1]["received"] - done_at < 3.0
        pending = http.get(f"/jobs/{slow_job}/deliveries").json()
        assert any(d["state"] == "pending" for d in pending)
    finally:
        dead.close()
        good.close()


def test_pending_deliveries_survive_a_restart(tmp_path: Path, held_port: int) -> None:
    port = held_port  # refused until the receiver binds it
    data = tmp_path / "data"
    with running_server(data, env=ENV) as s, s.http() as http:
        job_id = submit(
            http, "echo later", webhook={"url": f"http://127.0.0.1:{port}/hook", "secret": SECRET}
        )
        wait_job(http, job_id)
        wait_for(
            # In order: the first one is retried, the others wait behind it.
            lambda: any(d["attempts"] >= 1 for d in http.get(f"/jobs/{job_id}/deliveries").json()),
            timeout=10,
            what="a first (failed) attempt",
        )
    endpoint = Endpoint(port=port)  # the receiver comes up while corral is down
    try:
        with running_server(data, env=ENV) as s, s.http() as http:
            wait_for(
                lambda: endpoint.states(job_id)[-1:] == ["done"],
                timeout=60,
                what="the pending deliveries after the restart",
            )
            assert endpoint.states(job_id) == ["queued", "assigned", "running", "done"]
            # CLI: list, then redeliver one (same delivery id: a receiver can drop it).
            out = s.cli("webhooks", "ls", "--job", job_id, "--json")
            rows = json.loads(out.stdout)
            assert {r["state"] for r in rows} == {"delivered"}, out.stderr
            first = rows[-1]["id"]
            again = s.cli("webhooks", "redeliver", first)
            assert again.returncode == 0, again.stderr
            wait_for(
                lambda: [a["delivery"] for a in endpoint.accepted].count(first) == 2,
                timeout=20,
                what="the redelivery",
            )
    finally:
        endpoint.close()


def _flood() -> tuple[str, list[str]]:
    """A job's command, and its lines, that make a reader who stopped reading
    fall behind for real: first more bytes than the kernel holds for its
    connection (the server's send buffer at its largest, the reader's receive
    window, and some), so the server's writes block; then 40 more batches of
    events (a bus message each), more than a subscriber's sse_buffer of 10."""
    wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    rmem = int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[1])
    width = 16_000  # under the shell executor's MAX_LINE: one event a line
    big = (wmem_max + rmem + 2_000_000) // width + 1
    command = (
        f"for i in $(seq 1 {big}); do printf 'big %d %0{width}d\\n' $i 0; done; "
        "for j in $(seq 1 40); do echo tick $j; sleep 0.05; done"
    )
    lines = [f"big {i} {0:0{width}d}" for i in range(1, big + 1)]
    return command, lines + [f"tick {j}" for j in range(1, 41)]


async def _ended(s: ServerProcess, job_id: str) -> None:
    async with httpx.AsyncClient(
        base_url=s.url, headers={"Authorization": f"Bearer {s.admin_key}"}
    ) as http:
        for _ in range(600):
            if (await http.get(f"/jobs/{job_id}")).json()["state"] == "done":
                return
            await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end")


def _ends_the_job(events: list[dict[str, Any]]) -> bool:
    return (
        bool(events) and events[-1]["type"] == "job.state" and events[-1]["payload"]["to"] == "done"
    )


async def _stalled_raw_reader(
    s: ServerProcess, job_id: str, ended: asyncio.Event
) -> list[list[dict[str, Any]]]:
    """Read a job's stream without corral's client: stop reading after the
    first event until the job ended, read on until the server closes, then
    resume with Last-Event-ID. Returns the events of each connection."""
    connections: list[list[dict[str, Any]]] = []
    last: int | None = None
    async with httpx.AsyncClient(
        base_url=s.url,
        headers={"Authorization": f"Bearer {s.admin_key}"},
        timeout=60,
    ) as http:
        while not connections or not _ends_the_job(connections[-1]):
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = str(last)
            got: list[dict[str, Any]] = []
            connections.append(got)
            async with aconnect_sse(http, "GET", f"/jobs/{job_id}/events", headers=headers) as src:
                async for sse in src.aiter_sse():
                    if not sse.data:
                        continue
                    got.append(json.loads(sse.data))
                    last = got[-1]["seq"]
                    if len(connections) == 1 and len(got) == 1:
                        await ended.wait()
            assert len(connections) < 10, "the stream never reached the job's end"
    return connections


async def test_a_reader_that_falls_behind_is_cut_and_resumes_every_event_once(
    tmp_path: Path,
) -> None:
    """Two readers stop reading a flooding job's stream until it ended: the
    server's socket buffers fill, their subscriptions overflow (sse_buffer 10)
    and the server cuts them; each resumes with Last-Event-ID and gets every
    event once, in order — the raw stream (no event sent twice) and
    AsyncClient.job_events (which reconnects by itself)."""
    env = {**ENV, "CORRAL_SSE_BUFFER": "10"}
    with running_server(tmp_path / "data", env=env) as s:
        async with AsyncClient(s.url, s.admin_key) as c:
            opened: list[str | None] = []  # each stream's Last-Event-ID

            async def on_request(request: httpx.Request) -> None:
                if request.headers.get("accept") == "text/event-stream":
                    opened.append(request.headers.get("last-event-id"))

            c._http.event_hooks["request"].append(on_request)
            command, flood = _flood()
            accepted = await c.submit(command=command)
            ended = asyncio.Event()
            raw = asyncio.create_task(_stalled_raw_reader(s, accepted.job_id, ended))
            seqs: list[int] = []
            lines: list[str] = []
            async for event in c.job_events(accepted.job_id, timeout=60):
                if event.seq is not None:
                    seqs.append(event.seq)
                if event.type == "output":
                    lines.append(event.payload["line"])
                if len(seqs) == 1:
                    # Stop reading until the job is over: all it printed is behind us.
                    await _ended(s, accepted.job_id)
                    ended.set()
            assert lines == flood
            assert seqs == list(range(seqs[0], seqs[-1] + 1))
            assert len(opened) >= 2 and opened[0] is None, opened
            assert opened[1] is not None and int(opened[1]) < seqs[-1], opened

            connections = await raw
            # The server cut the first connection before the job's last event ...
            assert len(connections) >= 2 and not _ends_the_job(connections[0])
            # ... and across the cut it sent every event once, in order.
            raw_seqs = [e["seq"] for conn in connections for e in conn]
            assert raw_seqs == list(range(raw_seqs[0], raw_seqs[-1] + 1))
            assert [
                e["payload"]["line"] for conn in connections for e in conn if e["type"] == "output"
            ] == flood

            result = await c.run(command="echo async", timeout=30)
            assert result.ok and result.via == "webhook" and result.result == "async"
            job = await c.wait(result.job_id, timeout=5)
            assert job.state.value == "done"


def test_non_admins_see_that_a_connection_failed_not_why(
    srv: ServerProcess, http: httpx.Client, held_port: int
) -> None:
    dead = f"http://127.0.0.1:{held_port}/hook"  # nothing listens: connection refused
    resp = http.post("/jobs", json={"command": "true", "webhook": {"url": dead}})
    job_id = resp.json()["job_id"]
    rows = wait_for(
        lambda: (r := http.get(f"/jobs/{job_id}/deliveries").json()) and r[-1]["attempts"] and r,
        timeout=20,
        what="a first attempt",
    )
    assert "ConnectError" in rows[-1]["last_error"]  # the admin sees the detail
    viewer = create_key(srv, "viewer")
    with srv.http(viewer) as as_viewer:
        for path in (f"/jobs/{job_id}/deliveries", f"/webhooks/deliveries?job_id={job_id}"):
            shown = as_viewer.get(path).json()
            assert shown and {r["last_error"] for r in shown} <= {"connection failed", None}
            for attempt in (a for r in shown for a in r.get("attempt_log", [])):
                assert attempt["error"] == "connection failed"


def test_private_addresses_are_refused_unless_allowed(tmp_path: Path) -> None:
    """Off loopback (or with the setting off), a job's webhook may not point
    into the server's network: 422 at submit. The admin's [[webhooks]] still
    go where configured, and Client.run() falls back to polling."""
    admins = Endpoint()
    config = tmp_path / "corral.toml"
    config.write_text(
        f'[[webhooks]]\nurl = "{admins.url}"\nsecret = "{SECRET}"\nstates = ["done"]\n'
    )
    env = {**ENV, "CORRAL_WEBHOOK_ALLOW_PRIVATE": "false"}
    try:
        with (
            running_server(tmp_path / "data", env=env, args=("--config", str(config))) as s,
            s.http() as http,
        ):
            port = free_port()
            session = http.post("/sessions", json={}).json()["id"]
            for url in (
                f"http://127.0.0.1:{port}/hook",
                f"http://localhost:{port}/hook",
                f"http://[::ffff:127.0.0.1]:{port}/hook",
                f"http://2130706433:{port}/hook",  # 127.0.0.1 as one number
                "http://169.254.169.254/latest/meta-data/",
                "http://10.1.2.3/hook",
                "http://0.0.0.0:8487/hook",
            ):
                for path in ("/jobs", f"/sessions/{session}/turns"):
                    resp = http.post(path, json={"command": "true", "webhook": url})
                    assert resp.status_code == 422, (url, resp.text)
                    error = resp.json()["error"]
                    assert error["code"] == "webhook_refused"
                    assert "webhook_allow_private" in error["message"]
            # A queue file aiming its webhook there goes to failed/ with the reason.
            queue = tmp_path / "queue"  # beside the config file
            (queue / ".hook.tmp").write_text(
                f"---\ncommand: 'true'\nwebhook: http://127.0.0.1:{port}/hook\n---\n"
            )
            (queue / ".hook.tmp").rename(queue / "hook.md")
            refused = wait_for(
                lambda: (queue / "failed" / "hook.md").exists() and queue / "failed" / "hook.md",
                timeout=20,
                what="the queue file to be refused",
            )
            assert "webhook_allow_private" in refused.read_text()
            public = http.post(
                "/jobs", json={"command": "true", "webhook": "http://93.184.215.14/hook"}
            )
            assert public.status_code == 202, public.text
            # The admin's own endpoint, on loopback, is delivered to.
            job_id = http.post("/jobs", json={"command": "echo admins"}).json()["job_id"]
            wait_for(lambda: admins.states(job_id) == ["done"], timeout=20, what="delivery")
            with Client(s.url, s.admin_key) as c:
                result = c.run(None, command="echo polled", timeout=30)
            assert result.ok and result.via == "polling" and result.result == "polled"
    finally:
        admins.close()
