"""Shared fixtures. Storage tests run on SQLite and on PostgreSQL; the PG
cases skip with a visible reason when no server answers, except on CI
(any non-empty CI but false/0/no, or CORRAL_TEST_REQUIRE_PG=1), where PostgreSQL is mandatory."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from corral.store import Store
from corral.testing import (
    DEFAULT_PG,
    ServerProcess,
    create_pg_database,
    drop_pg_database,
    on_ci,
    pg_available,
    start_server,
)

# Tests that kill -9 servers and runners at chosen moments, or time how fast
# a stop is: under `pytest -n 2 --dist loadgroup` (the README's command) one
# worker runs them one after another, so two of them never compete for the
# CPU. Each still shares the machine with the other worker's tests.
TIMING_GROUP = "timing"
TIMING = (
    "tests/acceptance/test_chaos.py",
    "tests/acceptance/test_journal.py",
    "tests/acceptance/test_network_cut.py",
    "tests/acceptance/test_recovery.py",
    "tests/acceptance/test_shutdown.py",
    "tests/acceptance/test_sse_shutdown.py",
    "tests/acceptance/test_t3.py",
)


def pytest_configure(config: pytest.Config) -> None:
    # The suite starts `corral serve`, `corral runner` and CLI processes about
    # a thousand times: with PYTHONDONTWRITEBYTECODE each one compiles corral
    # from source again. They cache bytecode in a temporary folder instead
    # (never in the source tree), which leaves the caller's choice intact.
    if os.environ.pop("PYTHONDONTWRITEBYTECODE", None):
        cache = Path(tempfile.gettempdir()) / f"corral-tests-pycache-{os.getuid()}"
        os.environ.setdefault("PYTHONPYCACHEPREFIX", str(cache))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A module's tests stay together on one worker, in order (they share its
    # module-scoped servers, and a later test may build on an earlier one's
    # state, as in a serial run); the timing modules share one group.
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        group = TIMING_GROUP if module.startswith(TIMING) else module
        item.add_marker(pytest.mark.xdist_group(group))


PG_URL = os.environ.get("CORRAL_TEST_PG_URL", DEFAULT_PG)
REQUIRE_PG = on_ci()
_pg_reason: list[str | None] = []


async def pg_skip_reason() -> str | None:
    if not _pg_reason:
        _pg_reason.append(await pg_available(PG_URL))
    reason = _pg_reason[0]
    if reason and REQUIRE_PG:
        pytest.fail(f"PostgreSQL is required here: {reason}")
    return reason


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh database at the migrations' head: a SQLite file in tmp_path, or
    a new PostgreSQL database (``fresh_pg``)."""
    if request.param == "sqlite":
        path = tmp_path / "corral.db"
        shutil.copyfile(await _sqlite_template(), path)
        yield f"sqlite:///{path}"
        return
    async with fresh_pg() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
async def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database, for tests of the migrations themselves."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'corral.db'}"
        return
    async with fresh_pg(migrated=False) as url:
        yield url


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database at the migrations' head (for tests that
    only make sense there)."""
    async with fresh_pg() as url:
        yield url


@pytest.fixture
async def empty_pg_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database."""
    async with fresh_pg(migrated=False) as url:
        yield url


@asynccontextmanager
async def fresh_pg(*, migrated: bool = True) -> AsyncIterator[str]:
    """A new PostgreSQL database, dropped afterwards: empty, or ``migrated``, a
    copy of one this test process migrated once (copying is ~0.2 s here,
    migrating an empty database ~0.6 s, and ~270 tests take one)."""
    reason = await pg_skip_reason()
    if reason:
        pytest.skip(reason)
    template = sa.make_url(await _pg_template()).database if migrated else None
    url = await create_pg_database(PG_URL, template=template)
    try:
        yield url
    finally:
        await drop_pg_database(url)


# Made on first use, by this test process, and dropped when it ends (_templates).
_TEMPLATES: dict[str, str] = {}


async def _pg_template() -> str:
    if "pg" not in _TEMPLATES:
        url = await create_pg_database(PG_URL)
        try:
            await _migrate(url)
        except BaseException:
            await drop_pg_database(url)  # the next test tries again
            raise
        _TEMPLATES["pg"] = url
    return _TEMPLATES["pg"]


async def _sqlite_template() -> Path:
    if "sqlite" not in _TEMPLATES:
        folder = Path(tempfile.mkdtemp(prefix="corral-template-"))
        try:
            await _migrate(f"sqlite:///{folder / 'corral.db'}")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        _TEMPLATES["sqlite"] = str(folder)
    return Path(_TEMPLATES["sqlite"]) / "corral.db"


async def _migrate(url: str) -> None:
    store = Store(url)
    try:
        await store.migrate()
    finally:
        await store.close()  # SQLite: the log checkpointed into the file


@pytest.fixture(autouse=True, scope="session")
def _templates() -> Iterator[None]:
    yield
    if "pg" in _TEMPLATES:
        asyncio.run(drop_pg_database(_TEMPLATES.pop("pg")))
    if "sqlite" in _TEMPLATES:
        shutil.rmtree(_TEMPLATES.pop("sqlite"), ignore_errors=True)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A real `corral serve` on SQLite, with its embedded runner."""
    srv = start_server(tmp_path / "data", env={"CORRAL_HEARTBEAT_INTERVAL": "1"})
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(autouse=True, scope="module")
def _garbage_collected_per_module() -> Iterator[None]:
    """What a module's tests left unclosed (a socket, a subprocess's pipe)
    warns when the garbage collector frees it, and warnings are errors: here
    that is at the end of the module that left it, not in whichever test of
    a later module the collector happened to run in (CI once failed a
    runner-protocol test for a PostgreSQL socket left by an earlier module)."""
    yield
    gc.collect()
