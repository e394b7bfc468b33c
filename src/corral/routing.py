"""Which provider runs a job: a pure function with a strict precedence.

0. ``command``: an explicit command runs on a shell provider: the one
   ``preferred_ai`` names, else the built-in ``shell``.
1. ``needs_local_agent`` (alias ``needs_claude_code``): a local agent must do
   it: the preferred provider if it is local, else the default local agent.
2. ``preferred_ai`` names a local provider: that one.
3. ``allow_delegation: false``: the default local agent.
4. ``preferred_ai`` names a remote provider: delegate there.
5. Nothing preferred: the default provider (an agent).

Prose never runs in a shell: only a ``command``, or a ``preferred_ai`` that
explicitly names a shell-kind provider, reaches one. A follow-up turn that
names no provider prefers its session's (unless that one is a shell). Where
no rule can pick a provider, ``decide`` raises ``Unroutable`` saying what to
do: an unknown or disabled ``preferred_ai`` is refused, never replaced, and
so is prose when no default agent is configured.
``complexity_hint`` picks a model tier when the chosen provider defines tiers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from corral.errors import Unroutable

Complexity = Literal["low", "medium", "high"]

SHELL = "shell"  # the built-in provider and executor kind that runs commands


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    kind: str
    local: bool
    enabled: bool = True
    tiers: Mapping[str, str] = field(default_factory=dict)  # complexity -> model

    @property
    def agent(self) -> bool:
        """An enabled provider that takes prose (anything but a shell)."""
        return self.enabled and self.kind != SHELL


@dataclass(frozen=True, slots=True)
class Route:
    """The routing fields of a job, and where its session ran last."""

    preferred_ai: str | None = None
    needs_local_agent: bool = False
    allow_delegation: bool = True
    complexity_hint: Complexity | None = None
    model: str | None = None
    command: bool = False  # the job carries an explicit command
    session_provider: str | None = None  # a follow-up turn: its session's latest provider


@dataclass(frozen=True, slots=True)
class Decision:
    provider: str
    rule: int  # 0..5, as in the module docstring
    reason: str
    model: str | None = None
    skipped: tuple[str, ...] = ()  # why each earlier rule did not fire


def decide(
    job: Route,
    providers: Mapping[str, Provider],
    *,
    default_provider: str | None = None,
    default_local: str | None = None,
) -> Decision:
    """Pick the provider for ``job``, or raise ``Unroutable`` saying what to do.

    ``default_provider`` takes prose that names no provider (rule 5);
    ``default_local`` (default: ``default_provider`` if it is local) takes
    jobs that must stay local (rules 1 and 3). Both must name enabled agents."""
    skipped: list[str] = []

    def done(name: str, rule: int, reason: str) -> Decision:
        return Decision(name, rule, reason, _model(job, providers.get(name)), tuple(skipped))

    explicit = _explicit(job.preferred_ai, providers)

    if job.command:
        if explicit is None:
            shell = providers.get(SHELL)
            if shell is None or not shell.enabled or shell.kind != SHELL:
                raise Unroutable(
                    "a command runs on the built-in shell provider, which is disabled here: "
                    "name an enabled provider of kind shell"
                )
            return done(SHELL, 0, "an explicit command: the shell provider")
        if explicit.kind != SHELL:
            raise Unroutable(
                f"a command runs only on a shell provider, and {explicit.name!r} is "
                f"{explicit.kind}: send the text as a prompt, or drop the provider"
            )
        return done(explicit.name, 0, f"an explicit command, on {explicit.name}")
    skipped.append("0: no command")

    preferred, who = explicit, f"preferred_ai {job.preferred_ai}"
    not_inherited = ""
    if explicit is None and job.session_provider:
        last = providers.get(job.session_provider)
        if last is not None and last.agent:
            preferred, who = last, f"{last.name} (inherited from the session)"
        else:
            state = (
                "is no longer configured"
                if last is None
                else "is disabled"
                if not last.enabled
                else "runs only commands"
            )
            not_inherited = f" (its session's provider {job.session_provider} {state})"

    if job.needs_local_agent:
        if preferred is not None and preferred.local:
            return done(preferred.name, 1, f"needs a local agent; {who} is one")
        local = _local_default(providers, default_local, default_provider)
        if local is None:
            raise Unroutable(
                "the job needs a local agent, names no local provider, and no default local "
                "agent is configured: " + _how_to(providers, local=True)
            )
        why = f"{who} is remote" if preferred is not None else "no provider named"
        return done(local, 1, f"needs a local agent; {why}{not_inherited}: the default local")
    skipped.append("1: needs_local_agent is not set")

    if preferred is not None and preferred.local:
        return done(preferred.name, 2, f"{who} is a local provider")
    skipped.append(f"2: {who} is remote" if preferred is not None else "2: no provider named")

    if not job.allow_delegation:
        local = _local_default(providers, default_local, default_provider)
        if local is None:
            raise Unroutable(
                "allow_delegation is false but no local agent is named or configured: "
                + _how_to(providers, local=True)
            )
        return done(local, 3, "allow_delegation is false: stays on the default local agent")
    skipped.append("3: delegation is allowed")

    if preferred is not None:
        return done(preferred.name, 4, f"delegated to {who} (remote)")
    skipped.append(f"4: no provider named{not_inherited}")

    default = _agent(providers, default_provider, "default_provider")
    if default is None:
        raise Unroutable(
            f"no provider for this prompt: it names none{not_inherited} and no "
            f"default_provider is configured; {_how_to(providers)}; a shell command goes "
            "in `command` (corral submit --shell 'CMD')"
        )
    return done(default.name, 5, f"no provider named{not_inherited}: the default provider")


def _explicit(name: str | None, providers: Mapping[str, Provider]) -> Provider | None:
    """The provider a job names, which must be configured and enabled."""
    if not name:
        return None
    provider = providers.get(name)
    if provider is not None and provider.enabled:
        return provider
    enabled = ", ".join(sorted(n for n, p in providers.items() if p.enabled)) or "none"
    problem = "is not configured" if provider is None else "is disabled"
    raise Unroutable(
        f"provider {name!r} {problem}; the enabled providers are: {enabled} "
        "(corral route FILE explains a decision)"
    )


def _agent(providers: Mapping[str, Provider], name: str | None, setting: str) -> Provider | None:
    if name is None:
        return None
    provider = providers.get(name)
    if provider is None or not provider.agent:
        raise Unroutable(f"{setting} {name!r} is not an enabled agent provider: fix corral.toml")
    return provider


def _local_default(
    providers: Mapping[str, Provider], default_local: str | None, default_provider: str | None
) -> str | None:
    if default_local is not None:
        local = _agent(providers, default_local, "default_local")
        if local is not None and not local.local:
            raise Unroutable(f"default_local {default_local!r} is not local: fix corral.toml")
        return default_local
    default = _agent(providers, default_provider, "default_provider")
    return default.name if default is not None and default.local else None


def _how_to(providers: Mapping[str, Provider], *, local: bool = False) -> str:
    agents = sorted(n for n, p in providers.items() if p.agent and (p.local or not local))
    setting = "default_local" if local else "default_provider"
    if agents:
        return (
            f'set {setting} = "NAME" in corral.toml (one of: {", ".join(agents)}), '
            "or name a provider in the job (provider: NAME, corral submit --provider NAME)"
        )
    kinds = "claude-code, codex" if local else "claude-code, codex, openai, anthropic"
    return (
        f"configure an agent provider (a providers.NAME table of kind {kinds}) and set "
        f'{setting} = "NAME" in corral.toml, or name a provider in the job'
    )


def _model(job: Route, provider: Provider | None) -> str | None:
    if job.model:
        return job.model
    if provider is not None and job.complexity_hint:
        return provider.tiers.get(job.complexity_hint)
    return None
