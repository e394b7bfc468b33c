"""routing.decide: every rule of the precedence, and properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.routing import Decision, Provider, Route, decide

PROVIDERS = {
    "shell": Provider("shell", "shell", local=True),
    "claude": Provider("claude", "claude-code", local=True, tiers={"low": "haiku", "high": "opus"}),
    "old": Provider("old", "codex", local=True, enabled=False),
    "gpu": Provider("gpu", "openai", local=False, tiers={"low": "qwen-7b"}),
    "off": Provider("off", "openai", local=False, enabled=False),
}


def route(**fields: object) -> Decision:
    return decide(Route(**fields), PROVIDERS, default_local="shell")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "provider", "rule"),
    [
        ({}, "shell", 5),
        ({"needs_local_agent": True}, "shell", 1),
        ({"needs_local_agent": True, "preferred_ai": "claude"}, "claude", 1),
        ({"needs_local_agent": True, "preferred_ai": "gpu"}, "shell", 1),
        ({"needs_local_agent": True, "preferred_ai": "old"}, "shell", 1),
        ({"preferred_ai": "claude"}, "claude", 2),
        ({"preferred_ai": "claude", "allow_delegation": False}, "claude", 2),
        ({"allow_delegation": False}, "shell", 3),
        ({"allow_delegation": False, "preferred_ai": "gpu"}, "shell", 3),
        ({"preferred_ai": "gpu"}, "gpu", 4),
        ({"preferred_ai": "off"}, "shell", 5),
        ({"preferred_ai": "nope"}, "shell", 5),
        ({"preferred_ai": "old"}, "shell", 5),
    ],
    ids=lambda v: str(v),
)
def test_precedence(fields: dict[str, object], provider: str, rule: int) -> None:
    decision = route(**fields)
    assert (decision.provider, decision.rule) == (provider, rule)
    assert len(decision.skipped) == rule - 1  # says why each earlier rule did not fire
    assert decision.reason


def test_explanations_name_the_cause() -> None:
    assert "not a configured provider" in route(preferred_ai="nope").skipped[-1]
    assert "disabled" in route(preferred_ai="off").skipped[-1]
    assert "is remote" in route(preferred_ai="gpu", allow_delegation=False).skipped[1]


def test_complexity_picks_a_tier_and_an_explicit_model_wins() -> None:
    assert route(preferred_ai="claude", complexity_hint="high").model == "opus"
    assert route(preferred_ai="claude", complexity_hint="medium").model is None
    assert route(preferred_ai="gpu", complexity_hint="low").model == "qwen-7b"
    assert route(preferred_ai="gpu", complexity_hint="low", model="m").model == "m"
    assert route(complexity_hint="high").model is None  # shell has no tiers


names = st.one_of(st.none(), st.sampled_from(sorted(PROVIDERS)), st.text(max_size=8))
routes = st.builds(
    Route,
    preferred_ai=names,
    needs_local_agent=st.booleans(),
    allow_delegation=st.booleans(),
    complexity_hint=st.one_of(st.none(), st.sampled_from(["low", "medium", "high"])),
)


@given(routes)
def test_never_raises_and_always_picks_an_enabled_provider(job: Route) -> None:
    decision = decide(job, PROVIDERS, default_local="shell")
    chosen = PROVIDERS[decision.provider]
    assert chosen.enabled and 1 <= decision.rule <= 5


@given(routes)
def test_no_delegation_and_local_needs_never_leave_the_machine(job: Route) -> None:
    decision = decide(job, PROVIDERS, default_local="shell")
    if not job.allow_delegation or job.needs_local_agent:
        assert PROVIDERS[decision.provider].local


@given(routes)
def test_only_rule_four_delegates(job: Route) -> None:
    decision = decide(job, PROVIDERS, default_local="shell")
    assert PROVIDERS[decision.provider].local == (decision.rule != 4)
