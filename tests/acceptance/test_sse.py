"""Live streams: lines arrive while the job runs; a stream resumed with
Last-Event-ID after a disconnect yields every event exactly once."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import httpx
from httpx_sse import connect_sse

from corral.testing import ServerProcess

from ._helpers import TERMINAL, get_job, output_lines, session_events, submit, wait_job


def test_live_output_arrives_before_the_job_ends(srv: ServerProcess, http: httpx.Client) -> None:
    job_id = submit(http, "echo first; sleep 2; echo second")
    seen: list[tuple[str, str]] = []
    first_at: float | None = None
    state_when_first: str | None = None
    with srv.client() as client:
        for event in client.job_events(job_id, timeout=30):
            if event.type == "output":
                line = event.payload["line"]
                seen.append((event.type, line))
                if line == "first":
                    first_at = time.monotonic()
                    state_when_first = get_job(http, job_id)["state"]
            elif event.type == "job.state":
                seen.append((event.type, event.payload["to"]))
        ended_at = time.monotonic()
    job = get_job(http, job_id)
    assert job["state"] == "done"
    assert first_at is not None, seen
    # "first" was delivered while the job was still running, well before it ended.
    assert state_when_first == "running"
    assert ended_at - first_at > 1.0, (first_at, ended_at)
    assert [v for t, v in seen if t == "output"] == ["first", "second"]
    assert seen[-1] == ("job.state", "done")  # the stream ends with the job


def test_job_event_stream_as_raw_sse(srv: ServerProcess, http: httpx.Client) -> None:
    job_id = submit(http, "echo raw-1; sleep 0.5; echo raw-2")
    messages: list[Any] = []
    with connect_sse(
        http,
        "GET",
        f"/jobs/{job_id}/events",
        headers={"Accept": "text/event-stream"},
        timeout=httpx.Timeout(30.0),
    ) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        for sse in source.iter_sse():
            if not sse.data:
                continue
            data = json.loads(sse.data)
            assert sse.id == str(data["seq"])  # the SSE id is the event seq
            messages.append(data)
        # The server closes the stream itself once the job has ended.
    assert messages[-1]["type"] == "job.state" and messages[-1]["payload"]["to"] == "done"
    assert output_lines(messages) == ["raw-1", "raw-2"]
    assert all(m["job_id"] == job_id for m in messages)
    seqs = [m["seq"] for m in messages]
    assert seqs == sorted(set(seqs))


def _read(
    http: httpx.Client, session_id: str, last: int | None, stop_after: int | None, job_id: str
) -> tuple[list[dict[str, Any]], bool]:
    """Read a session stream from ``last``; disconnect after ``stop_after`` events
    or once ``job_id`` reached a final state."""
    headers = {"Accept": "text/event-stream"}
    if last is not None:
        headers["Last-Event-ID"] = str(last)
    got: list[dict[str, Any]] = []
    with connect_sse(
        http, "GET", f"/sessions/{session_id}/stream", headers=headers, timeout=httpx.Timeout(30.0)
    ) as source:
        assert source.response.status_code == 200, source.response.read()
        for sse in source.iter_sse():
            if not sse.data:
                continue
            event = json.loads(sse.data)
            got.append(event)
            if (
                event["type"] == "job.state"
                and event["job_id"] == job_id
                and event["payload"]["to"] in TERMINAL
            ):
                return got, True
            if stop_after is not None and len(got) >= stop_after:
                return got, False  # leaving the block drops the connection mid-stream
    return got, False


def test_session_stream_resumes_after_disconnects_exactly_once(
    srv: ServerProcess, http: httpx.Client
) -> None:
    n = 200
    job_id = submit(http, f"for i in $(seq 1 {n}); do echo line-$i; sleep 0.005; done")
    session_id = get_job(http, job_id)["session_id"]

    received: list[dict[str, Any]] = []
    last: int | None = None
    reconnects = 0
    while_running = 0
    while True:
        # Small reads at first so several disconnects land while the job runs.
        chunk, finished = _read(http, session_id, last, None if reconnects >= 6 else 25, job_id)
        received.extend(chunk)
        if chunk:
            last = chunk[-1]["seq"]
        if finished:
            break
        reconnects += 1
        if get_job(http, job_id)["state"] == "running":
            while_running += 1
        assert reconnects < 100, "the stream never reached the end of the job"

    assert reconnects >= 3
    assert while_running >= 1, "no disconnect happened while the job was producing output"
    seqs = [e["seq"] for e in received]
    assert seqs == list(range(1, len(received) + 1)), seqs  # contiguous, no duplicates
    assert len({e["event_id"] for e in received}) == len(received)
    assert output_lines(received) == [f"line-{i}" for i in range(1, n + 1)]

    # The live stream and the stored log agree, event for event.
    assert wait_job(http, job_id)["state"] == "done"
    stored = session_events(http, session_id)
    assert [(e["seq"], e["event_id"], e["type"]) for e in stored] == [
        (e["seq"], e["event_id"], e["type"]) for e in received
    ]


def test_stream_resume_from_the_middle_of_a_finished_job(
    srv: ServerProcess, http: httpx.Client
) -> None:
    job_id = submit(http, "for i in 1 2 3 4 5; do echo m-$i; done")
    session_id = wait_job(http, job_id)["session_id"]
    stored = session_events(http, session_id)
    middle = stored[len(stored) // 2]["seq"]
    rest, finished = _read(http, session_id, middle, None, job_id)
    assert finished
    assert [e["seq"] for e in rest] == [e["seq"] for e in stored if e["seq"] > middle]
    # ?since= works the same as Last-Event-ID on the JSON log.
    resp = http.get(f"/sessions/{session_id}/events", params={"since": middle})
    assert [e["seq"] for e in resp.json()["events"]] == [e["seq"] for e in rest]

    resp = http.get(
        f"/sessions/{session_id}/stream",
        headers={"Accept": "text/event-stream", "Last-Event-ID": "abc"},
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "bad_request"


def _chunks(srv: ServerProcess, path: str) -> list[bytes]:
    """The body of a GET as the chunks the server sent (one per send)."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
            f"Authorization: Bearer {srv.admin_key}\r\nConnection: close\r\n\r\n".encode()
        )
        raw = b""
        while data := sock.recv(65536):
            raw += data
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0] and b"chunked" in head.lower(), head
    chunks = []
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return chunks
        chunks.append(body[:size])
        body = body[size + 2 :]


def test_events_ready_together_go_out_in_one_send(srv: ServerProcess, http: httpx.Client) -> None:
    """A back-fill page (and a live batch alike) is one write to the client,
    not one per event: each send crosses the middleware and the socket (#18)."""
    job_id = submit(http, "for i in $(seq 1 40); do echo line-$i; done")
    assert wait_job(http, job_id)["state"] == "done"
    chunks = [c for c in _chunks(srv, f"/jobs/{job_id}/events") if c.strip(b": ping\n")]
    assert len(chunks) == 1, [c[:60] for c in chunks]
    frames = [f for f in chunks[0].decode().split("\n\n") if f]
    events = [json.loads(f.split("data: ", 1)[1]) for f in frames]
    assert [e["payload"]["line"] for e in events if e["type"] == "output"] == [
        f"line-{i}" for i in range(1, 41)
    ]
    assert events[-1]["type"] == "job.state" and events[-1]["payload"]["to"] == "done"
    assert [f.split("\n", 1)[0] for f in frames] == [f"id: {e['seq']}" for e in events]
