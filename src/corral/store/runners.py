"""Registered runners."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from corral.errors import RunnerNameNotFound, RunnerNameTaken, RunnerNotFound
from corral.jobs import ACTIVE
from corral.models import Runner, new_id
from corral.protocol import VERSION
from corral.store.db import Database, Tx, dicts, fields
from corral.store.jobs import RetryPolicy, lose, now_utc
from corral.store.schema import api_keys, jobs, runner_names, runners


class Runners:
    def __init__(self, db: Database, policy: RetryPolicy | None = None) -> None:
        self.db = db
        self.policy = policy or RetryPolicy()

    async def register(
        self,
        *,
        name: str,
        key_id: str,
        hostname: str | None,
        providers: list[str],
        labels: list[str],
        slots: int,
        sandbox: str | None = None,
    ) -> Runner:
        """Register a runner. A name belongs to the key that first registered
        it (RunnerNameTaken, 409, for any other key while that key is valid).
        A runner registering again under its name is a restart: the jobs its
        previous instance held are lost at once (epoch bumped, re-queued or
        failed) instead of waiting for the watchdog."""
        now = now_utc()
        runner_id = new_id()
        budget = self.policy.max_infra_retries

        def body(tx: Tx) -> None:
            _bind(tx, name, key_id, now)
            old = list(
                tx.conn.execute(
                    sa.select(runners.c.id).where(
                        runners.c.name == name, runners.c.status.in_(("active", "stopped"))
                    )
                ).scalars()
            )
            if old:
                held = tx.conn.execute(
                    sa.select(jobs)
                    .where(jobs.c.runner_id.in_(old), jobs.c.state.in_([s.value for s in ACTIVE]))
                    .with_for_update()
                ).all()
                for row in held:
                    lose(
                        tx,
                        row,
                        reason="runner_restarted",
                        now=now,
                        error=f"runner {name!r} restarted while the job ran",
                        max_infra_retries=budget,
                    )
                tx.conn.execute(
                    sa.update(runners).where(runners.c.id.in_(old)).values(status="replaced")
                )
            tx.conn.execute(
                sa.insert(runners).values(
                    id=runner_id,
                    name=name,
                    key_id=key_id,
                    hostname=hostname,
                    providers=providers,
                    labels=labels,
                    slots=slots,
                    sandbox=sandbox,
                    status="active",
                    version=VERSION,
                    registered_at=now,
                    last_seen_at=now,
                )
            )

        await self.db.write(body)
        return await self.get(runner_id)

    async def claim(self, name: str, key_id: str) -> None:
        """Bind ``name`` to ``key_id`` whoever held it: `corral serve` claims
        its embedded runner's name for its own runner key at start."""
        now = now_utc()

        def body(tx: Tx) -> None:
            _bind(tx, name, key_id, now, force=True)

        await self.db.write(body)

    async def forget(self, name: str) -> str:
        """Release ``name`` (an admin's act): the next key to register it owns
        it. Returns the key id it was bound to."""

        def body(tx: Tx) -> str:
            key_id = tx.conn.execute(
                sa.delete(runner_names)
                .where(runner_names.c.name == name)
                .returning(runner_names.c.key_id)
            ).scalar_one_or_none()
            if key_id is None:
                raise RunnerNameNotFound(f"no runner name {name!r} is bound to a key")
            return str(key_id)

        return await self.db.write(body)

    async def get(self, runner_id: str) -> Runner:
        row = await self.db.read(
            lambda conn: conn.execute(
                sa.select(runners).where(runners.c.id == runner_id)
            ).one_or_none()
        )
        if row is None:
            raise RunnerNotFound(f"no runner {runner_id}")
        return Runner.model_validate(fields(row))

    async def key_of(self, runner_id: str) -> str:
        return (await self.get(runner_id)).key_id

    async def list(self, *, active_only: bool = True) -> list[Runner]:
        stmt = sa.select(runners).order_by(runners.c.registered_at.desc())
        if active_only:
            stmt = stmt.where(runners.c.status == "active")
        return await self.db.read(
            lambda conn: [Runner.model_validate(d) for d in dicts(conn.execute(stmt))]
        )


def _bind(tx: Tx, name: str, key_id: str, now: datetime, *, force: bool = False) -> None:
    """Make sure ``name`` belongs to ``key_id``: bind a new name, keep a name
    already bound to it, take over one whose key was revoked (or is unknown),
    refuse one that another valid key holds (unless ``force``)."""
    dialect = postgresql if tx.conn.dialect.name == "postgresql" else sqlite
    # A concurrent first registration of the same name waits for ours, then
    # finds the row; the row lock below orders registrations of one name.
    tx.conn.execute(
        dialect.insert(runner_names)
        .values(name=name, key_id=key_id, bound_at=now)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    row = tx.conn.execute(
        sa.select(runner_names.c.key_id, api_keys.c.revoked_at, api_keys.c.id.label("known"))
        .select_from(runner_names.outerjoin(api_keys, api_keys.c.id == runner_names.c.key_id))
        .where(runner_names.c.name == name)
        .with_for_update(of=runner_names)
    ).one()
    if row.key_id == key_id:
        return
    if not force and row.known is not None and row.revoked_at is None:
        raise RunnerNameTaken(
            f"runner name {name!r} belongs to another key: choose another --name, or an "
            f"admin releases it with `corral runners forget {name}`"
        )
    tx.conn.execute(
        sa.update(runner_names)
        .where(runner_names.c.name == name)
        .values(key_id=key_id, bound_at=now)
    )
