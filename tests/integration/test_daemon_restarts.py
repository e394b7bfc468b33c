"""An agent daemon's restart policy (runner/daemons.py), one test per rule,
with real processes and the timings read from the status changes the
supervisor reports: ``restart = "never"``; ``on-failure`` after a clean exit
and after a failure; the backoff doubling up to ``restart_delay_max``; a run
that lived ``stable_after`` resetting the backoff and the quick failures."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from corral.config import DaemonSettings
from corral.executors.sandbox import Confine, Mount, Sandbox
from corral.protocol import LogLine, StatusChange
from corral.runner.daemons import Supervisor


class Heard:
    """A listener that keeps every status change."""

    def __init__(self) -> None:
        self.changes: list[StatusChange] = []

    def status(self, change: StatusChange) -> None:
        self.changes.append(change)

    def line(self, line: LogLine) -> None:
        pass

    def messages(self, name: str, n: int, at: float) -> None:
        pass

    def delivered(self, name: str) -> None:
        pass

    def statuses(self) -> list[str]:
        return [c.new_status for c in self.changes]

    def backoffs(self) -> list[float]:
        """Seconds from each ``backoff`` to the ``starting`` that followed it."""
        gaps = []
        for before, after in zip(self.changes, self.changes[1:], strict=False):
            if before.new_status == "backoff" and after.new_status == "starting":
                gaps.append(after.at - before.at)
        return gaps


async def _supervised(tmp_path: Path, script: str, **settings: Any) -> tuple[Supervisor, Heard]:
    heard = Heard()
    sup = Supervisor(tmp_path / "data", heard)
    work = tmp_path / "work"
    work.mkdir()
    sup.add("bot", DaemonSettings(command=["sh", "-c", script], cwd=work, **settings))
    await sup.start_agent("bot")
    return sup, heard


async def _until_done(sup: Supervisor, timeout: float = 20) -> None:
    """Until the supervisor stopped keeping the daemon (its policy said so)."""
    task = sup.get("bot").task
    assert task is not None
    await asyncio.wait_for(asyncio.shield(task), timeout)


async def test_never_is_not_restarted_even_after_a_failure(tmp_path: Path) -> None:
    sup, heard = await _supervised(tmp_path, "exit 3", restart="never", restart_delay=0.01)
    try:
        await _until_done(sup)
        await asyncio.sleep(0.1)
        assert heard.statuses() == ["starting", "running", "exited"]
        assert heard.changes[-1].exit_code == 3
        assert sup.get("bot").restarts == 0
    finally:
        await sup.close()


async def test_on_failure_is_not_restarted_after_a_clean_exit(tmp_path: Path) -> None:
    sup, heard = await _supervised(tmp_path, "exit 0", restart="on-failure", restart_delay=0.01)
    try:
        await _until_done(sup)
        await asyncio.sleep(0.1)
        assert heard.statuses() == ["starting", "running", "exited"]
        assert heard.changes[-1].exit_code == 0
    finally:
        await sup.close()


async def test_on_failure_is_restarted_after_a_failure(tmp_path: Path) -> None:
    # Fails once, then exits cleanly: restarted once, then left alone.
    script = "if [ -e ran ]; then exit 0; fi; touch ran; exit 1"
    sup, heard = await _supervised(tmp_path, script, restart="on-failure", restart_delay=0.01)
    try:
        await _until_done(sup)
        assert heard.statuses() == [
            *("starting", "running", "exited", "backoff"),
            *("starting", "running", "exited"),
        ]
        assert [c.exit_code for c in heard.changes if c.new_status == "exited"] == [1, 0]
        assert sup.get("bot").restarts == 1
    finally:
        await sup.close()


async def test_backoff_doubles_up_to_its_cap(tmp_path: Path) -> None:
    sup, heard = await _supervised(
        tmp_path,
        "exit 1",
        restart="always",
        restart_delay=0.05,
        restart_delay_max=0.1,
        stable_after=60,
        max_quick_failures=6,
    )
    try:
        await _until_done(sup)
        gaps = heard.backoffs()
        # 0.05, then doubled to 0.1, then held there (uncapped: 0.2, 0.4, 0.8).
        assert len(gaps) == 5, heard.statuses()
        assert 0.045 <= gaps[0] < gaps[1], gaps
        assert gaps[1] >= 0.095, gaps
        assert all(g >= 0.095 for g in gaps[2:]) and sum(gaps[2:]) < 0.8, gaps
        assert heard.statuses()[-1] == "fatal"
        assert sup.get("bot").message == "gave up after 6 quick failures (last exit code 1)"
    finally:
        await sup.close()


async def test_a_run_that_lived_stable_after_resets_backoff_and_quick_failures(
    tmp_path: Path,
) -> None:
    # Runs 1-3 fail at once, run 4 lives past stable_after (then fails), runs
    # 5-8 fail at once: the 4th quick failure after the reset is fatal.
    script = (
        "n=$(($(cat n 2>/dev/null || echo 0) + 1)); echo $n > n; [ $n = 4 ] && sleep 0.8; exit 1"
    )
    sup, heard = await _supervised(
        tmp_path,
        script,
        restart="always",
        restart_delay=0.05,
        restart_delay_max=10,
        stable_after=0.5,
        max_quick_failures=4,
    )
    try:
        await _until_done(sup)
        assert heard.statuses().count("running") == 8, heard.statuses()
        assert heard.statuses()[-1] == "fatal"
        gaps = heard.backoffs()
        assert len(gaps) == 7, gaps
        # 0.05, 0.1, 0.2; after the stable run back to 0.05 (not 0.4), then doubling again.
        assert gaps[2] >= 0.19 and gaps[3] < 0.3, gaps
        assert gaps[4] >= 0.095 and gaps[5] >= 0.19, gaps
        assert sup.get("bot").message == "gave up after 4 quick failures (last exit code 1)"
    finally:
        await sup.close()


@dataclass(frozen=True)
class BreaksAfter(Sandbox):
    """No sandbox, whose ``confine`` raises after its first ``ok`` calls: a
    start that breaks inside the supervisor (not a process exiting)."""

    ok: int = 1
    calls: list[int] = field(default_factory=list)

    def confine(self, mounts: Sequence[Mount] = (), *, network: bool = True) -> Confine:
        self.calls.append(1)
        if len(self.calls) > self.ok:
            raise RuntimeError("the sandbox broke")
        return super().confine(mounts, network=network)


async def test_a_start_that_breaks_is_a_quick_failure_and_ends_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The first run lives past ``stable_after`` and exits; every later start
    raises in the supervisor. Each is a failed run counted from its own start
    (not the earlier process's, which would count it stable and retry for
    ever), logged, and the third ends ``fatal`` with what broke; before, the
    task ended with the exception unread and the daemon stayed ``starting``."""
    heard = Heard()
    sup = Supervisor(tmp_path / "data", heard, BreaksAfter(ok=1))
    work = tmp_path / "work"
    work.mkdir()
    settings = DaemonSettings(
        command=["sh", "-c", "sleep 0.4; exit 1"],
        cwd=work,
        restart_delay=0.01,
        stable_after=0.2,
        max_quick_failures=3,
    )
    sup.add("bot", settings)
    try:
        await sup.start_agent("bot")
        await _until_done(sup)
        assert heard.statuses() == [
            "starting", "running", "exited", "backoff",
            "starting", "exited", "backoff",
            "starting", "exited", "backoff",
            "starting", "exited", "fatal",
        ]  # fmt: skip
        bot = sup.get("bot")
        assert bot.status == "fatal" and bot.quick_failures == 3 and bot.pid is None
        assert "3 quick failures" in (bot.message or "")
        assert [c.exit_code for c in heard.changes if c.new_status == "exited"] == [
            1,
            None,
            None,
            None,
        ]
        assert "agent bot: its run failed" in caplog.text and "the sandbox broke" in caplog.text
    finally:
        await sup.close()
