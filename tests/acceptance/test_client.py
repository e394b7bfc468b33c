"""The Python client's two faces against a real `corral serve`: every
method of ``AsyncClient`` answers what ``Client``'s does, with typed models;
``events(follow=False)`` ends; an interrupted async ``run()`` cancels its job
when asked. (run() by webhook and polling: test_webhooks.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from corral.client import ApiError, AsyncClient, Client, RunTimeout
from corral.errors import NotFound
from corral.models import (
    Agent,
    AgentDetail,
    AgentLine,
    Delivery,
    JobAccepted,
    RouteDecision,
    SessionDetail,
    Status,
)
from corral.testing import ServerProcess

from ._helpers import kill_leftovers, marker, running_server

TICKER = "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.2)\n"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("client")
    mark = marker()
    config = root / "corral.toml"
    command = json.dumps([sys.executable, "-u", "-c", TICKER + f"# {mark}"])
    config.write_text(f"[agents.ticker]\ncommand = {command}\nrestart_delay = 0.2\n")
    try:
        with running_server(root / "data", args=("--config", str(config), "--no-queue")) as s:
            yield s
    finally:
        kill_leftovers(mark)


@pytest.fixture
def client(srv: ServerProcess) -> Iterator[Client]:
    with Client(srv.url, srv.admin_key) as c:
        yield c


def _same(a: Any, b: Any, *volatile: str) -> None:
    """The two faces' answers agree (but for fields that change between two reads)."""

    def plain(x: Any) -> Any:
        if isinstance(x, list):
            return [plain(i) for i in x]
        data = x.model_dump(mode="json")
        for name in volatile:
            data.pop(name, None)
        return data

    assert plain(a) == plain(b)


async def test_every_method_of_the_async_face_answers_like_the_sync_one(
    srv: ServerProcess, client: Client
) -> None:
    async with AsyncClient(srv.url, srv.admin_key) as ac:
        session = await ac.create_session("both faces")
        hook = "https://example.invalid/hook"
        accepted = await ac.turn(session.id, command="echo one; echo two", webhook=hook)
        assert isinstance(accepted, JobAccepted) and accepted.session_id == session.id
        job = await ac.wait(accepted.job_id, timeout=30)
        assert job.state.value == "done" and job.result == "one\ntwo"
        assert client.get(job.id) == await ac.get(job.id)
        _same(client.list(session_id=session.id), await ac.list(session_id=session.id))
        detail = await ac.session(session.id)
        assert isinstance(detail, SessionDetail) and [j.id for j in detail.jobs] == [job.id]
        _same(client.session(session.id), detail, "updated_at")
        stored = await ac.job_event_list(job.id)
        assert [e.payload["line"] for e in stored if e.type == "output"] == ["one", "two"]
        assert stored == client.job_event_list(job.id)
        assert await ac.session_events(session.id) == client.session_events(session.id)
        assert await ac.artifacts(job.id) == client.artifacts(job.id) == []

        deliveries = await ac.deliveries(job.id)
        assert deliveries and all(isinstance(d, Delivery) for d in deliveries)
        assert deliveries[0].url == hook and deliveries[0].attempt_log is not None
        _same(
            client.deliveries(job.id),
            deliveries,
            "attempts",
            "attempt_log",
            "last_error",
            "last_status",
            "next_attempt_at",
            "state",
        )
        listed = await ac.all_deliveries(job_id=job.id)
        assert {d.id for d in listed} == {d.id for d in deliveries}
        again = await ac.redeliver(deliveries[0].id)
        assert again.id == deliveries[0].id and again.state == "pending"
        assert await ac.webhook_secret() == client.webhook_secret()

        decision = await ac.route(command="true")
        assert isinstance(decision, RouteDecision) and decision == client.route(command="true")
        status = await ac.status()
        assert isinstance(status, Status) and status.runners and not status.paused
        assert await ac.pause() is True and client.status().paused
        assert await ac.resume() is False and not client.status().paused
        assert await ac.resume_provider("shell") is False

        failing = await ac.submit(command="exit 3", max_attempts=1)
        assert (await ac.wait(failing.job_id, timeout=30)).state.value == "failed"
        assert (await ac.retry(failing.job_id)).attempt == 2
        assert (await ac.wait(failing.job_id, timeout=30)).exit_code == 3
        slow = await ac.submit(command="sleep 30")
        assert (await ac.cancel(slow.job_id)).state.value == "cancelled"
        with pytest.raises(ApiError) as info:
            await ac.cancel(job.id)  # it has ended
        assert info.value.status == 409 and info.value.code == "invalid_transition"

        assert [a.name for a in await ac.agents()] == ["ticker"]
        first = await ac.agent("ticker")
        assert isinstance(first, AgentDetail) and first.config["command"][0] == sys.executable
        restarted = await ac.agent_action("ticker", "restart")
        assert isinstance(restarted, Agent) and restarted.status == "running"
        assert restarted.pid != first.pid
        lines: list[AgentLine] = []
        async for line in ac.follow_agent_logs("ticker", n=1):
            lines.append(line)
            if len(lines) == 3:
                break
        assert [line.line for line in lines] == ["tick"] * 3
        assert [line.offset for line in lines] == sorted({line.offset for line in lines})
        # The live feed hears a line a moment before it is stored (the endpoint
        # says so): the stored tail catches up with what was streamed.
        deadline = time.monotonic() + 10
        while (recent := await ac.agent_logs("ticker", 2))[-1].offset < lines[-1].offset:
            assert time.monotonic() < deadline, (recent, lines)
            await asyncio.sleep(0.05)
        assert len(recent) == 2 and [r.line for r in recent] == ["tick"] * 2
        reloaded = await ac.reload_agents()
        assert (reloaded.added, reloaded.removed, reloaded.changed) == ([], [], [])
        with pytest.raises(NotFound):  # a 404 is the error tree's NotFound
            await ac.agent("nobody")


