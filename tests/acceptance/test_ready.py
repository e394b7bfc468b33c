"""GET /ready on a real `corral serve`: 200 while the database answers at
this server's migration and the loops run; 503 with the reason when the
PostgreSQL database is dropped under it, or when the database is at another
migration. /health stays 200 throughout (liveness only)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from corral.models import JobCreate
from corral.store import Store, migrate
from corral.testing import drop_pg_database

from ._helpers import running_server, wait_for


def get(url: str, path: str) -> httpx.Response:
    return httpx.get(url + path, timeout=10)


async def test_ready_fails_when_the_postgresql_database_is_dropped(
    pg_url: str, tmp_path: Path
) -> None:
    with running_server(tmp_path / "data", database_url=pg_url) as srv:
        resp = await asyncio.to_thread(get, srv.url, "/ready")  # no credential needed
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["status"] == "ready"
        assert body["checks"]["database"] == "ok"
        assert body["checks"]["migration"] == migrate.heads()[0]
        loops = body["checks"]["loops"]
        assert loops["watchdog"] == "running"
        assert loops["webhooks"] in ("leading", "standby")
        assert loops["embedded-runner"] == "running"

        await drop_pg_database(pg_url)

        def not_ready() -> dict[str, Any] | None:
            resp = get(srv.url, "/ready")
            return resp.json() if resp.status_code == 503 else None

        body = await asyncio.to_thread(wait_for, not_ready, timeout=20)
        assert body["status"] == "not_ready"
        assert body["checks"]["database"] == "unreachable"
        assert "the database does not answer" in body["error"]["message"]
        assert body["error"]["code"] == "not_ready"
        assert (await asyncio.to_thread(get, srv.url, "/health")).status_code == 200


def test_ready_fails_when_the_database_is_at_another_migration(tmp_path: Path) -> None:
    with running_server(tmp_path / "data") as srv:
        assert get(srv.url, "/ready").status_code == 200
        head = migrate.heads()[0]
        db = sqlite3.connect(tmp_path / "data" / "corral.db")
        try:
            with db:
                db.execute("UPDATE alembic_version SET version_num = '0001'")
            resp = get(srv.url, "/ready")
            assert resp.status_code == 503
            assert f"at migration 0001, this server needs {head}" in resp.json()["error"]["message"]
            assert get(srv.url, "/health").status_code == 200
            with db:
                db.execute("UPDATE alembic_version SET version_num = ?", (head,))
            assert get(srv.url, "/ready").status_code == 200
        finally:
            db.close()


async def test_job_counts_are_folded_from_the_start(pg_url: str, tmp_path: Path) -> None:
    """PostgreSQL's +1/-1 count rows are folded by the watchdog's sweeps from
    the first one, not only after its start-up grace (one lease_ttl, 30 s)."""
    store = await Store.open(pg_url)
    try:
        for _ in range(20):
            await store.jobs.create(JobCreate(command="true", title="unfolded"))

        def rows() -> int:
            stmt = sa.text("SELECT COUNT(*) FROM job_counts")
            return int(asyncio.run(_scalar(pg_url, stmt)))

        assert await asyncio.to_thread(rows) >= 20
        with running_server(tmp_path / "data", database_url=pg_url, args=("--no-queue",)):
            await asyncio.to_thread(wait_for, lambda: rows() == 1 or None, timeout=10)
    finally:
        await store.close()


async def _scalar(url: str, stmt: Any) -> Any:
    st = await Store.open(url)
    try:
        return await st.db.read(lambda c: c.execute(stmt).scalar_one())
    finally:
        await st.close()
