"""The gateway's allowlist (corral/gateway/policy.py) and what it records."""

from __future__ import annotations

import re

import pytest

from corral.gateway.builtin import TOOLS
from corral.gateway.policy import Policy, exposed, matches, parse
from corral.gateway.server import mask


@pytest.mark.parametrize(
    ("rule", "server", "tool", "expected"),
    [
        ("*", "github", "get_issue", True),
        ("github.*", "github", "get_issue", True),
        ("github.get_issue", "github", "get_issue", True),
        ("github.get_issue", "github", "delete_repo", False),
        ("github.*", "docs", "search", False),
        ("corral.*", "corral", "submit_job", True),
    ],
    ids=["star", "server-star", "exact", "other-tool", "other-server", "builtin"],
)
def test_rules(rule: str, server: str, tool: str, expected: bool) -> None:
    assert matches(rule, server, tool) is expected


def test_a_job_narrows_never_widens() -> None:
    policy = Policy.of(
        "claude", ["corral.*", "github.get_issue"], ["corral.report_progress", "docs.*"]
    )
    assert policy.allows("corral", "report_progress")
    assert not policy.allows("corral", "submit_job")
    # docs.* is the job's, not the provider's: still refused, naming the provider's rules.
    refusal = policy.refusal("docs", "search")
    assert refusal == (
        "tool docs.search is not allowed: provider 'claude' allows "
        "mcp_tools = ['corral.*', 'github.get_issue']"
    )
    assert "this job narrows its tools" in (policy.refusal("github", "get_issue") or "")
    assert policy.servers(["docs", "github"]) == []
    assert Policy.of("p", ["*"], None).servers(["docs", "github"]) == ["docs", "github"]


def test_exposed_names_round_trip_and_fit_the_model_apis() -> None:
    for server, tool in [("corral", "submit_job"), ("github", "get_issue"), ("a-b", "x.y")]:
        assert parse(exposed(server, tool)) == (server, tool)
    for name in TOOLS:
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name)
        assert TOOLS[name].schema()["type"] == "object"


def test_secret_arguments_are_masked() -> None:
    args = {"text": "hi", "api_key": "abc", "nested": [{"password": "p", "n": 1}]}
    assert mask(args) == {
        "text": "hi",
        "api_key": "[redacted]",
        "nested": [{"password": "[redacted]", "n": 1}],
    }
