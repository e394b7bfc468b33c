"""The agent executors' line parsing and outcomes, on real captured transcripts
(tests/fixtures/*/README.md says how each was produced)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from corral.executors.agent import AgentExecutor, classify, reset_time
from corral.executors.base import Context, McpEndpoint, load
from corral.executors.claude_code import ClaudeCodeExecutor
from corral.executors.codex import CodexExecutor
from corral.jobs import JobState
from corral.models import Job, Session, new_id

FIXTURES = Path(__file__).parents[1] / "fixtures"


def context(
    kind: str, handle: str | None = None
) -> tuple[Context, list[tuple[str, dict[str, Any]]], list[str]]:
    now = datetime.now(UTC)
    job = Job(
        id=new_id(),
        session_id=new_id(),
        turn=1,
        state=JobState.RUNNING,
        provider="p",
        priority=2,
        attempt=1,
        max_attempts=1,
        source="api",
        epoch=1,
        created_at=now,
        available_at=now,
        updated_at=now,
    )
    session = Session(
        id=job.session_id, created_at=now, updated_at=now, epoch=1, last_seq=0, turns=1
    )
    events: list[tuple[str, dict[str, Any]]] = []
    handles: list[str] = []

    def emit(type: str, payload: Any, *, ephemeral: bool = False, internal: bool = False) -> None:
        events.append((type, dict(payload)))

    ctx = Context(
        job=job,
        session=session,
        workdir=Path("/tmp"),
        emit=emit,
        started=lambda pid: None,
        settings=load(kind).settings(kind=kind),
        handle=handle,
        save_handle=handles.append,
    )
    return ctx, events, handles


def replay(executor: AgentExecutor, ctx: Context, name: str) -> None:
    for line in (FIXTURES / name).read_text().splitlines():
        executor._line(line.encode(), ctx)


def test_claude_text_run() -> None:
    ctx, events, handles = context("claude-code")
    ex = ClaudeCodeExecutor()
    replay(ex, ctx, "claude/text.jsonl")
    init = next(json.loads(x) for x in (FIXTURES / "claude/text.jsonl").read_text().splitlines())
    assert handles == [init["session_id"]]
    assert [t for t, _ in events] == ["agent.init", "agent.message", "agent.result"]
    out = ex.outcome(0, ctx)
    assert out.status == "done" and out.result == "Hello from the fake."
    assert out.cost is not None and out.cost > 0
    assert out.usage is not None and out.usage["input_tokens"] > 0 and out.usage["num_turns"] == 1


def test_claude_tool_round_trip_events() -> None:
    ctx, events, _ = context("claude-code")
    ex = ClaudeCodeExecutor()
    replay(ex, ctx, "claude/tool_bash.jsonl")
    types = [t for t, _ in events]
    assert types == [
        "agent.init",
        "agent.message",
        "agent.tool_call",
        "agent.tool_result",
        "agent.message",
        "agent.result",
    ]
    call, result = events[2][1], events[3][1]
    assert call["name"] == "Bash" and call["input"]["command"] == "echo hi > a.txt"
    assert result["id"] == call["id"] and result["is_error"] is False
    assert ex.outcome(0, ctx).status == "done"


def test_claude_denials_are_reported() -> None:
    ctx, events, _ = context("claude-code")
    ex = ClaudeCodeExecutor()
    replay(ex, ctx, "claude/denied.jsonl")
    assert "agent.denied" in [t for t, _ in events]
    out = ex.outcome(0, ctx)
    assert out.status == "done" and out.result is not None
    assert "tool use(s) denied: Bash" in out.result


def test_claude_resume_costs_only_this_run() -> None:
    ctx, _, _ = context("claude-code", handle="abc")
    ex = ClaudeCodeExecutor()
    replay(ex, ctx, "claude/resume.jsonl")
    result = json.loads((FIXTURES / "claude/resume.jsonl").read_text().splitlines()[-1])
    out = ex.outcome(0, ctx)
    # total_cost_usd adds up the whole session on a resumed run.
    assert out.cost is not None and 0 < out.cost < result["total_cost_usd"]


def test_claude_rate_limit_is_a_quota_failure() -> None:
    ctx, _, _ = context("claude-code")
    ex = ClaudeCodeExecutor()
    replay(ex, ctx, "claude/rate_limited.jsonl")
    out = ex.outcome(1, ctx)
    assert out.status == "failed" and out.failure == "quota"
    assert out.reason == "api_error_429" and "429" in (out.error or "")


def test_unknown_and_non_json_lines_are_kept() -> None:
    ctx, events, _ = context("claude-code")
    ex = ClaudeCodeExecutor()
    ex._line(b'{"type": "brand_new", "x": 1}', ctx)
    ex._line(b"plain text", ctx)
    ex._line(b"[1, 2]", ctx)
    assert [t for t, _ in events] == ["agent.event", "output", "output"]
    out = ex.outcome(1, ctx)
    assert out.status == "failed" and out.reason == "no_result" and out.failure == "agent"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("Rate limited, retry after 30s", 30),
        ("usage limit reached; try again in 5 minutes", 300),
        ("resets in 2 hours", 7200),
    ],
)
def test_reset_time_relative(text: str, seconds: float) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert reset_time(text, now) == now + timedelta(seconds=seconds)


def test_reset_time_absolute_and_none() -> None:
    assert reset_time("limit resets at 2026-11-21T15:00:00Z") == datetime(
        2026, 11, 21, 15, tzinfo=UTC
    )
    assert reset_time("Fri, 20 Nov 2026 10:00:00 GMT") == datetime(2026, 11, 20, 10, tzinfo=UTC)
    assert reset_time("something broke") is None


def test_classify() -> None:
    assert classify("API Error: Request rejected (429)") == "quota"
    assert classify("You've hit your usage limit") == "quota"
    assert classify("Overloaded") == "quota"
    assert classify("Invalid API key") == "input"
    assert classify("tests failed") == "agent"
    assert classify("exceeded retry limit, last status: 500 Internal Server Error") == "infra"


def test_codex_command_run() -> None:
    ctx, events, handles = context("codex")
    ex = CodexExecutor()
    replay(ex, ctx, "codex/command.jsonl")
    assert handles == ["01a1fe9c-c6ca-7ec0-bde3-a76e37d8842a"]
    types = [t for t, _ in events]
    assert types == [
        "agent.init",
        "agent.turn",
        "agent.message",
        "agent.tool_call",
        "agent.tool_result",
        "agent.message",
        "agent.result",
    ]
    assert events[4][1]["exit_code"] == 0 and events[4][1]["content"] == "hi\n"
    out = ex.outcome(0, ctx)
    assert out.status == "done" and out.result == "done" and out.cost is None
    assert out.usage is not None and out.usage["input_tokens"] == 14396


def test_codex_resume_usage_is_this_runs_share(tmp_path: Path) -> None:
    ctx, _, _ = context("codex")
    first = CodexExecutor()
    first.totals_dir = tmp_path
    replay(first, ctx, "codex/hello.jsonl")
    second = CodexExecutor()
    second.totals_dir = tmp_path
    replay(second, ctx, "codex/resume.jsonl")
    assert first.thread_id == second.thread_id
    total = json.loads((FIXTURES / "codex/resume.jsonl").read_text().splitlines()[-1])["usage"]
    assert first.usage is not None and second.usage is not None
    assert second.usage["input_tokens"] == total["input_tokens"] - first.usage["input_tokens"]


def test_codex_rate_limit_is_a_quota_failure() -> None:
    ctx, _, _ = context("codex")
    ex = CodexExecutor()
    replay(ex, ctx, "codex/rate_limited.jsonl")
    out = ex.outcome(1, ctx)
    assert out.status == "failed" and out.failure == "quota" and "429" in (out.error or "")


def test_codex_reconnecting_is_a_retry_not_an_error() -> None:
    """A "Reconnecting..." line is an agent.retry event and does not fail a run
    that then ends well (that it is not progress either, so the stall guard
    still counts: tests/integration/test_agent_guards.py)."""
    ctx, events, _ = context("codex")
    ex = CodexExecutor()
    ex._line(b'{"type":"error","message":"Reconnecting... waiting for network"}', ctx)
    assert events[-1][0] == "agent.retry"
    replay(ex, ctx, "codex/hello.jsonl")
    out = ex.outcome(0, ctx)
    assert out.status == "done" and out.error is None


def test_the_gateway_reaches_each_agent_with_its_secret_off_the_command_line(
    tmp_path: Path,
) -> None:
    endpoint = McpEndpoint(
        url="http://127.0.0.1:4242/mcp", token="gw-secret-0123456789", tools=("submit_job",)
    )
    ctx, _, _ = context("claude-code")
    ctx.mcp = endpoint
    claude = ClaudeCodeExecutor()
    env = claude.environment(ctx, tmp_path / "home", tmp_path)
    argv = claude.argv(ctx)
    assert endpoint.token not in " ".join(argv) and endpoint.token not in json.dumps(env)
    config = Path(argv[argv.index("--mcp-config") + 1])
    assert config.stat().st_mode & 0o777 == 0o600
    server = json.loads(config.read_text())["mcpServers"]["corral"]
    assert server == {
        "type": "http",
        "url": endpoint.url,
        "headers": {"Authorization": f"Bearer {endpoint.token}"},
    }
    assert argv[argv.index("--allowedTools") + 1] == "mcp__corral__submit_job"

    ctx, _, _ = context("codex")
    ctx.mcp = endpoint
    codex = CodexExecutor()
    env = codex.environment(ctx, tmp_path / "home", tmp_path)
    argv = codex.argv(ctx)
    assert endpoint.token not in " ".join(argv) and env["CORRAL_MCP_TOKEN"] == endpoint.token
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "-c"]
    assert overrides == [
        'mcp_servers.corral.url="http://127.0.0.1:4242/mcp"',
        'mcp_servers.corral.bearer_token_env_var="CORRAL_MCP_TOKEN"',
        'mcp_servers.corral.default_tools_approval_mode="approve"',
    ]


def test_permission_prompts_go_to_the_gateways_approve_tool(tmp_path: Path) -> None:
    ctx, _, _ = context("claude-code")
    ctx.settings = load("claude-code").settings(kind="claude-code", permission_prompt="human")
    ctx.mcp = McpEndpoint(url="http://127.0.0.1:1/mcp", token="t" * 20, tools=("approve",))
    claude = ClaudeCodeExecutor()
    claude.environment(ctx, tmp_path / "home", tmp_path)
    argv = claude.argv(ctx)
    assert argv[argv.index("--permission-prompt-tool") + 1] == "mcp__corral__approve"
    ctx.settings = load("claude-code").settings(kind="claude-code")  # "deny": Claude's own
    assert "--permission-prompt-tool" not in claude.argv(ctx)
