"""Helpers for tests and benchmarks: real servers, real databases. No fakes.

srv = start_server(tmp_path)          # a `corral serve` subprocess on 127.0.0.1
with srv.client() as c: ...
srv.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from corral import discovery
from corral.auth import WorkerClaims
from corral.client import Client
from corral.models import Runner
from corral.store.jobs import Lease

DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def worker_claims(lease: Lease, runner: Runner) -> WorkerClaims:
    """The claims a worker JWT for ``lease`` would carry."""
    return WorkerClaims(
        job_id=lease.job.id, session_id=lease.session.id, epoch=lease.job.epoch, runner_id=runner.id
    )


def session_row(session_id: str, at: datetime, *, turns: int = 1, **extra: Any) -> dict[str, Any]:
    """A ``sessions`` row to write straight into the database (a backlog for
    a test or a benchmark, without a job path per row)."""
    return {
        "id": session_id,
        "created_at": at,
        "updated_at": at,
        "epoch": 1,
        "last_seq": 0,
        "turns": turns,
        **extra,
    }


def job_row(
    session_id: str, at: datetime, *, turn: int = 1, state: str = "done", **extra: Any
) -> dict[str, Any]:
    """A ``jobs`` row to write straight into the database: a ``shell`` job
    created at ``at``, with ``extra``'s columns. Every row names the same
    columns (``sa.insert`` with many rows takes its columns from the first
    one, and ignores what later ones add), so give an optional column to
    every row of a batch."""
    return {
        "id": uuid.uuid4().hex,
        "session_id": session_id,
        "turn": turn,
        "state": state,
        "provider": "shell",
        "command": "true",
        "labels": [],
        "source": "api",
        "priority": 2,
        "attempt": 1,
        "max_attempts": 3,
        "epoch": 1,
        "behind": False,
        "later": False,
        "created_at": at,
        "available_at": at,
        "updated_at": at,
        **extra,
    }


def free_port() -> int:
    """A port nothing listens on now. Another process may take it before it
    is bound: a test that needs an address before its server exists holds one
    with ``reserved_port``, and ``start_server`` binds port 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def reserved_port() -> Iterator[int]:
    """A port on 127.0.0.1 held while the block runs, for an address a test
    needs before its server exists (a restart at the same address, a receiver
    that comes up later, a URL that must refuse). It is bound here with
    SO_REUSEADDR, never listening: connections to it are refused until a
    server binds it (uvicorn and ``http.server`` set SO_REUSEADDR, so they
    can, again after a restart), and no other process's bind to port 0 or
    outgoing connection is given it (with ``free_port`` alone, a parallel
    test's server could take it between the choice and the bind)."""
    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("127.0.0.1", 0))
        yield int(held.getsockname()[1])


