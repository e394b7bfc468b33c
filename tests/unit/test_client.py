"""The client's two faces stay one client (as httpx keeps ``Client`` and
``AsyncClient`` equal), and its flows do the right thing at each step. The
flows are pure, so they are walked here step by step; the faces are tested
against a real server in tests/acceptance/test_client.py."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from corral import errors
from corral.client import ApiError, AsyncClient, Client, RunTimeout, calls, flows
from corral.client.base import (
    AwaitDelivery,
    Call,
    Emit,
    Next,
    OpenReceiver,
    OpenStream,
    Sleep,
    Unreachable,
    endpoint,
    stream,
)
from corral.client.methods import Methods
from corral.models import Artifact, Event, Job, JobAccepted

URL, TOKEN = "http://127.0.0.1:9", "key"
RENAMED = {"aclose": "close"}  # the one name that differs, as in httpx


def _public(cls: type) -> set[str]:
    return {RENAMED.get(n, n) for n in dir(cls) if not n.startswith("_")}


@pytest.fixture
def faces() -> Iterator[tuple[Client, AsyncClient]]:
    sync, aio = Client(URL, TOKEN), AsyncClient(URL, TOKEN)
    yield sync, aio
    sync.close()
    asyncio.run(aio.aclose())


def test_both_faces_have_the_same_public_methods() -> None:
    assert _public(Client) == _public(AsyncClient)
    # Nothing a face adds but its own closing: every method is declared once.
    declared = {n for n in vars(Methods) if not n.startswith("_")}
    assert _public(Client) == declared | {"close"}


def test_every_method_has_one_signature_and_the_right_kind(
    faces: tuple[Client, AsyncClient],
) -> None:
    sync, aio = faces
    for name in sorted(_public(Client) - {"close"}):
        s, a = getattr(sync, name), getattr(aio, name)
        assert inspect.signature(s) == inspect.signature(a), name
        declared = vars(Methods)[name]
        if isinstance(declared, endpoint):
            assert not inspect.iscoroutinefunction(s), name
            assert inspect.iscoroutinefunction(a), name
        else:
            assert isinstance(declared, stream), name
    for name in ("events", "job_events", "follow_agent_logs"):
        assert inspect.isgenerator(getattr(sync, name)("x"))
        iterator = getattr(aio, name)("x")
        assert inspect.isasyncgen(iterator)
        asyncio.run(iterator.aclose())
    assert inspect.iscoroutinefunction(aio.aclose) and not inspect.iscoroutinefunction(sync.close)
    assert inspect.signature(Client) == inspect.signature(AsyncClient)


def test_methods_are_only_for_the_faces() -> None:
    with pytest.raises(TypeError, match="Client and AsyncClient"):
        Methods().get("job")


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, errors.BadRequest),
        (401, errors.Unauthorized),
        (403, errors.Forbidden),
        (404, errors.NotFound),
        (409, errors.Conflict),
        (413, errors.PayloadTooLarge),
        (422, errors.InvalidInput),
        (429, errors.TooManyRequests),
        (503, errors.StoreUnavailable),
        (502, errors.CorralError),
    ],
    ids=lambda v: str(v) if isinstance(v, int) else v.__name__,
)
def test_a_refusal_is_the_error_tree_class_of_its_status(
    status: int, kind: type[errors.CorralError]
) -> None:
    err = ApiError.of(status, "some_code", "why")
    assert isinstance(err, ApiError) and isinstance(err, kind)
    assert (err.status, err.code, err.message) == (status, "some_code", "why")


# -- the flows, one step at a time ---------------------------------------------


def _job(state: str, job_id: str = "j1") -> Job:
    now = datetime.now(UTC)
    return Job(
        id=job_id,
        session_id="s1",
        turn=1,
        state=state,
        provider="shell",
        priority=2,
        attempt=1,
        max_attempts=1,
        source="api",
        epoch=1,
        created_at=now,
        available_at=now,
        updated_at=now,
        result="hi" if state == "done" else None,
    )


class Walk:
    """Walks a flow as a face would, answering each step from a script."""

    def __init__(self, flow: Any) -> None:
        self.flow = flow
        self.steps: list[Any] = []
        self.result: Any = None

    def next(self, answer: Any = None, error: BaseException | None = None) -> Any:
        try:
            step = self.flow.throw(error) if error else self.flow.send(answer)
        except StopIteration as stop:
            self.result = stop.value
            return None
        self.steps.append(step)
        return step


def _path(step: Any) -> str:
    assert isinstance(step, Call), step
    return f"{step.method} {step.path}"


def test_run_polls_with_growing_intervals_then_reads_the_job_and_artifacts() -> None:
    walk = Walk(flows.run(command="true", polling=True, poll_interval=0.05))
    submit = walk.next()
    assert _path(submit) == "POST /jobs" and submit.json == {"command": "true"}
    accepted = JobAccepted(job_id="j1", session_id="s1", state="queued", created=True)
    assert _path(walk.next(accepted)) == "GET /jobs/j1"
    sleeps = []
    for _ in range(3):
        step = walk.next(_job("running"))
        assert isinstance(step, Sleep)
        sleeps.append(round(step.seconds, 4))
        assert _path(walk.next()) == "GET /jobs/j1"
    assert sleeps == [0.05, 0.075, 0.1125]
    assert _path(walk.next(_job("done"))) == "GET /jobs/j1"
    assert _path(walk.next(_job("done"))) == "GET /jobs/j1/artifacts"
    now = datetime.now(UTC)
    artifact = Artifact(
        job_id="j1", name="diff.patch", media_type="text/x-diff", size=1, created_at=now
    )
    assert walk.next([artifact]) is None
    assert (
        walk.result.ok and walk.result.via == "polling" and walk.result.artifacts == ["diff.patch"]
    )


def test_run_by_webhook_asks_for_queued_and_the_ends() -> None:
    walk = Walk(flows.run(command="true", push_grace=2.0))
    assert isinstance(walk.next(), OpenReceiver)

    class Hook:
        url, secret = "http://127.0.0.1:1/corral-webhook", "s" * 32

    submit = walk.next(Hook())
    assert submit.json["webhook"] == {
        "url": Hook.url,
        "secret": Hook.secret,
        "states": ["queued", "done", "failed", "cancelled"],
    }
    first = walk.next(JobAccepted(job_id="j1", session_id="s1", state="queued", created=True))
    assert isinstance(first, AwaitDelivery) and first.timeout == pytest.approx(2.0, abs=0.1)
    end = walk.next({"state": "queued"})
    assert isinstance(end, AwaitDelivery) and not end.until({"state": "running"})
    assert end.until({"state": "failed"})
    assert _path(walk.next({"state": "done"})) == "GET /jobs/j1"
    walk.next(_job("done"))
    walk.next([])
    assert walk.result.via == "webhook"


def test_run_falls_back_to_polling_when_nothing_is_delivered() -> None:
    walk = Walk(flows.run(command="true"))
    walk.next()
    walk.next(type("Hook", (), {"url": "u", "secret": "s"})())
    walk.next(JobAccepted(job_id="j1", session_id="s1", state="queued", created=True))
    assert _path(walk.next(None)) == "GET /jobs/j1"  # no delivery within the grace


@pytest.mark.parametrize("cancel", [True, False], ids=["cancel_on_timeout", "leave_it"])
@pytest.mark.parametrize(
    "interruption",
    [asyncio.CancelledError(), KeyboardInterrupt(), RunTimeout("late", "j1")],
    ids=["task-cancelled", "ctrl-c", "timeout"],
)
def test_an_interrupted_run_cancels_the_job_only_when_asked(
    interruption: BaseException, cancel: bool
) -> None:
    walk = Walk(flows.run(command="sleep 9", polling=True, cancel_on_timeout=cancel))
    walk.next()
    walk.next(JobAccepted(job_id="j1", session_id="s1", state="queued", created=True))
    if cancel:
        assert _path(walk.next(error=interruption)) == "POST /jobs/j1/cancel"
        with pytest.raises(type(interruption)):
            walk.next(_job("cancelled"))
    else:
        with pytest.raises(type(interruption)):
            walk.next(error=interruption)


def test_run_times_out_at_the_deadline() -> None:
    walk = Walk(flows.run(command="sleep 9", polling=True, timeout=0.0))
    walk.next()
    walk.next(JobAccepted(job_id="j1", session_id="s1", state="queued", created=True))
    with pytest.raises(RunTimeout) as info:
        walk.next(_job("running"))
    assert info.value.job_id == "j1"


def test_a_stream_resumes_after_the_last_event_and_never_repeats_one() -> None:
    items = flows.job_events("j1")
    walk = Walk(items.flow)
    opened = walk.next()
    assert isinstance(opened, OpenStream) and "Last-Event-ID" not in opened.headers
    handle = object()
    assert isinstance(walk.next(handle), Next)
    emitted = walk.next(_event(1, "output"))
    assert isinstance(emitted, Emit) and emitted.item.seq == 1
    walk.next()
    # The connection drops: wait a little, reconnect after seq 1.
    pause = walk.next(error=Unreachable(URL, httpx.ReadError("reset")))
    assert isinstance(pause, Sleep)
    again = walk.next()
    assert isinstance(again, OpenStream) and again.headers["Last-Event-ID"] == "1"
    walk.next(handle)
    assert isinstance(walk.next(_event(1, "output")), Next)  # seen: skipped
    assert isinstance(walk.next(_event(2, "job.state", {"to": "done"})), Emit)
    walk.next()
    assert walk.next(None) is None  # the job ended, and so does the stream


def test_a_stream_gives_up_after_twenty_failures() -> None:
    walk = Walk(flows.follow_agent_logs("bot").flow)
    walk.next()
    with pytest.raises(errors.ClientError, match="lost the log stream"):
        for _ in range(30):
            assert isinstance(walk.next(error=Unreachable(URL, httpx.ConnectError("no"))), Sleep)
            assert isinstance(walk.next(), OpenStream)


def test_events_without_follow_are_the_stored_ones_page_by_page() -> None:
    walk = Walk(flows.events("s1", since=3, follow=False).flow)
    page = walk.next()
    assert _path(page) == "GET /sessions/s1/events" and page.params == {"since": 3, "limit": 5000}
    full = [_event_obj(i) for i in range(4, 4 + flows.PAGE)]
    assert walk.next((full, full[-1].seq)).params["since"] == full[-1].seq
    emitted = [walk.next(([_event_obj(9999)], 9999))]
    while (step := walk.next()) is not None:
        emitted.append(step)
    assert [e.item.seq for e in emitted] == [*range(4, 4 + flows.PAGE), 9999]


def test_ids_stay_inside_their_path_segment() -> None:
    walk = Walk(flows.wait("../admin/pause"))
    assert walk.next().path == "/jobs/..%2Fadmin%2Fpause/events"


def _event(seq: int, type: str, payload: dict[str, Any] | None = None) -> str:
    return _event_obj(seq, type, payload).to_json()


def _event_obj(seq: int, type: str = "output", payload: dict[str, Any] | None = None) -> Event:
    return Event(
        session_id="s1",
        seq=seq,
        event_id=f"e{seq}",
        job_id="j1",
        type=type,
        epoch=1,
        payload=payload or {"line": "x"},
        ephemeral=False,
        internal=False,
        created_at=datetime.now(UTC),
    )


def test_run_at_is_sent_as_iso_8601_by_submit_turn_and_run() -> None:
    at = datetime(2030, 1, 1, 9, 30, tzinfo=UTC)
    assert calls.submit("x", run_at=at).json == {
        "prompt": "x",
        "run_at": "2030-01-01T09:30:00+00:00",
    }
    assert calls.submit("x", run_at="2030-01-01T09:30:00Z").json == {
        "prompt": "x",
        "run_at": "2030-01-01T09:30:00Z",
    }
    assert calls.turn("s1", "x", run_at=at).json["run_at"] == "2030-01-01T09:30:00+00:00"
    walk = Walk(flows.run(command="true", polling=True, run_at=at))
    assert walk.next().json == {"command": "true", "run_at": "2030-01-01T09:30:00+00:00"}
