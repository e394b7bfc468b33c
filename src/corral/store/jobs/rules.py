"""The dispatch rules, each written once: the check a lease makes and the
reason ``waiting()`` gives when that check holds a queued job back.

Three shapes of rule, by what they look at:

- a ``Gate`` looks at the whole queue and says how many more jobs may start
  (the kill switch, the global cap, the runner's free slots);
- a ``ProviderRule`` looks at the job's provider: the lease query takes only
  the providers every one of them admits (quota pauses, provider caps, what
  the runner serves);
- a ``RowRule`` is a condition of the lease query's ``WHERE`` (a run_at not
  reached yet or a retry backoff, the turn lock, the repository cap, session
  affinity).

The lease query is built from ``RULES``; ``waiting()`` walks ``RULES`` in
order and reports the first that holds the job, evaluating a row rule's own
SQL against the job's row. A rule cannot exist in one and not the other.
Every rule reads what it needs from a ``Board`` (``board.py``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from corral.jobs import JobState
from corral.models import Job
from corral.store.jobs import quota
from corral.store.jobs.board import SEP, Board
from corral.store.jobs.budgets import has_label
from corral.store.jobs.state import ACTIVE_STATES, Row
from corral.store.schema import jobs, sessions


@dataclass(frozen=True, slots=True)
class Gate:
    """A rule over the whole queue: how many more jobs may start (None: it
    sets no limit)."""

    name: str
    room: Callable[[Board], int | None]
    reason: Callable[[Board, Job], str]

    def explain(self, board: Board, job: Job) -> str | None:
        """The reason, if this rule holds ``job`` back."""
        room = self.room(board)
        return self.reason(board, job) if room is not None and room <= 0 else None


@dataclass(frozen=True, slots=True)
class ProviderRule:
    """A rule over the job's provider: the lease query takes only the
    providers every one of them admits."""

    name: str
    admits: Callable[[Board, str], bool]
    reason: Callable[[Board, Job], str]

    def explain(self, board: Board, job: Job) -> str | None:
        """The reason, if this rule holds ``job`` back."""
        return None if self.admits(board, job.provider) else self.reason(board, job)


@dataclass(frozen=True, slots=True)
class RowRule:
    """A condition on the job's row, with the query parameters it takes from
    the board. ``details``: columns its reason reads, selected with the
    condition's value in one statement (so they agree). ``recheck``: the same
    condition in Python, for what a lease changes as it assigns (the counts
    behind a cap)."""

    name: str
    where: sa.ColumnElement[bool]
    params: Callable[[Board], dict[str, Any]]
    reason: Callable[[Board, Job, Row], str]
    details: tuple[sa.ColumnElement[Any], ...] = ()
    recheck: Callable[[Board, Row], bool] | None = None
    probe: sa.Select[Any] = field(init=False)

    def __post_init__(self) -> None:
        probe = sa.select(self.where.label("admitted"), *self.details).where(
            jobs.c.id == sa.bindparam("job_id")
        )
        object.__setattr__(self, "probe", probe)

    def explain(self, board: Board, job: Job) -> str | None:
        """The reason, if this rule holds ``job`` back: the condition
        evaluated on the job's own row."""
        params = {"job_id": job.id, **self.params(board)}
        row = board.conn.execute(self.probe, params).one_or_none()
        return None if row is None or row.admitted else self.reason(board, job, row)


Rule = Gate | ProviderRule | RowRule


def _at(when: datetime) -> str:
    return when.isoformat(timespec="seconds")


def _not_yet(board: Board, job: Job, row: Row) -> str:
    if row.run_at is not None and row.available_at <= row.run_at:
        return f"scheduled: runs at {_at(row.run_at)}"
    return f"retry backoff until {_at(row.available_at)}"


def _global_budget(board: Board) -> str:
    why, until = board.global_hold or ("a global budget", board.now)
    return f"paused by {why} until {_at(until)} (nothing starts while it is used up)"


def _nothing(board: Board) -> dict[str, Any]:
    return {}


# A turn of the same session that holds this job back: one still active, or
# an earlier one still queued.
_other = jobs.alias("other")
_EARLIER_TURN = sa.and_(
    _other.c.session_id == jobs.c.session_id,
    _other.c.id != jobs.c.id,
    sa.or_(
        _other.c.state.in_(ACTIVE_STATES),
        sa.and_(_other.c.state == JobState.QUEUED.value, _other.c.turn < jobs.c.turn),
    ),
)
# The earliest of them, for the reason.
_BLOCKING_TURN, _BLOCKING_STATE = (
    sa.select(column)
    .where(_EARLIER_TURN)
    .order_by(_other.c.turn)
    .limit(1)
    .scalar_subquery()
    .label(column.name)
    for column in (_other.c.turn, _other.c.state)
)

# The runner holding the job's session (local providers).
HOST = (
    sa.select(sessions.c.host)
    .where(sessions.c.id == jobs.c.session_id)
    .scalar_subquery()
    .label("host")
)


def _global_room(board: Board) -> int | None:
    total = board.caps.total
    return None if total is None else total - sum(board.active.values())


def _under_provider_cap(board: Board, provider: str) -> bool:
    cap = board.caps.providers.get(provider)
    return cap is None or board.active.get(provider, 0) < cap


