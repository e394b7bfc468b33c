"""Fixtures of the acceptance tests.

Starting and stopping a server costs a couple of seconds, so tests that do
not need a fresh database share one server for the whole run (``srv``); such
tests must only assert about jobs (and runners) they created themselves. Tests that need special
settings or a clean slate start their own (the ``server`` fixture of
tests/conftest.py, or ``running_server``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from corral.runner.link import HttpLink
from corral.testing import ServerProcess, reserved_port, start_server


@pytest.fixture(scope="session")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real `corral serve` (SQLite, embedded runner) shared by the acceptance tests."""
    server = start_server(
        tmp_path_factory.mktemp("srv") / "data", env={"CORRAL_HEARTBEAT_INTERVAL": "1"}
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def http(srv: ServerProcess) -> Iterator[httpx.Client]:
    """An admin HTTP client for the shared server."""
    with srv.http() as client:
        yield client


@pytest.fixture
async def api(srv: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    """An async admin HTTP client for ``srv`` (the shared server, or the
    module's own where it defines ``srv``)."""
    headers = {"Authorization": f"Bearer {srv.admin_key}"}
    async with httpx.AsyncClient(base_url=srv.url, headers=headers, timeout=30) as client:
        yield client


@pytest.fixture
async def link(srv: ServerProcess) -> AsyncIterator[HttpLink]:
    """Runner protocol v1 over HTTP to ``srv``, as a hand-driven runner (long-polls
    of up to 60 s: reads wait 90)."""
    timeout = httpx.Timeout(30, read=90)
    async with HttpLink(srv.url, srv.admin_key, timeout=timeout, max_connections=8) as lk:
        yield lk


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port on 127.0.0.1 nobody else gets while the test runs, refused until
    the test's server binds it (``corral.testing.reserved_port``)."""
    with reserved_port() as port:
        yield port
