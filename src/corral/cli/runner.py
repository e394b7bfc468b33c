"""`corral runner`: lease and run jobs for a server on another host, and host
the agent daemons configured for its name."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

from corral import redact
from corral.cli import logs
from corral.cli.common import ConfigOpt, DataDirOpt, say_sandbox, settings
from corral.errors import ConfigError

if TYPE_CHECKING:
    from corral.runner import Runner


def runner(
    server: Annotated[str, typer.Option("--server", envvar="CORRAL_URL", help="corral URL.")],
    token: Annotated[
        str,
        typer.Option(
            "--token", envvar="CORRAL_TOKEN", show_default=False, help="A runner (or admin) key."
        ),
    ],
    name: Annotated[
        str | None,
        typer.Option(
            help="Stable name; a runner restarting under the same name releases its old jobs "
            "at once, and [agents.*] with `runner = NAME` run here. Default: HOST-PID."
        ),
    ] = None,
    slots: Annotated[int | None, typer.Option(min=1, help="Jobs run at once.")] = None,
    provider: Annotated[
        list[str] | None, typer.Option(help="Providers served (repeatable).")
    ] = None,
    workdir: Annotated[
        Path | None, typer.Option(help="Workspaces and runner state (default: the data dir).")
    ] = None,
    sandbox: Annotated[
        str | None,
        typer.Option(
            help="Where local jobs run: auto (bwrap when it works here), bwrap, or none "
            "(default: [runner] sandbox)."
        ),
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Run jobs (and host agent daemons) for the server at --server (protocol v1 over HTTP)."""
    import asyncio

    if not server.startswith(("http://", "https://")):
        raise ConfigError(f"--server must be an http(s) URL, not {server!r}")
    s = settings(config, data_dir)
    logs.setup(s.log_level, s.log_format)
    redact.add(*s.secrets(), token)  # never sent nor logged: this host's credentials
    # Remote providers assigned to this runner by name (`runner = NAME`) come too.
    providers = (
        s.runner_serves(provider or s.runner.providers, name)
        if name
        else (provider or s.runner.providers)
    )
    from corral.executors.sandbox import Mode
    from corral.executors.sandbox import make as make_sandbox
    from corral.runner import Runner

    mode = sandbox or s.runner.sandbox
    if mode not in ("auto", "bwrap", "none"):
        raise ConfigError(f"--sandbox must be auto, bwrap or none, not {mode!r}")
    workdir = workdir or s.data_dir
    box = make_sandbox(
        cast(Mode, mode),
        hidden=[*s.sandbox_hidden(), workdir],
        state_dir=workdir / "runner",
    )
    r = Runner(
        server,
        token,
        workdir=workdir,
        name=name,
        slots=slots or s.runner.slots,
        providers=s.runner_providers(providers),
        lease_wait=s.runner.lease_wait,
        kill_grace=s.runner.kill_grace,
        sandbox=box,
        mcp_servers=s.mcp.servers,
    )
    logs.banner(
        f"runner {r.name}: {r.slots} slots, providers {', '.join(providers)}, server {server}"
    )
    say_sandbox(box)
    from corral import tracing

    tracing.setup()  # OTEL_* settings (corral[otel]); off without them
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_run_until_signalled(r))
    finally:
        tracing.shutdown()


async def _run_until_signalled(r: Runner) -> None:
    """Run until SIGTERM or SIGINT, then stop: cancelling ``r.run()`` stops the
    process trees of running jobs instead of leaving them orphaned."""
    import asyncio

    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await r.run()
