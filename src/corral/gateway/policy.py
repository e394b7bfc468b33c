"""Which tools a job's gateway offers: pure functions over allowlist rules.

A rule is ``SERVER.TOOL``, ``SERVER.*`` or ``*``; corral's own tools are the
server ``corral``. The provider's ``mcp_tools`` says what its jobs may use;
a job's own ``mcp_tools`` may narrow it, never widen it: a tool is allowed
when a provider rule matches it and, if the job has rules, one of the job's
does too. Tools are offered to the agent under flat names (the model APIs
take ``[A-Za-z0-9_-]`` only): corral's under their own name (``submit_job``),
an upstream server's as ``SERVER__TOOL``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from corral.gateway.settings import BUILTIN

SEPARATOR = "__"


def matches(rule: str, server: str, tool: str) -> bool:
    if rule == "*":
        return True
    rule_server, _, rule_tool = rule.partition(".")
    return rule_server == server and rule_tool in ("*", tool)


@dataclass(frozen=True)
class Policy:
    provider: str
    rules: tuple[str, ...]  # the provider's mcp_tools
    narrowed: tuple[str, ...] | None = None  # the job's mcp_tools

    @classmethod
    def of(cls, provider: str, rules: Sequence[str], job: Sequence[str] | None) -> Policy:
        return cls(provider, tuple(rules), None if job is None else tuple(job))

    def allows(self, server: str, tool: str) -> bool:
        return self.refusal(server, tool) is None

    def refusal(self, server: str, tool: str) -> str | None:
        """None when ``server.tool`` is allowed, else why not (naming the rules)."""
        name = f"{server}.{tool}"
        if not any(matches(r, server, tool) for r in self.rules):
            return (
                f"tool {name} is not allowed: provider {self.provider!r} allows "
                f"mcp_tools = {list(self.rules)}"
            )
        if self.narrowed is not None and not any(matches(r, server, tool) for r in self.narrowed):
            return (
                f"tool {name} is not allowed: this job narrows its tools to "
                f"mcp_tools = {list(self.narrowed)}"
            )
        return None

    def servers(self, configured: Sequence[str]) -> list[str]:
        """The upstream servers of ``configured`` that some allowed tool may
        come from (the others are not started for the job)."""
        return [
            s
            for s in configured
            if any(r == "*" or r.partition(".")[0] == s for r in self.rules)
            and (
                self.narrowed is None
                or any(r == "*" or r.partition(".")[0] == s for r in self.narrowed)
            )
        ]


def exposed(server: str, tool: str) -> str:
    """The name the agent sees for ``server.tool``."""
    return tool if server == BUILTIN else f"{server}{SEPARATOR}{tool}"


def parse(name: str) -> tuple[str, str]:
    """``(server, tool)`` of a name the agent called (``exposed``'s inverse)."""
    server, sep, tool = name.partition(SEPARATOR)
    if sep and server and tool:
        return server, tool
    return BUILTIN, name