RULES: tuple[Rule, ...] = (
    Gate(
        "kill switch",
        room=lambda b: 0 if b.killed else None,
        reason=lambda b, job: "paused: the kill switch is on (corral resume)",
    ),
    # available_at starts at run_at (a scheduled job) and moves on with each
    # retry's backoff.
    RowRule(
        "run_at or retry backoff",
        where=jobs.c.available_at <= sa.bindparam("now"),
        params=lambda b: {"now": b.now},
        reason=_not_yet,
        details=(jobs.c.available_at, jobs.c.run_at),
    ),
    ProviderRule(
        "quota pause",
        admits=lambda b, provider: provider not in b.paused,
        reason=lambda b, job: (
            f"provider {job.provider!r} is paused by {quota.why(b.conn, job.provider)} until "
            f"{_at(b.paused[job.provider])}"
        ),
    ),
    Gate(
        "global budget",
        room=lambda b: 0 if b.global_hold else None,
        reason=lambda b, job: _global_budget(b),
    ),
    RowRule(
        "label budget",
        # The first term spares the label lookup per row when no label budget holds.
        where=sa.or_(
            sa.bindparam("no_label_holds", type_=sa.Boolean),
            ~has_label(sa.bindparam("held_labels", expanding=True)),
        ),
        params=lambda b: {
            "no_label_holds": not b.label_holds,
            "held_labels": sorted(b.label_holds),
        },
        reason=lambda b, job, row: "; ".join(
            f"label {label!r} is paused by {why} until {_at(until)}"
            for label, (why, until) in sorted(b.label_holds.items())
            if label in job.labels
        ),
    ),
    RowRule(
        "turn lock",
        where=~sa.exists().where(_EARLIER_TURN),
        params=_nothing,
        reason=lambda b, job, row: f"turn lock: turn {row.turn} of its session is {row.state}",
        details=(_BLOCKING_TURN, _BLOCKING_STATE),
    ),
    ProviderRule(
        "provider cap",
        admits=_under_provider_cap,
        reason=lambda b, job: (
            f"provider cap: {b.active[job.provider]}/{b.caps.providers[job.provider]} "
            f"{job.provider} jobs active"
        ),
    ),
    RowRule(
        "repo cap",
        where=sa.or_(
            jobs.c.repo.is_(None), jobs.c.repo.not_in(sa.bindparam("full", expanding=True))
        ),
        params=lambda b: {
            "full": [r for r in b.by_repo if b.repo_full(r)] if b.caps.repo is not None else []
        },
        reason=lambda b, job, row: (
            f"repo cap: {b.by_repo[str(job.repo)]}/{b.caps.repo} jobs active in {job.repo}"
        ),
        recheck=lambda b, job: job.repo is None or not b.repo_full(job.repo),
    ),
    Gate(
        "global cap",
        room=_global_room,
        reason=lambda b, job: f"global cap: {sum(b.active.values())}/{b.caps.total} jobs active",
    ),
    # Not a turn whose session another live runner holds, if that runner
    # serves the turn's provider.
    RowRule(
        "session affinity",
        where=sa.or_(
            jobs.c.provider.not_in(sa.bindparam("local", expanding=True)),
            ~sa.exists().where(
                sessions.c.id == jobs.c.session_id,
                (jobs.c.provider + SEP + sessions.c.host).in_(
                    sa.bindparam("holders", expanding=True)
                ),
            ),
        ),
        params=lambda b: {"local": sorted(b.caps.local), "holders": b.holders},
        reason=lambda b, job, row: (
            f"session affinity: waiting for runner {row.host!r}, which holds the "
            "session's workspace and conversation"
        ),
        details=(HOST,),
    ),
    ProviderRule(
        "served by a runner",
        admits=lambda b, provider: provider in b.serving,
        reason=lambda b, job: f"no active runner serves provider {job.provider!r}",
    ),
    Gate(
        "free slot",
        room=lambda b: b.free,
        reason=lambda b, job: "waiting for a free runner slot",
    ),
)

GATES = tuple(r for r in RULES if isinstance(r, Gate))
PROVIDER_RULES = tuple(r for r in RULES if isinstance(r, ProviderRule))
ROW_RULES = tuple(r for r in RULES if isinstance(r, RowRule))


def room(board: Board) -> int:
    """How many jobs the gates let start now (0 at the first shut one)."""
    rooms = []
    for gate in GATES:
        n = gate.room(board)
        if n is not None and n <= 0:
            return 0
        if n is not None:
            rooms.append(n)
    return min(rooms)  # the free slot gate always sets one


def providers(board: Board) -> list[str]:
    """The providers every provider rule admits."""
    return [p for p in board.serving if all(r.admits(board, p) for r in PROVIDER_RULES)]


def params(board: Board) -> dict[str, Any]:
    """The row rules' query parameters."""
    return {k: v for rule in ROW_RULES for k, v in rule.params(board).items()}


def admits(board: Board, job: Row) -> bool:
    """Would the lease query still return ``job`` (a row it returned), with
    the counts as they are now? Asked for each job of a batch, as the lease
    assigns the ones before it."""
    return all(r.admits(board, job.provider) for r in PROVIDER_RULES) and all(
        r.recheck(board, job) for r in ROW_RULES if r.recheck is not None
    )


def waiting(board: Board, job: Job) -> str:
    """Why the queued ``job`` is not running yet: the first rule that holds it."""
    for rule in RULES:
        reason = rule.explain(board, job)
        if reason is not None:
            return reason
    raise AssertionError("the free slot gate holds every job when no runner is leasing")
