"""`corral service install`: a systemd unit for `corral serve`."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from corral.cli.common import ConfigOpt, DataDirOpt, console, err

app = typer.Typer(help="Run corral as a systemd service.", no_args_is_help=True)


# What every unit gets. Not ProtectHome= or ProtectSystem=strict: agents work
# in repositories wherever they are, and local jobs are confined by corral's
# own sandbox (bubblewrap), which needs unprivileged user namespaces, so no
# RestrictNamespaces= or PrivateUsers= either.
HARDENING = (
    "NoNewPrivileges=yes",
    "UMask=0077",
    "LockPersonality=yes",
    "RestrictSUIDSGID=yes",
)
# System units only (a user manager cannot apply these without user namespaces).
SYSTEM_HARDENING = (
    "ProtectSystem=full",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
)


def unit(
    *,
    user: bool,
    config: Path | None,
    env_file: Path,
    workdir: Path,
    serve_args: list[str] | None = None,
) -> str:
    argv = [sys.executable, "-m", "corral", "serve"]
    if config is not None:
        argv += ["--config", str(config)]
    argv += serve_args or []
    return "\n".join(
        [
            "[Unit]",
            "Description=corral: control plane for fleets of AI coding agents",
            "Wants=network-online.target",
            "After=network-online.target postgresql.service",
            "",
            "[Service]",
            "Type=simple",
            f"ExecStart={shlex.join(argv)}",
            f"WorkingDirectory={workdir}",
            # Secrets (CORRAL_DATABASE_URL, provider keys) stay out of the unit.
            f"EnvironmentFile=-{env_file}",
            "Restart=always",
            "RestartSec=2",
            # SIGHUP: apply changed [agents.*] tables without a restart.
            "ExecReload=/bin/kill -HUP $MAINPID",
            # SIGTERM to corral only: it stops the process trees of its jobs and agents.
            "KillMode=mixed",
            "TimeoutStopSec=30",
            *HARDENING,
            *([] if user else SYSTEM_HARDENING),
            "",
            "[Install]",
            f"WantedBy={'default.target' if user else 'multi-user.target'}",
            "",
        ]
    )


@app.command()
def install(
    user: Annotated[
        bool, typer.Option("--user", help="A user unit (~/.config/systemd/user).")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the unit; write nothing.")
    ] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    host: Annotated[
        str | None, typer.Option(envvar="CORRAL_HOST", help="`corral serve --host` in the unit.")
    ] = None,
    port: Annotated[
        int | None, typer.Option(envvar="CORRAL_PORT", help="`corral serve --port` in the unit.")
    ] = None,
) -> None:
    """Write a systemd unit for `corral serve` (Restart=always, secrets from an
    EnvironmentFile) and print the commands that enable it. --data-dir, --host
    and --port (or CORRAL_DATA_DIR, CORRAL_HOST, CORRAL_PORT) go into its
    command line, so the service serves what `corral serve` would here."""
    from corral.config import config_file_path  # pydantic: not at `corral --version`

    config = config_file_path(config).resolve()
    conf = config if config.is_file() else None
    base = conf.parent if conf else Path.cwd()
    env_file = base / "corral.env"
    serve_args: list[str] = []
    if data_dir is not None:
        serve_args += ["--data-dir", str(data_dir.expanduser().resolve())]
    if host is not None:
        serve_args += ["--host", host]
    if port is not None:
        serve_args += ["--port", str(port)]
    text = unit(user=user, config=conf, env_file=env_file, workdir=base, serve_args=serve_args)
    if dry_run:
        sys.stdout.write(text)
        return
    if user:
        target = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        path = target / "systemd" / "user" / "corral.service"
    else:
        path = Path("/etc/systemd/system/corral.service")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except PermissionError:
        err.print(f"cannot write {path}: run as root, or use --user", markup=False)
        raise typer.Exit(1) from None
    systemctl = "systemctl --user" if user else "systemctl"
    console.print(f"wrote {path}", markup=False)
    console.print(
        f"secrets (CORRAL_DATABASE_URL, API keys) go in {env_file} (mode 0600)", markup=False
    )
    console.print(
        f"enable it: {systemctl} daemon-reload && {systemctl} enable --now corral", markup=False
    )
    if user:
        console.print("keep it running after logout: loginctl enable-linger $USER")
