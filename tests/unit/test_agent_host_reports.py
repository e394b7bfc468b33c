"""The agent host's report and poll loops outlive a call that fails in a way
they do not retry: before, such an exception ended its loop and, through the
gather that runs the two side by side, the whole host (every daemon
stopped), with the error read only when the runner stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import pytest

from corral.protocol import AgentPoll, AgentReport, AgentsReported, DesiredAgents, StatusChange
from corral.runner.agents import AgentHost
from corral.runner.link import BadAnswer


class FakeLink:
    """The two calls the host makes; reports fail as ``failures`` says, in order."""

    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = failures
        self.reports: list[AgentReport] = []
        self.calls = 0
        self.called = asyncio.Condition()

    async def poll_agents(self, runner_id: str, body: AgentPoll) -> DesiredAgents:
        await asyncio.sleep(3600)  # nothing changes
        raise AssertionError("unreachable")

    async def report_agents(self, runner_id: str, body: AgentReport) -> AgentsReported:
        async with self.called:
            self.calls += 1
            self.called.notify_all()
        if self.failures:
            raise self.failures.pop(0)
        self.reports.append(body)
        return AgentsReported(not_hosted=[])

    async def wait_calls(self, n: int) -> None:
        async with asyncio.timeout(5), self.called:
            await self.called.wait_for(lambda: self.calls >= n)


def change(status: str, at: float) -> StatusChange:
    return StatusChange(agent_id="bot", old_status="x", new_status=status, at=at)


async def test_a_report_that_fails_does_not_end_the_host(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    link = FakeLink([BadAnswer("POST /runners/r/agents/report: unexpected answer"), KeyError("x")])
    host = AgentHost(tmp_path)
    task = asyncio.create_task(host.run(link, lambda: "r"))  # type: ignore[arg-type]
    try:
        with caplog.at_level(logging.ERROR, logger="corral.runner.agents"):
            for n, status in enumerate(["exited", "starting", "running"]):
                host.status(change(status, float(n)))
                await link.wait_calls(n + 1)  # one report each
        assert not task.done()
        # The failed batches are dropped (said in the log); the next one arrives.
        assert [c.new_status for r in link.reports for c in r.changes] == ["running"]
        assert "unexpected answer" in caplog.text and "agents report failed" in caplog.text
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class PollingLink(FakeLink):
    """Polls fail as ``failures`` says, in order, then the host gets ``desired``
    and the next poll waits (nothing changes)."""

    def __init__(self, failures: list[BaseException], desired: DesiredAgents) -> None:
        super().__init__([])
        self.poll_failures = failures
        self.desired = desired
        self.polls: list[AgentPoll] = []

    async def poll_agents(self, runner_id: str, body: AgentPoll) -> DesiredAgents:
        async with self.called:
            self.polls.append(body)
            self.called.notify_all()
        if self.poll_failures:
            raise self.poll_failures.pop(0)
        if body.version == self.desired.version:
            await asyncio.sleep(3600)
        return self.desired

    async def wait_polls(self, n: int) -> None:
        async with asyncio.timeout(5), self.called:
            await self.called.wait_for(lambda: len(self.polls) >= n)


async def test_a_poll_that_fails_does_not_end_the_host(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, an exception the poll loop did not expect ended it and, through
    the gather beside the report loop, the host: every daemon stopped."""
    monkeypatch.setattr("corral.runner.agents.POLL_ERROR_PAUSE", 0.01)
    link = PollingLink(
        [KeyError("boom"), RuntimeError("again")], DesiredAgents(version="v1", agents=[])
    )
    host = AgentHost(tmp_path)
    task = asyncio.create_task(host.run(link, lambda: "r"))  # type: ignore[arg-type]
    try:
        with caplog.at_level(logging.ERROR, logger="corral.runner.agents"):
            await link.wait_polls(4)  # two failures, the answer, then the wait
        assert not task.done()
        assert [p.version for p in link.polls] == [None, None, None, "v1"]
        assert caplog.text.count("agents poll failed") == 2 and "KeyError" in caplog.text
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
