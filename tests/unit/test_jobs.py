"""The job state machine: every allowed and refused transition, and backoff."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.errors import InvalidTransition
from corral.jobs import ACTIVE, TERMINAL, Action, JobState, backoff, transition

Q, A, R, D, F, C = (
    JobState.QUEUED,
    JobState.ASSIGNED,
    JobState.RUNNING,
    JobState.DONE,
    JobState.FAILED,
    JobState.CANCELLED,
)

# (state, action) -> result with attempts left / with none left
ALLOWED = {
    (Q, Action.ASSIGN): (A, A),
    (A, Action.START): (R, R),
    (A, Action.SUCCEED): (D, D),
    (R, Action.SUCCEED): (D, D),
    (A, Action.FAIL): (Q, F),
    (R, Action.FAIL): (Q, F),
    (A, Action.LOSE): (Q, Q),
    (R, Action.LOSE): (Q, Q),
    (A, Action.REJECT): (F, F),
    (R, Action.REJECT): (F, F),
    (Q, Action.CANCEL): (C, C),
    (A, Action.CANCEL): (C, C),
    (R, Action.CANCEL): (C, C),
    (F, Action.RETRY): (Q, Q),
    (C, Action.RETRY): (Q, Q),
    (Q, Action.RECOVER): (R, R),
}
ALL = list(itertools.product(JobState, Action))


@pytest.mark.parametrize(
    ("state", "action"), [k for k in ALL if k in ALLOWED], ids=lambda v: v.value
)
def test_allowed(state: JobState, action: Action) -> None:
    with_attempts, without = ALLOWED[(state, action)]
    assert transition(state, action, attempt=1, max_attempts=3) is with_attempts
    assert transition(state, action, attempt=3, max_attempts=3) is without


@pytest.mark.parametrize(
    ("state", "action"), [k for k in ALL if k not in ALLOWED], ids=lambda v: v.value
)
def test_refused(state: JobState, action: Action) -> None:
    with pytest.raises(InvalidTransition) as info:
        transition(state, action, attempt=1, max_attempts=3)
    assert info.value.status == 409
    assert state.value in info.value.message


def test_done_is_final() -> None:
    for action in Action:
        with pytest.raises(InvalidTransition):
            transition(D, action, attempt=1, max_attempts=5)


@given(st.lists(st.sampled_from(list(Action)), max_size=40), st.integers(1, 5))
def test_any_sequence_stays_in_the_machine(actions: list[Action], max_attempts: int) -> None:
    state, attempt = Q, 1
    for action in actions:
        try:
            new = transition(state, action, attempt=attempt, max_attempts=max_attempts)
        except InvalidTransition:
            continue
        if new is Q and state is not Q and action is not Action.LOSE:
            attempt += 1
        if state in TERMINAL:
            assert action is Action.RETRY and state is not D
        if new in ACTIVE:
            assert state in (Q, A)
        state = new
    assert state in JobState


def test_backoff_grows_is_capped_and_jittered() -> None:
    assert backoff(1, base=2, cap=300, rand=lambda: 0.0) == 1.0
    assert backoff(1, base=2, cap=300, rand=lambda: 1.0) == 2.0
    assert backoff(4, base=2, cap=300, rand=lambda: 1.0) == 16.0
    assert backoff(30, base=2, cap=300, rand=lambda: 1.0) == 300.0
    assert backoff(30, base=2, cap=300, rand=lambda: 0.0) == 150.0


@given(st.integers(1, 200), st.floats(0, 10), st.floats(0, 1000))
def test_backoff_bounds(attempt: int, base: float, cap: float) -> None:
    delay = backoff(attempt, base=base, cap=cap)
    full = min(cap, base * 2.0 ** (attempt - 1))
    assert full / 2 <= delay <= full
