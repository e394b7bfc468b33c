"""The job state machine: the one place that says which state changes exist.

    queued -> assigned -> running -> done | failed | cancelled

A queued job may go straight back to ``running`` when the runner it was taken
from shows that its run had finished (``recover``; the outcome follows at
once). A failed attempt with attempts left goes back to ``queued`` (attempt + 1,
after a backoff). Only the agent's own errors consume attempts: a run lost to
the infrastructure (runner gone, hang guard) or to a provider's quota goes
back to ``queued`` as the same attempt, and bad input fails at once.

Pure: values in, values out; the store applies the result as a
compare-and-set update.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from enum import StrEnum

from corral.errors import InvalidTransition


class JobState(StrEnum):
    QUEUED = "queued"
    ASSIGNED = "assigned"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Action(StrEnum):
    ASSIGN = "assign"  # a runner leased it
    START = "start"  # the executor's process started
    SUCCEED = "succeed"
    FAIL = "fail"  # the agent failed: retried while attempts are left
    LOSE = "lose"  # lost to infrastructure or quota: queued again, same attempt
    REJECT = "reject"  # cannot succeed on retry (bad input, retry budget spent)
    CANCEL = "cancel"
    RETRY = "retry"  # an operator asks for one more attempt of an ended job
    # A job released when its runner was lost, whose run had finished there:
    # the runner's journal brings the outcome back (runner/journal.py).
    RECOVER = "recover"


ACTIVE = frozenset({JobState.ASSIGNED, JobState.RUNNING})
TERMINAL = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})
# Queued or active: a turn its session's later turns wait behind (the turn lock).
LIVE = ACTIVE | {JobState.QUEUED}

_FROM: dict[Action, frozenset[JobState]] = {
    Action.ASSIGN: frozenset({JobState.QUEUED}),
    Action.START: frozenset({JobState.ASSIGNED}),
    Action.SUCCEED: ACTIVE,
    Action.FAIL: ACTIVE,
    Action.LOSE: ACTIVE,
    Action.REJECT: ACTIVE,
    Action.CANCEL: LIVE,
    Action.RETRY: frozenset({JobState.FAILED, JobState.CANCELLED}),
    Action.RECOVER: frozenset({JobState.QUEUED}),
}


def transition(state: JobState, action: Action, *, attempt: int, max_attempts: int) -> JobState:
    """The state after ``action``; raises InvalidTransition when not allowed."""
    if state not in _FROM[action]:
        raise InvalidTransition(f"cannot {action.value} a job that is {state.value}")
    if action is Action.ASSIGN:
        return JobState.ASSIGNED
    if action in (Action.START, Action.RECOVER):
        return JobState.RUNNING
    if action is Action.SUCCEED:
        return JobState.DONE
    if action is Action.FAIL:
        return JobState.QUEUED if attempt < max_attempts else JobState.FAILED
    if action is Action.LOSE:
        return JobState.QUEUED
    if action is Action.REJECT:
        return JobState.FAILED
    if action is Action.CANCEL:
        return JobState.CANCELLED
    return JobState.QUEUED  # RETRY


def backoff(
    attempt: int,
    *,
    base: float = 2.0,
    cap: float = 300.0,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before attempt ``attempt + 1``: exponential, capped,
    with "equal jitter" (half fixed, half random) so retries spread out."""
    delay = min(cap, base * 2.0 ** max(0, attempt - 1))
    return delay / 2 + rand() * delay / 2
