"""`corral keys create|ls|revoke`: API keys, managed in the database directly
(so the first key can be made before any server runs)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from corral.auth import Role
from corral.cli.common import (
    ConfigOpt,
    DataDirOpt,
    JsonOpt,
    console,
    dump,
    err,
    esc,
    settings,
    when,
)

if TYPE_CHECKING:
    from corral.models import ApiKey
    from corral.store import Store


async def _open(config: Path | None, data_dir: Path | None) -> Store:
    from corral.server.build import open_store  # the database stack loads only when needed

    return await open_store(settings(config, data_dir))


app = typer.Typer(help="Manage API keys (admin, operator, viewer, runner).", no_args_is_help=True)


@app.command()
def create(
    role: Annotated[Role, typer.Option(help="admin, operator, viewer or runner.")],
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a key; it is printed once and stored only as a hash."""
    import asyncio

    async def go() -> tuple[ApiKey, str]:
        store = await _open(config, data_dir)
        try:
            return await store.keys.create(name=name or f"{role.value} key", role=role)
        finally:
            await store.close()

    key, secret = asyncio.run(go())
    if as_json:
        dump({"key": secret, "id": key.id, "role": key.role, "name": key.name})
        return
    console.print(secret, markup=False)
    err.print(
        f"Created {key.role} key {key.id}. It is shown only now; "
        "use it as CORRAL_TOKEN or --token.",
        markup=False,
    )


@app.command("ls")
def ls(config: ConfigOpt = None, data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """List keys (never their secrets)."""
    import asyncio

    async def go() -> list[ApiKey]:
        store = await _open(config, data_dir)
        try:
            return await store.keys.list()
        finally:
            await store.close()

    keys = asyncio.run(go())
    if as_json:
        dump(keys)
        return
    from rich.table import Table

    table = Table("ID", "ROLE", "NAME", "CREATED", "REVOKED", box=None)
    for k in keys:
        table.add_row(
            *(esc(v) for v in (k.id, k.role, k.name)), when(k.created_at), when(k.revoked_at)
        )
    console.print(table)


@app.command()
def revoke(key_id: str, config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Revoke a key (servers stop accepting it within 5 seconds)."""
    import asyncio

    async def go() -> ApiKey:
        store = await _open(config, data_dir)
        try:
            return await store.keys.revoke(key_id)
        finally:
            await store.close()

    key = asyncio.run(go())
    console.print(f"Revoked key {key.id} ({key.role}, {key.name}).", markup=False)
