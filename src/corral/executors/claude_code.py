"""claude-code: the real ``claude`` CLI, headless.

``claude -p PROMPT --output-format stream-json --verbose`` in the job's
workspace; ``--resume SESSION_ID`` continues the session's conversation on a
follow-up turn (the id comes from the previous turn's ``system/init``).
The job's MCP gateway comes in a ``--mcp-config`` file (mode 0600, in the
run's TMPDIR; its bearer secret stays off the command line) and its tools in
``--allowedTools`` as ``mcp__corral__TOOL``. Each
JSON line becomes an event; the final ``result`` line becomes the outcome,
with cost and token usage. ``is_error`` decides success, not ``subtype``
(API failures arrive as ``subtype: success`` with ``is_error: true``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from corral.executors.agent import AgentExecutor, classify, clip, reset_time, usage_of
from corral.executors.base import Context
from corral.executors.settings import AgentSettings, ProviderSettings
from corral.models import Outcome

# argv strings are limited to 128 KiB by Linux (MAX_ARG_STRLEN).
MAX_PROMPT_BYTES = 120_000


USAGE_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


def run_cost(result: dict[str, Any]) -> float | None:
    """The cost of this run. ``total_cost_usd`` adds up the whole session on a
    resumed run; ``model_usage_since_last_result`` holds this run's share."""
    since = result.get("model_usage_since_last_result")
    if isinstance(since, dict) and since:
        costs = [m.get("costUSD") for m in since.values() if isinstance(m, dict)]
        numbers = [float(c) for c in costs if isinstance(c, int | float)]
        if numbers and len(numbers) == len(costs):
            return round(sum(numbers), 6)
    total = result.get("total_cost_usd")
    return float(total) if isinstance(total, int | float) else None


def run_usage(result: dict[str, Any]) -> dict[str, Any] | None:
    raw = usage_of(result.get("usage")) or {}
    usage: dict[str, Any] = {k: raw[k] for k in USAGE_KEYS if k in raw}
    if result.get("num_turns") is not None:
        usage["num_turns"] = result["num_turns"]
    return usage or None


class ClaudeCodeSettings(AgentSettings):
    """The `claude` CLI, headless, in the job's workspace (a git worktree of
    its repo); a follow-up turn resumes its conversation."""

    permission_mode: str | None = Field(
        None, description="claude --permission-mode (e.g. acceptEdits)."
    )
    allowed_tools: list[str] = Field(
        default_factory=list, description="claude --allowedTools (e.g. Bash, Edit, Write)."
    )
    max_turns: int | None = Field(None, ge=1, description="claude --max-turns.")
    permission_prompt: Literal["human", "deny"] = Field(
        "deny",
        description="A tool use that needs permission: `human` asks a person (claude "
        "--permission-prompt-tool pointing at the job's gateway, answered like ask_human); "
        "`deny` refuses it.",
    )


