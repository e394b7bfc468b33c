"""`corral migrate` and `corral config show`."""

from __future__ import annotations

from corral.cli.common import ConfigOpt, DataDirOpt, JsonOpt, console, dump, esc, settings


def migrate(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Apply database migrations (also done at every start)."""
    import asyncio

    s = settings(config, data_dir)

    async def go() -> str | None:
        from corral.store import Store  # the database stack loads only when needed
        from corral.store import migrate as migrations

        store = Store(s.effective_database_url)
        try:
            await store.migrate()
            return await migrations.current(store.db)
        finally:
            await store.close()

    from corral.config import masked

    revision = asyncio.run(go())
    console.print(f"Database at revision {revision} ({esc(masked(s)['database_url'])}).")


def config_show(
    config: ConfigOpt = None, data_dir: DataDirOpt = None, as_json: JsonOpt = False
) -> None:
    """Print the effective configuration, secrets masked."""
    from corral.config import masked

    s = settings(config, data_dir)
    data = masked(s)
    # Derived, not a setting: what the runner in `corral serve` serves.
    data["runner"]["serves"] = s.embedded_providers() if s.runner.embedded else []
    if as_json:
        dump(data)
        return
    for key, value in data.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                console.print(f"{key}.{sub} = {v!r}", markup=False)
        else:
            console.print(f"{key} = {value!r}", markup=False)
