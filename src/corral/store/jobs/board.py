"""What the dispatch rules look at, read lazily in the lease's (or
``waiting()``'s) transaction: a lease that stops at a shut gate reads no more."""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import cached_property

import sqlalchemy as sa

from corral.models import Runner
from corral.store.jobs import budgets as budget_rules
from corral.store.jobs import quota
from corral.store.jobs.policy import Caps
from corral.store.jobs.state import ACTIVE_STATES
from corral.store.prepared import Prepared
from corral.store.schema import jobs, provider_pauses, runners
from corral.store.schema import settings as server_settings

SEP = "\x1f"  # between a provider and a runner name in the session-affinity filter

# The kill switch (Store.settings "paused"): no new leases while it is on.
_KILL_SWITCH = Prepared(sa.select(server_settings.c.value).where(server_settings.c.key == "paused"))
_ACTIVE_BY_PROVIDER = (
    sa.select(jobs.c.provider, sa.func.count())
    .where(jobs.c.state.in_(ACTIVE_STATES))
    .group_by(jobs.c.provider)
)
_ACTIVE_BY_REPO = (
    sa.select(jobs.c.repo, sa.func.count())
    .where(jobs.c.state.in_(ACTIVE_STATES), jobs.c.repo.is_not(None))
    .group_by(jobs.c.repo)
)
# Built once: a statement built per lease was ~3 % of the server's CPU in
# the throughput bench (issue #18).
_ACTIVE_RUNNERS = Prepared(
    sa.select(runners.c.name, runners.c.providers).where(runners.c.status == "active")
)
_OTHER_LIVE_RUNNERS = Prepared(
    sa.select(runners.c.name, runners.c.providers).where(
        runners.c.status == "active",
        runners.c.last_seen_at >= sa.bindparam("since", type_=runners.c.last_seen_at.type),
        runners.c.name != sa.bindparam("name"),
    )
)
# The jobs a runner holds, counted (the statement's own, and a lease's facts).
_HELD_COUNT = (
    sa.select(sa.func.count())
    .select_from(jobs)
    .where(jobs.c.runner_id == sa.bindparam("runner_id"), jobs.c.state.in_(ACTIVE_STATES))
)
_HELD = Prepared(_HELD_COUNT)
_UNTIL = provider_pauses.c.until.type
# What every lease reads (the kill switch, the runner's active jobs, the
# providers paused now) in one statement, one row per fact: three statements
# were three round trips on PostgreSQL, ~0.15 ms each (issue #18).
_LEASE_FACTS = Prepared(
    sa.union_all(
        sa.select(sa.literal("paused"), provider_pauses.c.provider, provider_pauses.c.until).where(
            provider_pauses.c.until > sa.bindparam("now", type_=_UNTIL)
        ),
        sa.select(sa.literal("killed"), server_settings.c.value, sa.null().cast(_UNTIL)).where(
            server_settings.c.key == "paused"
        ),
        _HELD_COUNT.with_only_columns(
            sa.literal("held"), sa.cast(sa.func.count(), sa.String), sa.null().cast(_UNTIL)
        ),
    )
)


