"""`corral serve`: the control plane, with a runner embedded in the process."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import ipaddress
import logging
import os
import signal
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from corral import discovery
from corral.cli import logs
from corral.cli.common import ConfigOpt, DataDirOpt, err, esc, say_sandbox
from corral.errors import ConfigError

if TYPE_CHECKING:
    import asyncio

    from corral.auth import Role
    from corral.config import Settings
    from corral.store import Store

log = logging.getLogger(__name__)


def embedded_runner_name(settings: Settings) -> str:
    """Stable for one replica (a restart releases its old jobs at once), distinct
    between replicas sharing a database (so they never release each other's)."""
    where = hashlib.sha256(str(settings.data_dir.resolve()).encode()).hexdigest()[:8]
    return f"embedded-{socket.gethostname()}-{where}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")


async def local_key(store: Store, path: Path, *, name: str, role: Role) -> str:
    """The key in ``path`` (created with mode 0600 if absent), stored in the database."""
    if path.exists():  # noqa: ASYNC240 - once, at start
        key = path.read_text().strip()  # noqa: ASYNC240
        await store.keys.ensure(key, name=name, role=role)
        return key
    _, key = await store.keys.create(name=name, role=role)
    _write_secret(path, key)
    return key


async def run(settings: Settings) -> None:
    # The server stack loads here, not when any `corral` command starts.
    import asyncio

    import uvicorn

    from corral.api.app import create_app, open_store
    from corral.auth import Role
    from corral.executors.sandbox import make as make_sandbox
    from corral.runner import Runner
    from corral.store.agents import EMBEDDED, EMBEDDED_KEY

    class _Server(uvicorn.Server):
        # The embedded runner stops first, while this server still answers:
        # its stopped jobs and agent daemons are reported, and its agents
        # released to another replica's runner. A second signal does not wait.
        runner: asyncio.Task[None] | None = None
        _stopping = False

        def handle_exit(self, sig: int, frame: Any) -> None:
            # Now, not after serving: uvicorn re-raises the signal once it has
            # stopped, which ends the process before any `finally` here runs.
            discovery.forget(settings.data_dir)
            runner = self.runner
            if runner is not None and not runner.done() and not self._stopping:
                self._stopping = True
                runner.cancel()
                runner.add_done_callback(lambda _: super(_Server, self).handle_exit(sig, frame))
                return
            super().handle_exit(sig, frame)

    store = await open_store(settings)
    try:
        if is_loopback(settings.host):
            await local_key(store, settings.admin_key_file, name="local admin", role=Role.ADMIN)
        elif await store.keys.count_active() == 0:
            raise ConfigError(
                f"refusing to listen on {settings.host} with no API keys: create one with "
                "`corral keys create --role admin` and keep it safe, then start again"
            )
        runner_key = sandbox = None
        if settings.runner.embedded:
            runner_key = await local_key(
                store, settings.data_dir / "runner.key", name=EMBEDDED_KEY, role=Role.RUNNER
            )
            # Before listening: `sandbox = "bwrap"` without a working bwrap stops here.
            sandbox = await asyncio.to_thread(
                make_sandbox,
                settings.runner.sandbox,
                hidden=settings.sandbox_hidden(),
                state_dir=settings.data_dir / "runner",
            )
        app = create_app(settings, store=store)
        intake = None
        if settings.queue_enabled:
            from corral.intake.folder import FolderIntake

            intake = FolderIntake(
                settings.queue_dir, store, lambda spec: app.state.services.route(spec)
            )
            intake.prepare()
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=3,
            loop="asyncio",
        )
        server = _Server(config)
        serving = asyncio.create_task(server.serve())
        while not server.started and not serving.done():
            await asyncio.sleep(0.01)
        if serving.done():
            await serving
            raise ConfigError(f"could not listen on {settings.host}:{settings.port}")
        port = server.servers[0].sockets[0].getsockname()[1]
        url = settings.model_copy(update={"port": port}).local_url()
        # What start-up made lives as long as the process: out of the
        # collector's sight, full collections stay short (latency tails).
        gc.freeze()
        discovery.record(settings.data_dir, url)  # the CLI finds this server by its data dir
        err.print(f"corral {store.db.dialect} listening on [bold]{esc(url)}[/]")
        if is_loopback(settings.host):
            err.print(
                f"admin key: {settings.admin_key_file}  "
                "(try: corral submit --shell 'echo hi' --wait)",
                markup=False,
            )
        runner_task: asyncio.Task[None] | None = None
        if runner_key is not None and sandbox is not None:
            say_sandbox(sandbox)
            runner = Runner(
                url,
                runner_key,
                workdir=settings.data_dir,
                name=embedded_runner_name(settings),
                slots=settings.runner.slots,
                providers=settings.runner_providers(settings.embedded_providers()),
                lease_wait=settings.runner.lease_wait,
                kill_grace=settings.runner.kill_grace,
                agent_aliases=[EMBEDDED],
                sandbox=sandbox,
            )
            runner_task = asyncio.create_task(runner.run(), name="corral-embedded-runner")
            server.runner = runner_task
        intake_task: asyncio.Task[None] | None = None
        if intake is not None:
            from corral.store.leader import run_as_leader

            # One replica watches a shared folder: the others stand by.
            intake_task = asyncio.create_task(
                run_as_leader(store, "queue-folder", intake.run), name="corral-queue-folder"
            )
            err.print(f"queue folder: {settings.queue_dir}", markup=False)

        # SIGHUP: apply [agents.*] changes from the configuration file.
        def reload_agents() -> None:
            task = asyncio.create_task(app.state.services.reload_agents())
            task.add_done_callback(_log_reload)

        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload_agents)
        await serving
        if intake_task is not None:
            intake_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await intake_task
        if runner_task is not None:
            runner_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner_task
    finally:
        discovery.forget(settings.data_dir)
        await store.close()


def _log_reload(task: asyncio.Task[dict[str, list[str]]]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("agents reload failed: %s", exc)
    else:
        log.info("agents reloaded: %s", task.result())


def serve(
    host: Annotated[str | None, typer.Option(envvar="CORRAL_HOST", help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(envvar="CORRAL_PORT", help="Port (0: any).")] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    log_format: Annotated[str | None, typer.Option(help="text or json.")] = None,
    no_runner: Annotated[bool, typer.Option("--no-runner", help="Do not embed a runner.")] = False,
    queue: Annotated[Path | None, typer.Option(help="Queue folder to watch.")] = None,
    no_queue: Annotated[bool, typer.Option("--no-queue", help="Do not watch a folder.")] = False,
) -> None:
    """Start the control plane (HTTP API) with an embedded runner."""
    overrides: dict[str, Any] = {
        "queue_dir": queue,
        "host": host,
        "port": port,
        "data_dir": data_dir,
        "log_format": log_format,
    }
    from corral.config import load_settings

    settings = load_settings(config, **overrides)
    if no_runner:
        settings.runner.embedded = False
    if no_queue:
        settings.queue_enabled = False
    import asyncio

    logs.setup(settings.log_level, settings.log_format)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(settings))