@dataclass
class ServerProcess:
    url: str
    port: int
    data_dir: Path
    proc: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def admin_key(self) -> str:
        return (self.data_dir / "admin.key").read_text().strip()

    def client(self) -> Client:
        return Client(self.url, self.admin_key)

    def http(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            timeout=30,
            headers={"Authorization": f"Bearer {token or self.admin_key}"},
        )

    def cli(
        self, *args: str, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run `corral ARGS` against this server."""
        env = {**os.environ, **self.env, "CORRAL_URL": self.url, "CORRAL_TOKEN": self.admin_key}
        return subprocess.run(
            [sys.executable, "-m", "corral", *args],
            env=env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, then SIGKILL after ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(
    data_dir: Path,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    database_url: str | None = None,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    timeout: float = 30,
) -> ServerProcess:
    """Start `corral serve` on ``host`` (127.0.0.1) and wait until /health answers.

    Without ``port`` the server binds port 0 and the port is the one it
    records in ``DATA_DIR/server.json`` (with its pid: a record of an earlier
    server in the same data dir is not taken for it), so parallel tests never
    race for a port. ``port`` (a restart at the same address) is bound as given."""
    data_dir.mkdir(parents=True, exist_ok=True)
    extra = dict(env or {})
    if database_url:
        extra["CORRAL_DATABASE_URL"] = database_url
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    full_env.update(extra)
    # Named for its port once the port is known (serve-PORT.log).
    log = data_dir / (f"serve-{port}.log" if port else f"serve-starting-{uuid.uuid4().hex[:8]}.log")
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "corral",
                "serve",
                "--host",
                host,
                "--port",
                str(port or 0),
                "--data-dir",
                str(data_dir),
                *args,
            ],
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=data_dir,  # a relative queue_dir lands in the data dir, not the caller's cwd
        )
    srv = ServerProcess("", port or 0, data_dir, proc, log, extra)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"corral serve exited with {proc.returncode}:\n{srv.output()}")
        url = _recorded_by(data_dir, proc.pid)
        if url is not None:
            if not srv.url:
                srv.url, srv.port = url, int(url.rsplit(":", 1)[1])
                srv.log = _named_for_port(log, srv.port)
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(srv.url + "/health", timeout=1).status_code == 200:
                    return srv
        time.sleep(0.05)
    srv.kill()
    raise RuntimeError(f"corral serve did not answer within {timeout}s:\n{srv.output()}")


def _recorded_by(data_dir: Path, pid: int) -> str | None:
    """The URL in ``data_dir``'s server.json if process ``pid`` wrote it."""
    try:
        body = json.loads((data_dir / discovery.FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict) or body.get("pid") != pid:
        return None
    url = body.get("url")
    return url if isinstance(url, str) else None


def _named_for_port(log: Path, port: int) -> Path:
    """``log`` renamed serve-PORT.log (the server keeps writing to it), unless
    that name is taken (an earlier server of this data dir on the same port)."""
    named = log.with_name(f"serve-{port}.log")
    if log == named or named.exists():
        return log
    log.rename(named)
    return named


async def create_pg_database(base_url: str = DEFAULT_PG, *, template: str | None = None) -> str:
    """Create a uniquely named database next to ``base_url``'s, empty or a copy
    of the database ``template`` (nobody connected to it); return its URL."""
    import asyncpg
    import sqlalchemy as sa

    url = sa.make_url(base_url)
    name = f"corral_t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(
        user=url.username,
        password=url.password,
        host=url.host,
        port=url.port or 5432,
        database=url.database,
    )
    try:
        create = f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")
        for tries in range(50):
            try:
                await conn.execute(create)
                break
            except asyncpg.ObjectInUseError:
                # The template's last session is still ending (its backend
                # exits after the client has closed).
                if tries == 49:
                    raise
                await asyncio.sleep(0.05)
    finally:
        await conn.close()
    return url.set(database=name).render_as_string(hide_password=False)


async def drop_pg_database(db_url: str) -> None:
    import asyncpg
    import sqlalchemy as sa

    url = sa.make_url(db_url)
    conn = await asyncpg.connect(
        user=url.username,
        password=url.password,
        host=url.host,
        port=url.port or 5432,
        database="postgres",
    )
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')
    finally:
        await conn.close()


async def pg_available(base_url: str = DEFAULT_PG) -> str | None:
    """None if a server answers at ``base_url``, else why not."""
    import asyncpg
    import sqlalchemy as sa

    url = sa.make_url(base_url)
    try:
        conn = await asyncpg.connect(
            user=url.username,
            host=url.host,
            port=url.port or 5432,
            database=url.database,
            timeout=3,
        )
    except (OSError, asyncpg.PostgresError) as exc:
        return f"no PostgreSQL at {url.host}:{url.port or 5432} ({exc})"
    await conn.close()
    return None


def git_repo(path: Path, files: dict[str, str] | None = None) -> Path:
    """A new git repository at ``path`` on branch main with one commit of
    ``files`` (default: a README)."""
    from corral.runner.workspace import git

    path.mkdir(parents=True)
    git("init", "--quiet", "-b", "main", cwd=path)
    for name, text in (files or {"README.md": "hello\n"}).items():
        (path / name).write_text(text)
    git("add", "-A", cwd=path)
    git(
        "-c", "user.email=dev@example.com", "-c", "user.name=Dev", "commit", "-qm", "init", cwd=path
    )
    return path


def on_ci(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this run is CI, where skips of mandatory parts (PostgreSQL, the
    agent CLIs, bubblewrap) are failures instead: any non-empty ``CI`` but an
    explicit no (CI systems set ``true``, ``1`` or ``yes``), or
    ``CORRAL_TEST_REQUIRE_PG=1``."""
    env = os.environ if environ is None else environ
    value = env.get("CI", "").strip().lower()
    return value not in ("", "0", "false", "no") or env.get("CORRAL_TEST_REQUIRE_PG") == "1"
