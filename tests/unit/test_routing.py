"""routing.decide: every rule of the precedence, every refusal, and properties."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.errors import Unroutable
from corral.routing import Decision, Provider, Route, decide

PROVIDERS = {
    "shell": Provider("shell", "shell", local=True),
    "sh2": Provider("sh2", "shell", local=True),
    "claude": Provider("claude", "claude-code", local=True, tiers={"low": "haiku", "high": "opus"}),
    "codex": Provider("codex", "codex", local=True),
    "old": Provider("old", "codex", local=True, enabled=False),
    "gpu": Provider("gpu", "openai", local=False, tiers={"low": "qwen-7b"}),
    "off": Provider("off", "openai", local=False, enabled=False),
}


def route(
    providers: Mapping[str, Provider] = PROVIDERS,
    default_provider: str | None = "claude",
    default_local: str | None = None,
    **fields: object,
) -> Decision:
    return decide(
        Route(**fields),  # type: ignore[arg-type]
        providers,
        default_provider=default_provider,
        default_local=default_local,
    )


@pytest.mark.parametrize(
    ("fields", "provider", "rule"),
    [
        ({"command": True}, "shell", 0),
        ({"command": True, "preferred_ai": "sh2"}, "sh2", 0),
        ({"command": True, "needs_local_agent": True}, "shell", 0),
        ({"command": True, "session_provider": "claude"}, "shell", 0),
        ({}, "claude", 5),
        ({"needs_local_agent": True}, "claude", 1),
        ({"needs_local_agent": True, "preferred_ai": "codex"}, "codex", 1),
        ({"needs_local_agent": True, "preferred_ai": "gpu"}, "claude", 1),
        ({"needs_local_agent": True, "preferred_ai": "shell"}, "shell", 1),
        ({"preferred_ai": "codex"}, "codex", 2),
        ({"preferred_ai": "shell"}, "shell", 2),  # named explicitly: runs the prompt
        ({"preferred_ai": "codex", "allow_delegation": False}, "codex", 2),
        ({"allow_delegation": False}, "claude", 3),
        ({"allow_delegation": False, "preferred_ai": "gpu"}, "claude", 3),
        ({"preferred_ai": "gpu"}, "gpu", 4),
        ({"session_provider": "codex"}, "codex", 2),
        ({"session_provider": "gpu"}, "gpu", 4),
        ({"session_provider": "gpu", "preferred_ai": "codex"}, "codex", 2),
        ({"session_provider": "gpu", "allow_delegation": False}, "claude", 3),
        ({"session_provider": "shell"}, "claude", 5),  # a shell session's prose: an agent
        ({"session_provider": "old"}, "claude", 5),
        ({"session_provider": "gone"}, "claude", 5),
    ],
    ids=lambda v: str(v),
)
def test_precedence(fields: dict[str, object], provider: str, rule: int) -> None:
    decision = route(**fields)
    assert (decision.provider, decision.rule) == (provider, rule)
    assert len(decision.skipped) == rule  # says why each earlier rule did not fire
    assert decision.reason


@pytest.mark.parametrize(
    ("fields", "defaults", "says"),
    [
        ({"preferred_ai": "claud"}, {}, "provider 'claud' is not configured"),
        ({"preferred_ai": "off"}, {}, "provider 'off' is disabled"),
        ({"preferred_ai": "old", "needs_local_agent": True}, {}, "'old' is disabled"),
        ({"preferred_ai": "claud", "command": True}, {}, "not configured"),
        ({"preferred_ai": "claude", "command": True}, {}, "runs only on a shell provider"),
        ({"preferred_ai": "gpu", "command": True}, {}, "runs only on a shell provider"),
        ({}, {"default_provider": None}, 'set default_provider = "NAME"'),
        ({"session_provider": "shell"}, {"default_provider": None}, "provider shell runs only"),
        ({"needs_local_agent": True}, {"default_provider": "gpu"}, 'set default_local = "NAME"'),
        ({"allow_delegation": False}, {"default_provider": None}, "default_local"),
        ({}, {"default_provider": "shell"}, "not an enabled agent provider"),
        ({}, {"default_provider": "off"}, "not an enabled agent provider"),
        ({"needs_local_agent": True}, {"default_local": "gpu"}, "is not local"),
    ],
    ids=lambda v: str(v),
)
def test_refusals_say_what_to_do(
    fields: dict[str, object], defaults: dict[str, str | None], says: str
) -> None:
    with pytest.raises(Unroutable) as caught:
        route(**{**defaults, **fields})  # type: ignore[arg-type]
    assert caught.value.status == 422 and caught.value.code == "unroutable"
    assert says in caught.value.message


def test_an_unknown_provider_is_refused_naming_the_enabled_ones() -> None:
    with pytest.raises(Unroutable) as caught:
        route(preferred_ai="claud")
    assert "claude, codex, gpu, sh2, shell" in caught.value.message
    assert "old" not in caught.value.message.split("are:")[1]


def test_no_default_names_the_agents_to_pick_and_how_to_run_a_command() -> None:
    with pytest.raises(Unroutable) as caught:
        route(default_provider=None)
    message = caught.value.message
    assert "one of: claude, codex, gpu" in message and "--shell" in message
    with pytest.raises(Unroutable) as caught:
        route({"shell": PROVIDERS["shell"]}, default_provider=None)
    assert "configure an agent provider" in caught.value.message


def test_default_local_and_default_provider() -> None:
    assert route(default_provider="gpu").provider == "gpu"
    assert route(
        default_provider="gpu", default_local="codex", needs_local_agent=True
    ).provider == ("codex")
    # default_local defaults to default_provider when that one is local
    assert route(default_provider="codex", allow_delegation=False).provider == "codex"
    assert route(default_provider="codex").rule == 5


def test_inheritance_is_recorded() -> None:
    decision = route(session_provider="codex")
    assert "inherited from the session" in decision.reason
    shell_session = route(session_provider="shell")
    assert "runs only commands" in shell_session.reason


def test_explanations_name_the_cause() -> None:
    assert route(preferred_ai="gpu", allow_delegation=False).skipped[2] == (
        "2: preferred_ai gpu is remote"
    )
    assert route().skipped == (
        "0: no command",
        "1: needs_local_agent is not set",
        "2: no provider named",
        "3: delegation is allowed",
        "4: no provider named",
    )


def test_complexity_picks_a_tier_and_an_explicit_model_wins() -> None:
    assert route(preferred_ai="claude", complexity_hint="high").model == "opus"
    assert route(preferred_ai="claude", complexity_hint="medium").model is None
    assert route(preferred_ai="gpu", complexity_hint="low").model == "qwen-7b"
    assert route(preferred_ai="gpu", complexity_hint="low", model="m").model == "m"
    assert route(command=True, complexity_hint="high").model is None  # shell has no tiers


# What `corral route` prints and what a refused submission answers, word for
# word: each reason names the rule's cause, each refusal the setting to fix.
HOW_TO = "or name a provider in the job (provider: NAME, corral submit --provider NAME)"
SHELL_ONLY = {"shell": Provider("shell", "shell", local=True)}


@pytest.mark.parametrize(
    ("fields", "defaults", "provider", "reason"),
    [
        ({"command": True}, {}, "shell", "an explicit command: the shell provider"),
        (
            {"needs_local_agent": True, "preferred_ai": "gpu"},
            {},
            "claude",
            "needs a local agent; preferred_ai gpu is remote: the default local",
        ),
        (
            {"needs_local_agent": True},
            {},
            "claude",
            "needs a local agent; no provider named: the default local",
        ),
        (
            {"needs_local_agent": True, "session_provider": "old"},
            {},
            "claude",
            "needs a local agent; no provider named (its session's provider old is disabled)"
            ": the default local",
        ),
        (
            {"session_provider": "old"},
            {},
            "claude",
            "no provider named (its session's provider old is disabled): the default provider",
        ),
        (
            {"session_provider": "gone"},
            {},
            "claude",
            "no provider named (its session's provider gone is no longer configured)"
            ": the default provider",
        ),
        (
            {"allow_delegation": False},
            {},
            "claude",
            "allow_delegation is false: stays on the default local agent",
        ),
        # default_local, not default_provider, keeps a job that may not delegate
        (
            {"allow_delegation": False},
            {"default_local": "codex"},
            "codex",
            "allow_delegation is false: stays on the default local agent",
        ),
    ],
    ids=lambda v: str(v),
)
def test_reasons_word_for_word(
    fields: dict[str, object], defaults: dict[str, str | None], provider: str, reason: str
) -> None:
    decision = route(**{**defaults, **fields})  # type: ignore[arg-type]
    assert (decision.provider, decision.reason) == (provider, reason)


@pytest.mark.parametrize(
    ("providers", "fields", "defaults", "message"),
    [
        (
            PROVIDERS,
            {"needs_local_agent": True},
            {"default_provider": "gpu"},
            "the job needs a local agent, names no local provider, and no default local agent "
            'is configured: set default_local = "NAME" in corral.toml (one of: claude, codex), '
            + HOW_TO,
        ),
        (
            PROVIDERS,
            {"allow_delegation": False},
            {"default_provider": None},
            "allow_delegation is false but no local agent is named or configured: "
            'set default_local = "NAME" in corral.toml (one of: claude, codex), ' + HOW_TO,
        ),
        (
            PROVIDERS,
            {},
            {"default_provider": "off"},
            "default_provider 'off' is not an enabled agent provider: fix corral.toml",
        ),
        (
            PROVIDERS,
            {"needs_local_agent": True},
            {"default_provider": "off"},
            "default_provider 'off' is not an enabled agent provider: fix corral.toml",
        ),
        (
            PROVIDERS,
            {"needs_local_agent": True},
            {"default_local": "off"},
            "default_local 'off' is not an enabled agent provider: fix corral.toml",
        ),
        (
            PROVIDERS,
            {},
            {"default_provider": None},
            "no provider for this prompt: it names none and no default_provider is configured; "
            'set default_provider = "NAME" in corral.toml (one of: claude, codex, gpu), '
            + HOW_TO
            + "; a shell command goes in `command` (corral submit --shell 'CMD')",
        ),
        (
            {"shell": Provider("shell", "shell", local=True, enabled=False)},
            {"preferred_ai": "x"},
            {},
            "provider 'x' is not configured; the enabled providers are: none "
            "(corral route FILE explains a decision)",
        ),
        (
            SHELL_ONLY,
            {},
            {"default_provider": None},
            "no provider for this prompt: it names none and no default_provider is configured; "
            "configure an agent provider (a providers.NAME table of kind claude-code, codex, "
            'openai, anthropic) and set default_provider = "NAME" in corral.toml, or name a '
            "provider in the job; a shell command goes in `command` (corral submit --shell 'CMD')",
        ),
        (
            SHELL_ONLY,
            {"needs_local_agent": True},
            {"default_provider": None},
            "the job needs a local agent, names no local provider, and no default local agent "
            "is configured: configure an agent provider (a providers.NAME table of kind "
            'claude-code, codex) and set default_local = "NAME" in corral.toml, or name a '
            "provider in the job",
        ),
    ],
    ids=lambda v: str(v) if not isinstance(v, dict) or len(v) < 3 else "PROVIDERS",
)
def test_refusals_word_for_word(
    providers: Mapping[str, Provider],
    fields: dict[str, object],
    defaults: dict[str, str | None],
    message: str,
) -> None:
    with pytest.raises(Unroutable) as caught:
        route(providers, **{**defaults, **fields})  # type: ignore[arg-type]
    assert caught.value.message == message


@pytest.mark.parametrize(
    "shell",
    [
        None,
        Provider("shell", "shell", local=True, enabled=False),
        Provider("shell", "codex", local=True),  # "shell" names an agent here
    ],
    ids=["absent", "disabled", "not-a-shell"],
)
def test_a_command_never_runs_without_an_enabled_builtin_shell(shell: Provider | None) -> None:
    providers = {"claude": PROVIDERS["claude"], **({"shell": shell} if shell else {})}
    with pytest.raises(Unroutable) as caught:
        route(providers, command=True)
    assert caught.value.message == (
        "a command runs on the built-in shell provider, which is disabled here: "
        "name an enabled provider of kind shell"
    )


names = st.one_of(st.none(), st.sampled_from(sorted(PROVIDERS)), st.text(max_size=8))
routes = st.builds(
    Route,
    preferred_ai=names,
    needs_local_agent=st.booleans(),
    allow_delegation=st.booleans(),
    complexity_hint=st.one_of(st.none(), st.sampled_from(["low", "medium", "high"])),
    command=st.booleans(),
    session_provider=names,
)
defaults = st.one_of(st.none(), st.sampled_from(sorted(PROVIDERS)))


def _decide(job: Route, default_provider: str | None, default_local: str | None) -> Decision | None:
    try:
        return decide(
            job, PROVIDERS, default_provider=default_provider, default_local=default_local
        )
    except Unroutable as exc:
        assert exc.message  # a refusal always says why
        return None


@given(routes, defaults, defaults)
def test_prose_never_reaches_a_shell(
    job: Route, default_provider: str | None, default_local: str | None
) -> None:
    """Without a command and without naming a shell provider, no job is routed
    to a shell-kind provider, whatever the defaults and the session's provider."""
    decision = _decide(job, default_provider, default_local)
    named = PROVIDERS.get(job.preferred_ai or "")
    if decision is not None and not job.command and not (named and named.kind == "shell"):
        assert PROVIDERS[decision.provider].kind != "shell"


@given(routes, defaults, defaults)
def test_a_named_provider_is_used_or_refused_never_replaced(
    job: Route, default_provider: str | None, default_local: str | None
) -> None:
    decision = _decide(job, default_provider, default_local)
    named = PROVIDERS.get(job.preferred_ai or "")
    if job.preferred_ai and (named is None or not named.enabled):
        assert decision is None
    if decision is not None:
        assert PROVIDERS[decision.provider].enabled and 0 <= decision.rule <= 5
        assert len(decision.skipped) == decision.rule
        if job.command:
            assert decision.rule == 0 and PROVIDERS[decision.provider].kind == "shell"


@given(routes, defaults, defaults)
def test_no_delegation_and_local_needs_never_leave_the_machine(
    job: Route, default_provider: str | None, default_local: str | None
) -> None:
    decision = _decide(job, default_provider, default_local)
    if decision is not None and (not job.allow_delegation or job.needs_local_agent):
        assert PROVIDERS[decision.provider].local


@given(routes)
def test_only_rules_four_and_five_delegate(job: Route) -> None:
    decision = _decide(job, "gpu", "claude")
    if decision is not None:
        assert PROVIDERS[decision.provider].local == (decision.rule not in (4, 5))
