"""A remote provider's credential is read afresh for every use, without
blocking the event loop: the token file in a thread, the token command as a
subprocess of the loop, killed with what it started after its timeout."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import psutil
import pytest

from corral.errors import ConfigError
from corral.executors import settings as provider_settings
from corral.executors.chat import OpenAISettings
from corral.executors.t3 import T3Settings

# Prints the token once the file GO exists; gives up (exit 3) after 60 s.
WAIT_FOR_GO = (
    "import pathlib, sys, time\n"
    "started, go = map(pathlib.Path, sys.argv[1:3])\n"
    "started.touch()\n"
    "deadline = time.monotonic() + 60\n"
    "while not go.exists():\n"
    "    if time.monotonic() > deadline: sys.exit(3)\n"
    "    time.sleep(0.01)\n"
    "print('tok-' + go.read_text())\n"
)


async def test_the_loop_keeps_serving_while_a_token_command_runs(tmp_path: Path) -> None:
    started, go = tmp_path / "started", tmp_path / "go"
    s = OpenAISettings(
        kind="openai", token_command=[sys.executable, "-c", WAIT_FOR_GO, str(started), str(go)]
    )

    async def other_work() -> None:
        # Runs only if the loop is free while the command runs: the command
        # prints its token only after this coroutine has written the file.
        while not started.exists():
            await asyncio.sleep(0.01)
        go.write_text("from-the-loop")

    key, _ = await asyncio.gather(s.credential(), other_work())
    assert key == "tok-from-the-loop"


async def test_a_token_command_that_hangs_is_killed_with_its_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(provider_settings, "TOKEN_COMMAND_TIMEOUT", 0.5)
    pids = tmp_path / "pids"
    s = T3Settings(
        kind="t3", token_command=["sh", "-c", f'sleep 300 & echo "$$ $!" > {pids}; wait']
    )
    with pytest.raises(ConfigError, match=r"token_command timed out after 0.5s \(killed\)"):
        await s.credential()
    shell, child = map(int, pids.read_text().split())

    def gone(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    deadline = time.monotonic() + 10
    while not (gone(shell) and gone(child)) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert gone(shell) and gone(child)


@pytest.mark.parametrize(
    ("command", "needle"),
    [
        (["sh", "-c", "echo 'no such key' >&2; exit 4"], "exit code 4: no such key"),
        (["/nonexistent/pass", "show"], "cannot run '/nonexistent/pass'"),
    ],
    ids=["fails", "missing"],
)
async def test_a_failing_token_command_says_why(command: list[str], needle: str) -> None:
    s = OpenAISettings(kind="openai", token_command=command)
    with pytest.raises(ConfigError, match="token_command failed") as info:
        await s.credential()
    assert needle in info.value.message


async def test_a_token_file_is_read_afresh(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    s = T3Settings(kind="t3", token_file=token)
    assert await s.credential() == "first"
    token.write_text("second\n")
    assert await s.credential() == "second"
    token.unlink()
    with pytest.raises(ConfigError, match="cannot read token_file"):
        await s.credential()


async def test_key_sources_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPU_KEY", "from-env")
    assert (
        await OpenAISettings(kind="openai", api_key="k", api_key_env="GPU_KEY").credential() == "k"
    )
    assert await OpenAISettings(kind="openai", api_key_env="GPU_KEY").credential() == "from-env"
    assert await OpenAISettings(kind="openai").credential() is None
    monkeypatch.delenv("GPU_KEY")
    with pytest.raises(ConfigError, match="environment variable GPU_KEY is not set"):
        await OpenAISettings(kind="openai", api_key_env="GPU_KEY").credential()