def test_events_without_follow_end_with_the_stored_ones(srv: ServerProcess, client: Client) -> None:
    # The README's example: run, then read what the session recorded.
    result = client.run(command="echo hello", timeout=30)
    events = list(client.events(result.session_id, follow=False))
    assert [e.payload["line"] for e in events if e.type == "output"] == ["hello"]
    assert events[-1].type == "job.state" and events[-1].payload["to"] == "done"
    assert [e.seq for e in events] == sorted({e.seq for e in events})
    after = list(client.events(result.session_id, since=events[0].seq or 0, follow=False))
    assert after == events[1:]

    async def read() -> list[Any]:
        async with AsyncClient(srv.url, srv.admin_key) as ac:
            return [e async for e in ac.events(result.session_id, follow=False)]

    assert asyncio.run(read()) == events


def test_following_a_session_stops_when_the_caller_stops(client: Client) -> None:
    result = client.run(command="echo live", timeout=30)
    seen = []
    # Live: it ends only when the caller stops (closing the stream).
    with contextlib.closing(client.events(result.session_id)) as live:
        for event in live:
            seen.append(event)
            if event.type == "job.state" and event.payload["to"] == "done":
                break
    assert any(e.type == "output" and e.payload["line"] == "live" for e in seen)


async def test_a_cancelled_async_run_cancels_its_job_when_asked(srv: ServerProcess) -> None:
    key = f"cancel-{uuid.uuid4().hex}"
    async with AsyncClient(srv.url, srv.admin_key) as ac:
        task = asyncio.create_task(
            ac.run(command="sleep 30", idempotency_key=key, cancel_on_timeout=True)
        )
        job_id = None
        for _ in range(200):
            await asyncio.sleep(0.05)
            found = await ac.submit(command="sleep 30", idempotency_key=key)  # the same job
            if (await ac.get(found.job_id)).state.value == "running":
                job_id = found.job_id
                break
        assert job_id is not None
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await ac.get(job_id)).state.value == "cancelled"
        # Without cancel_on_timeout the job goes on.
        with pytest.raises(RunTimeout) as info:
            await ac.run(command="sleep 30", timeout=0.5)
        assert (await ac.get(info.value.job_id)).state.value in ("queued", "assigned", "running")
        await ac.cancel(info.value.job_id)
