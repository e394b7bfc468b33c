"""Registered runners."""

from __future__ import annotations

import builtins

import sqlalchemy as sa

from corral.errors import RunnerNotFound
from corral.jobs import ACTIVE
from corral.models import Runner, new_id
from corral.protocol import VERSION
from corral.store.db import Database, Tx
from corral.store.jobs import RetryPolicy, lose, now_utc
from corral.store.schema import jobs, runners


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
        """Register a runner. A runner registering again under the same name
        is a restart: the jobs its previous instance held are lost at once
        (epoch bumped, re-queued or failed) instead of waiting for the watchdog."""
        now = now_utc()
        runner_id = new_id()
        budget = self.policy.max_infra_retries

        def body(tx: Tx) -> None:
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

    async def get(self, runner_id: str) -> Runner:
        row = await self.db.read(
            lambda conn: conn.execute(
                sa.select(runners).where(runners.c.id == runner_id)
            ).one_or_none()
        )
        if row is None:
            raise RunnerNotFound(f"no runner {runner_id}")
        return Runner.model_validate(row._mapping)

    async def key_of(self, runner_id: str) -> str:
        return (await self.get(runner_id)).key_id

    async def list(self, *, active_only: bool = True) -> builtins.list[Runner]:
        stmt = sa.select(runners).order_by(runners.c.registered_at.desc())
        if active_only:
            stmt = stmt.where(runners.c.status == "active")
        return await self.db.read(
            lambda conn: [Runner.model_validate(r._mapping) for r in conn.execute(stmt)]
        )
