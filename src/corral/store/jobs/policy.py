"""What the operator configures about jobs: retries and dispatch limits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from corral.budgets import Budget
from corral.pricing import PriceRef


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    default_max_attempts: int = 1
    backoff_base: float = 2.0
    backoff_max: float = 300.0
    # Runs lost to infrastructure are re-queued without consuming an attempt,
    # at most this many times per job (a job that keeps killing its runner stops).
    max_infra_retries: int = 3
    # A quota failure without a reset time pauses its provider this long.
    quota_backoff: float = 60.0
    # provider -> provider that takes its jobs while it is paused by a quota.
    fallbacks: Mapping[str, str] = field(default_factory=dict)
    # How deep sub-jobs may nest (a job's sub-job is at depth 1): an agent
    # that submits itself again and again stops here, not at the budget.
    max_subjob_depth: int = 5
    # provider -> how its jobs are priced when the executor reports no cost.
    prices: Mapping[str, PriceRef] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Caps:
    """Dispatch limits. Concurrency caps: jobs beyond them wait in the queue,
    never dropped. Session affinity: a turn on a ``local`` provider (its
    workspace and the agent CLI's conversation live on one host) goes to the
    runner that ran the session's last one while that runner is alive."""

    providers: Mapping[str, int] = field(default_factory=dict)  # provider -> max active
    total: int | None = None  # max active jobs across all runners
    repo: int | None = None  # max active jobs per repository
    local: frozenset[str] = frozenset()  # providers whose sessions stay on their runner
    budgets: tuple[Budget, ...] = ()  # [[budgets]]: a crossed hard one holds its scope

    @property
    def any(self) -> bool:
        return bool(self.providers) or self.total is not None or self.repo is not None
