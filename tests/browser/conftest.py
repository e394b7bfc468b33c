"""The dashboard, driven in a real Chromium (Debian's ``chromium``, never a
downloaded one) by Playwright.

Screenshots of the main pages are written to ``CORRAL_SCREENSHOTS`` (default:
a temporary directory, printed at the end of the run); they are for people
to look at, never committed."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.testing import ServerProcess, on_ci, start_server

CHROMIUM = os.environ.get("CORRAL_CHROMIUM", "/usr/bin/chromium")
TICKER = (
    "import itertools, sys, time\n"
    "for i in itertools.count():\n"
    "    print(f'tick {i}', flush=True)\n"
    "    time.sleep(0.1)\n"
)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if path is None:
        if on_ci():
            pytest.fail("no chromium: `apt-get install -y chromium` (CI must run the UI tests)")
        pytest.skip("no chromium installed (apt-get install -y chromium)")
    return path


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Any]:
    # Module-scoped: Playwright's sync API runs an event loop in this thread
    # until it stops, and the async tests that pytest runs later need it gone.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # --no-sandbox: Chromium refuses to start as root with its own sandbox.
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        b = pw.chromium.launch(executable_path=chromium_path, args=args)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    where = os.environ.get("CORRAL_SCREENSHOTS")
    path = Path(where) if where else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    yield path
    print(f"\ndashboard screenshots: {path}", file=sys.stderr)


@pytest.fixture(scope="session")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real `corral serve` with one agent daemon printing a line every 100 ms."""
    root = tmp_path_factory.mktemp("ui")
    config = root / "corral.toml"
    config.write_text(
        # `asker` is served by no runner but the tests' own (a hand-driven worker).
        '[providers.asker]\nkind = "shell"\n\n'
        "[agents.ticker]\n"
        f"command = [{sys.executable!r}, '-u', '-c', {TICKER!r}]\n"
        "restart = 'always'\n"
        "restart_delay = 0.2\n"
    )
    server = start_server(
        root / "data",
        args=("--config", str(config), "--no-queue"),
        env={"CORRAL_HEARTBEAT_INTERVAL": "1"},
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def http(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.http() as client:
        yield client
