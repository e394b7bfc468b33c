"""Which provider runs a job: a pure function with a strict precedence.

1. ``needs_local_agent`` (alias ``needs_claude_code``): a local agent must do
   it: the preferred provider if it is local, else the default local one.
2. ``preferred_ai`` names a local provider: that one.
3. ``allow_delegation: false``: the default local provider.
4. ``preferred_ai`` names a configured, enabled remote provider: delegate there.
5. Anything else (absent, unknown, disabled): fail safe to the default local.

A job with none of these fields routes exactly as if routing did not exist.
``complexity_hint`` picks a model tier when the chosen provider defines tiers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Complexity = Literal["low", "medium", "high"]


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    kind: str
    local: bool
    enabled: bool = True
    tiers: Mapping[str, str] = field(default_factory=dict)  # complexity -> model


@dataclass(frozen=True, slots=True)
class Route:
    """The routing fields of a job."""

    preferred_ai: str | None = None
    needs_local_agent: bool = False
    allow_delegation: bool = True
    complexity_hint: Complexity | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    provider: str
    rule: int  # 1..5, as in the module docstring
    reason: str
    model: str | None = None
    skipped: tuple[str, ...] = ()  # why each earlier rule did not fire


def decide(job: Route, providers: Mapping[str, Provider], default_local: str) -> Decision:
    """Pick the provider for ``job``. Never raises for any job: unknown names
    fall through to the default local provider."""
    skipped: list[str] = []
    preferred = providers.get(job.preferred_ai) if job.preferred_ai else None
    usable = preferred if preferred is not None and preferred.enabled else None

    def done(name: str, rule: int, reason: str) -> Decision:
        return Decision(name, rule, reason, _model(job, providers.get(name)), tuple(skipped))

    if job.needs_local_agent:
        if usable is not None and usable.local:
            return done(usable.name, 1, f"needs a local agent; {usable.name} is the preferred one")
        why = _describe(job.preferred_ai, preferred)
        return done(default_local, 1, f"needs a local agent; {why}, so the default local")
    skipped.append("1: needs_local_agent is not set")

    if usable is not None and usable.local:
        return done(usable.name, 2, f"preferred_ai {usable.name} is a local provider")
    skipped.append(f"2: {_describe(job.preferred_ai, preferred)}")

    if not job.allow_delegation:
        return done(default_local, 3, "allow_delegation is false: stays on the default local")
    skipped.append("3: delegation is allowed")

    if usable is not None:
        return done(usable.name, 4, f"delegated to preferred_ai {usable.name} (remote)")
    skipped.append(f"4: {_describe(job.preferred_ai, preferred)}")

    return done(default_local, 5, "no usable preference: the default local provider")


def _describe(name: str | None, provider: Provider | None) -> str:
    if not name:
        return "no preferred_ai"
    if provider is None:
        return f"preferred_ai {name!r} is not a configured provider"
    if not provider.enabled:
        return f"preferred_ai {name!r} is disabled"
    return f"preferred_ai {name!r} is {'local' if provider.local else 'remote'}"


def _model(job: Route, provider: Provider | None) -> str | None:
    if job.model:
        return job.model
    if provider is not None and job.complexity_hint:
        return provider.tiers.get(job.complexity_hint)
    return None
