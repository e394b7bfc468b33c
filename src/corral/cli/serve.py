"""`corral serve`: the control plane, with a runner embedded in the process.
Flag parsing here; the process itself is ``corral.server.Server``."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from corral.cli import logs
from corral.cli.common import ConfigOpt, DataDirOpt, esc, say_sandbox

if TYPE_CHECKING:
    from corral.server import Server


def _announce(server: Server) -> None:
    """What `corral serve` says once it answers."""
    from corral.config import is_loopback

    settings = server.settings
    where = f"corral {server.store.db.dialect} listening on "
    logs.banner(where + (server.url or ""), markup=f"{where}[bold]{esc(server.url or '')}[/]")
    if is_loopback(settings.host):
        logs.banner(
            f"admin key: {settings.admin_key_file}  (try: corral submit --shell 'echo hi' --wait)"
        )
    if server.sandbox is not None:
        say_sandbox(server.sandbox)
    if settings.queue_enabled:
        logs.banner(f"queue folder: {settings.queue_dir}")


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

    from corral import tracing

    # The server stack loads here, not when any `corral` command starts.
    from corral.server import Server

    logs.setup(settings.log_level, settings.log_format)
    tracing.setup()  # OTEL_* settings (corral[otel]); off without them
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(Server(settings, announce=_announce).run())
    finally:
        tracing.shutdown()