class ClaudeCodeExecutor(AgentExecutor[ClaudeCodeSettings]):
    kind: ClassVar[str] = "claude-code"
    settings: ClassVar[type[ProviderSettings]] = ClaudeCodeSettings
    default_command: ClassVar[str] = "claude"

    def __init__(self) -> None:
        super().__init__()
        self.result: dict[str, Any] | None = None
        self.session_id: str | None = None
        self.denials: list[Any] = []
        self.mcp_config: Path | None = None

    def argv(self, ctx: Context[ClaudeCodeSettings]) -> list[str]:
        s = ctx.settings
        prompt = ctx.job.prompt or ctx.job.command or ""
        args = [*self.command(ctx), "-p", prompt, "--output-format", "stream-json", "--verbose"]
        if ctx.handle:
            args += ["--resume", ctx.handle]
        model = ctx.job.model or s.model
        if model:
            args += ["--model", model]
        if s.permission_mode:
            args += ["--permission-mode", s.permission_mode]
        allowed = list(s.allowed_tools)
        if ctx.mcp is not None and self.mcp_config is not None:
            args += ["--mcp-config", str(self.mcp_config)]
            # Claude Code asks before an MCP tool even under acceptEdits, and
            # headless nobody answers: the gateway's tools are granted here
            # (the gateway offers only what the provider allows).
            allowed += [f"mcp__{ctx.mcp.name}__{tool}" for tool in ctx.mcp.tools]
            if s.permission_prompt == "human" and "approve" in ctx.mcp.tools:
                args += ["--permission-prompt-tool", f"mcp__{ctx.mcp.name}__approve"]
        if allowed:
            args += ["--allowedTools", ",".join(allowed)]
        if s.max_turns:
            args += ["--max-turns", str(s.max_turns)]
        if ctx.job.max_cost is not None:
            args += ["--max-budget-usd", f"{ctx.job.max_cost:g}"]
        return args + list(s.extra_args)

    def environment(
        self, ctx: Context[ClaudeCodeSettings], home: Path, tmp: Path
    ) -> dict[str, str]:
        config = home.parent / "claude"
        config.mkdir(parents=True, exist_ok=True)
        if ctx.mcp is not None:
            self.mcp_config = tmp / "corral-mcp.json"
            server = {
                "type": "http",
                "url": ctx.mcp.url,
                "headers": {"Authorization": f"Bearer {ctx.mcp.token}"},
            }
            fd = os.open(self.mcp_config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"mcpServers": {ctx.mcp.name: server}}, f)
        return {
            "CLAUDE_CONFIG_DIR": str(config),
            # Without it the CLI reaches for outside hosts (telemetry, updates).
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            # A 401 is otherwise retried for ~3 minutes; corral retries itself.
            "CLAUDE_CODE_MAX_RETRIES": "2",
        }

    async def run(self, ctx: Context[ClaudeCodeSettings]) -> Outcome:
        prompt = ctx.job.prompt or ctx.job.command or ""
        if len(prompt.encode()) > MAX_PROMPT_BYTES:
            return Outcome(
                status="failed",
                reason="prompt_too_long",
                failure="input",
                error=f"claude-code prompts are limited to {MAX_PROMPT_BYTES} bytes "
                f"(this one has {len(prompt.encode())})",
            )
        return await super().run(ctx)

    def on_line(self, data: dict[str, Any], ctx: Context[ClaudeCodeSettings]) -> None:
        kind = data.get("type")
        emit = ctx.emit
        if kind == "system" and data.get("subtype") == "init":
            self.session_id = data.get("session_id")
            if self.session_id:
                ctx.save_handle(self.session_id)
            emit(
                "agent.init",
                {
                    "agent": "claude-code",
                    "session_id": self.session_id,
                    "model": data.get("model"),
                    "cwd": data.get("cwd"),
                    "permission_mode": data.get("permissionMode"),
                    "tools": data.get("tools"),
                    "mcp_servers": data.get("mcp_servers"),
                    "version": data.get("claude_code_version"),
                },
            )
        elif kind == "assistant":
            message = data.get("message") or {}
            for block in message.get("content") or []:
                btype = block.get("type")
                if btype == "text":
                    emit("agent.message", {"text": clip(block.get("text", ""))})
                elif btype == "thinking":
                    emit("agent.thinking", {"text": clip(block.get("thinking", ""))}, internal=True)
                elif btype == "tool_use":
                    emit(
                        "agent.tool_call",
                        {
                            "id": block.get("id"),
                            "name": block.get("name"),
                            "input": clip(block.get("input")),
                        },
                    )
                else:
                    emit("agent.event", {"raw": clip(block)})
        elif kind == "user":
            message = data.get("message") or {}
            content = message.get("content")
            for block in content if isinstance(content, list) else []:
                if block.get("type") == "tool_result":
                    emit(
                        "agent.tool_result",
                        {
                            "id": block.get("tool_use_id"),
                            "is_error": bool(block.get("is_error")),
                            "content": clip(block.get("content")),
                        },
                    )
        elif kind == "system" and data.get("subtype") == "api_retry":
            emit("agent.retry", clip({k: v for k, v in data.items() if k != "type"}))
        elif kind == "system" and data.get("subtype") == "permission_denied":
            emit("agent.denied", clip({k: v for k, v in data.items() if k != "type"}))
        elif kind == "result":
            self.result = data
            self.finished = True
            self.denials = list(data.get("permission_denials") or [])
            if self.denials:
                emit("agent.denied", {"permission_denials": clip(self.denials)})
            emit(
                "agent.result",
                {
                    "is_error": bool(data.get("is_error")),
                    "subtype": data.get("subtype"),
                    "num_turns": data.get("num_turns"),
                    "duration_ms": data.get("duration_ms"),
                    "total_cost_usd": data.get("total_cost_usd"),
                    "stop_reason": data.get("stop_reason"),
                    "api_error_status": data.get("api_error_status"),
                },
            )
        else:
            emit("agent.event", {"raw": clip(data)})

    def outcome(self, returncode: int | None, ctx: Context[ClaudeCodeSettings]) -> Outcome:
        r = self.result
        if r is None:
            if self.guard is not None:
                return self.guard_outcome(ctx, returncode)
            detail = self.stderr_text()[-2000:] or f"exit code {returncode}"
            if "No conversation found" in detail:
                return Outcome(
                    status="failed",
                    reason="resume_failed",
                    failure="input",
                    error=f"cannot resume session {ctx.handle}: {detail}",
                    exit_code=returncode,
                )
            return Outcome(
                status="failed",
                reason="no_result",
                failure="infra" if returncode in (None, 0) or (returncode or 0) < 0 else "agent",
                error=f"claude exited without a result: {detail}",
                exit_code=returncode,
            )
        text = r.get("result")
        common: dict[str, Any] = {
            "exit_code": returncode,
            "usage": run_usage(r),
            "cost": run_cost(r),
        }
        if not r.get("is_error"):
            if self.denials:
                names = sorted(
                    {str(d.get("tool_name", "?")) for d in self.denials if isinstance(d, dict)}
                )
                note = f"\n\n[corral: {len(self.denials)} tool use(s) denied: {', '.join(names)}]"
                text = (text or "") + note
            return Outcome(status="done", result=text, **common)
        status = r.get("api_error_status")
        errors = r.get("errors")
        detail = "; ".join(str(e) for e in errors) if isinstance(errors, list) else ""
        message = str(text or detail or self.stderr_text()[-1000:] or r.get("subtype") or "error")
        if ctx.handle and "No conversation found" in message:
            return Outcome(
                status="failed",
                reason="resume_failed",
                failure="input",
                error=f"cannot resume session {ctx.handle}: {message}",
                **common,
            )
        error = f"{message} (API status {status})" if status else message
        if status in (429, 529):
            failure = "quota"
        elif status in (401, 403):
            failure = "input"
        elif r.get("subtype") == "error_max_turns":
            failure = "agent"
        elif "budget" in str(r.get("subtype") or ""):
            failure = "budget"  # --max-budget-usd (the job's max_cost) was reached
        else:
            failure = classify(message)
        if status:
            reason = f"api_error_{status}"
        elif r.get("subtype") not in (None, "success"):
            reason = str(r["subtype"])[:64]
        else:
            reason = str(r.get("terminal_reason") or "agent_error")[:64]
        return Outcome(
            status="failed",
            reason=reason,
            failure=failure,
            error=error,
            retry_at=reset_time(message) if failure == "quota" else None,
            result=text,
            **common,
        )