class Board:
    """What the rules look at, for a lease by ``runner`` (asking for up to
    ``max_jobs``, its leases lasting ``ttl``) or, without a runner, for
    ``waiting()``: then no runner has a free slot, every active runner
    serves, and every active runner holds its sessions."""

    def __init__(
        self,
        conn: sa.Connection,
        caps: Caps,
        now: datetime,
        *,
        runner: Runner | None = None,
        max_jobs: int = 0,
        ttl: float = 0.0,
    ) -> None:
        self.conn = conn
        self.caps = caps
        self.now = now
        self.runner = runner
        self.max_jobs = max_jobs
        self.ttl = ttl

    def read_lease_facts(self) -> None:
        """Read ``killed``, ``free`` and ``paused`` at once (a lease needs all
        three unless the kill switch is on)."""
        assert self.runner is not None
        params = {"now": self.now, "runner_id": self.runner.id}
        paused: dict[str, datetime] = {}
        killed, held = False, 0
        for kind, value, until in _LEASE_FACTS(self.conn, params):
            if kind == "paused":
                paused[str(value)] = until
            elif kind == "killed":
                killed = value == "true"
            else:
                held = int(value)
        self.__dict__.update(
            killed=killed, paused=paused, free=min(self.max_jobs, self.runner.slots - held)
        )

    @cached_property
    def killed(self) -> bool:
        return bool(_KILL_SWITCH(self.conn).scalar_one_or_none() == "true")

    @cached_property
    def paused(self) -> dict[str, datetime]:
        """Providers paused by a quota, and until when."""
        return quota.paused(self.conn, self.now)

    @cached_property
    def budget_holds(self) -> dict[str, datetime]:
        """Budgets pausing their scope now, and until when."""
        return budget_rules.holds(self.conn, self.caps.budgets, self.now)

    def _held(self, kind: str) -> dict[str, tuple[str, datetime]]:
        out: dict[str, tuple[str, datetime]] = {}
        for budget in self.caps.budgets:
            until = self.budget_holds.get(budget.name)
            if until is None or budget.kind != kind:
                continue
            start, end = budget.window(self.now)
            why = budget_rules.reason(budget, budget_rules.spent(self.conn, budget, start, end))
            out[budget.target or budget.scope] = (why, until)
        return out

    @cached_property
    def global_hold(self) -> tuple[str, datetime] | None:
        """A used-up global budget: its reason and until when."""
        held = self._held("global") if self.budget_holds else {}
        return next(iter(held.values()), None)

    @cached_property
    def label_holds(self) -> dict[str, tuple[str, datetime]]:
        """Labels whose budget is used up: its reason and until when."""
        return self._held("label") if self.budget_holds else {}

    @cached_property
    def active(self) -> dict[str, int]:
        """Active jobs by provider."""
        return {str(p): int(n) for p, n in self.conn.execute(_ACTIVE_BY_PROVIDER)}

    @cached_property
    def by_repo(self) -> dict[str, int]:
        """Active jobs by repository."""
        return {str(r): int(n) for r, n in self.conn.execute(_ACTIVE_BY_REPO)}

    @cached_property
    def free(self) -> int:
        """Jobs the runner may take now."""
        if self.runner is None:
            return 0
        held = _HELD(self.conn, {"runner_id": self.runner.id}).scalar_one()
        return min(self.max_jobs, self.runner.slots - int(held))

    @cached_property
    def serving(self) -> tuple[str, ...]:
        """Providers served: the runner's, or those of every active runner."""
        if self.runner is not None:
            return tuple(self.runner.providers)
        served = self.conn.execute(
            sa.select(runners.c.providers).where(runners.c.status == "active")
        ).scalars()
        return tuple({p for providers in served for p in providers})

    @cached_property
    def holders(self) -> list[str]:
        """``provider SEP runner`` for each local provider of the runners whose
        sessions stay theirs: for a lease, the other runners seen within the
        lease ttl; for ``waiting()``, every active runner."""
        if not self.caps.local:
            return []
        if self.runner is None:
            rows = _ACTIVE_RUNNERS(self.conn)
        else:
            since = self.now - timedelta(seconds=self.ttl)
            rows = _OTHER_LIVE_RUNNERS(self.conn, {"since": since, "name": self.runner.name})
        return [f"{p}{SEP}{name}" for name, served in rows for p in served if p in self.caps.local]

    def repo_full(self, repo: str) -> bool:
        return self.caps.repo is not None and self.by_repo.get(repo, 0) >= self.caps.repo

    def take(self, provider: str, repo: str | None) -> None:
        """Count a job this lease just assigned in the counts already read
        (a count read later sees it in the table)."""
        if "active" in self.__dict__:
            self.active[provider] = self.active.get(provider, 0) + 1
        if repo is not None and "by_repo" in self.__dict__:
            self.by_repo[repo] = self.by_repo.get(repo, 0) + 1
