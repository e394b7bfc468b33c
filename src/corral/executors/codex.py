"""codex: the real ``codex exec --json``, headless.

``codex exec --json --skip-git-repo-check --sandbox workspace-write PROMPT``
in the job's workspace; a follow-up turn runs ``codex exec --json ...
--sandbox MODE resume THREAD_ID PROMPT`` (flags go before ``resume``; the id
comes from the previous turn's ``thread.started``). Configuration goes
through a per-provider ``CODEX_HOME/config.toml`` that corral writes: with
``OPENAI_BASE_URL`` in the provider's ``env``, a ``model_providers.corral``
entry pointing there (Responses wire API, few retries); always with the
sandbox mode (a resume without it runs read-only) and plugins and analytics
off (otherwise the CLI contacts github.com and chatgpt.com).

codex's own sandbox (bubblewrap) cannot nest in the runner's: in there it
has no capabilities to make namespaces, and every command would fail. Inside
the runner's sandbox corral runs codex with ``danger-full-access`` and lets
its own sandbox confine the commands as the provider's ``sandbox`` says:
``workspace-write`` (the workspace writable, the host read-only, the
runner's secrets hidden) or ``read-only`` (the workspace read-only too).
Unlike codex's, corral's keeps the network (codex itself runs in it).

Codex reports token usage but no cost, and ``turn.completed.usage`` is the
thread's running total: this run's share is the difference to the total the
previous turn saw (kept next to the provider's CODEX_HOME)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from corral.executors.agent import AgentExecutor, classify, clip, reset_time, usage_of
from corral.executors.base import Context
from corral.executors.settings import AgentSettings, ProviderSettings
from corral.models import Outcome

# The variable holding the gateway's bearer secret in codex's environment.
TOKEN_ENV = "CORRAL_MCP_TOKEN"


def _toml(value: object) -> str:
    return json.dumps(value)  # a JSON string or number is a valid TOML value


class CodexSettings(AgentSettings):
    """`codex exec --json` in the job's workspace (a git worktree of its repo);
    a follow-up turn resumes its thread."""

    sandbox: str = Field(
        "workspace-write",
        description="codex --sandbox mode (read-only fails writes silently); inside the "
        "runner's bwrap sandbox that sandbox enforces it and codex runs without its own.",
    )


class CodexExecutor(AgentExecutor[CodexSettings]):
    kind: ClassVar[str] = "codex"
    settings: ClassVar[type[ProviderSettings]] = CodexSettings
    default_command: ClassVar[str] = "codex"

    def __init__(self) -> None:
        super().__init__()
        self.thread_id: str | None = None
        self.messages: list[str] = []
        self.usage: dict[str, Any] | None = None
        self.failed: str | None = None
        self.errors: list[str] = []
        self.totals_dir: Path | None = None

    def argv(self, ctx: Context[CodexSettings]) -> list[str]:
        s = ctx.settings
        prompt = ctx.job.prompt or ctx.job.command or ""
        args = [*self.command(ctx), "exec", "--json", "--skip-git-repo-check"]
        args += ["--sandbox", self.mode(ctx)]
        model = ctx.job.model or s.model
        if model:
            args += ["--model", model]
        if ctx.mcp is not None:
            # The gateway as a streamable HTTP server of this run only (not in
            # the provider's shared config.toml); its secret comes from the
            # environment (TOKEN_ENV), never the command line.
            table = f"mcp_servers.{ctx.mcp.name}"
            args += ["-c", f"{table}.url={_toml(ctx.mcp.url)}"]
            args += ["-c", f"{table}.bearer_token_env_var={_toml(TOKEN_ENV)}"]
            # `codex exec` never asks: without this every MCP call is refused
            # ("requires approval, but approval policy is never"); the gateway
            # lists only the tools the provider allows.
            args += ["-c", f"{table}.default_tools_approval_mode={_toml('approve')}"]
        args += list(s.extra_args)
        if ctx.handle:
            return [*args, "resume", ctx.handle, prompt]
        return [*args, prompt]

    def environment(self, ctx: Context[CodexSettings], home: Path, tmp: Path) -> dict[str, str]:
        codex_home = home.parent / "codex"
        codex_home.mkdir(parents=True, exist_ok=True)
        self.totals_dir = home.parent / "codex-usage"
        env = ctx.settings.env
        # The model goes on the command line: runs with other models share this file.
        lines = [f"sandbox_mode = {_toml(self.mode(ctx))}"]
        if env.get("OPENAI_BASE_URL"):
            lines += [
                'model_provider = "corral"',
                "",
                "[model_providers.corral]",
                'name = "corral"',
                f"base_url = {_toml(env['OPENAI_BASE_URL'])}",
                'env_key = "OPENAI_API_KEY"',
                'wire_api = "responses"',
                # corral retries itself, by failure class (a 429 pauses the provider).
                "request_max_retries = 0",
                "stream_max_retries = 0",
            ]
        lines += ["", "[features]", "plugins = false", "", "[analytics]", "enabled = false", ""]
        config = "\n".join(lines)
        path = codex_home / "config.toml"
        if not path.exists() or path.read_text() != config:
            tmp = codex_home / f".config.{ctx.job.id}.tmp"
            tmp.write_text(config)
            tmp.replace(path)
        if ctx.mcp is not None:
            return {"CODEX_HOME": str(codex_home), TOKEN_ENV: ctx.mcp.token}
        return {"CODEX_HOME": str(codex_home)}

    def mode(self, ctx: Context[CodexSettings]) -> str:
        """codex's own sandbox mode: none inside the runner's sandbox, which
        then does what the provider's ``sandbox`` asks."""
        return "danger-full-access" if ctx.confine.kind == "bwrap" else ctx.settings.sandbox

    def read_only(self, ctx: Context[CodexSettings]) -> list[Path]:
        return [ctx.workdir] if ctx.settings.sandbox == "read-only" else []

    def on_line(self, data: dict[str, Any], ctx: Context[CodexSettings]) -> None:
        kind = data.get("type")
        emit = ctx.emit
        if kind == "thread.started":
            self.thread_id = data.get("thread_id")
            if self.thread_id:
                ctx.save_handle(self.thread_id)
            emit("agent.init", {"agent": "codex", "session_id": self.thread_id})
        elif kind in ("item.started", "item.completed", "item.updated"):
            self._item(kind, data.get("item") or {}, ctx)
        elif kind == "turn.completed":
            self.usage = self._this_run(usage_of(data.get("usage")))
            self.finished = True
            emit("agent.result", {"is_error": False, "usage": self.usage})
        elif kind == "turn.failed":
            error = data.get("error") or {}
            self.failed = str(error.get("message") if isinstance(error, dict) else error)
            self.finished = True
            emit("agent.result", {"is_error": True, "error": clip(self.failed)})
        elif kind == "error":
            message = str(data.get("message", ""))
            if message.startswith("Reconnecting"):
                # Retried forever when the API is unreachable: not progress.
                self.idle_line = True
                emit("agent.retry", {"message": clip(message)})
            else:
                self.errors.append(message)
                emit("agent.error", {"error": clip(message)})
        elif kind == "turn.started":
            emit("agent.turn", {}, ephemeral=True)
        else:
            emit("agent.event", {"raw": clip(data)})

    def _this_run(self, total: dict[str, Any] | None) -> dict[str, Any] | None:
        """This run's usage from the thread's running total."""
        if total is None or self.thread_id is None or self.totals_dir is None:
            return total
        self.totals_dir.mkdir(parents=True, exist_ok=True)
        path = self.totals_dir / f"{self.thread_id.replace('/', '_')}.json"
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError):
            previous = {}
        path.write_text(json.dumps(total))
        return {k: v - previous.get(k, 0) if isinstance(v, int) else v for k, v in total.items()}

    def _item(self, kind: str, item: dict[str, Any], ctx: Context[CodexSettings]) -> None:
        itype = item.get("type")
        done = kind == "item.completed"
        if itype == "agent_message":
            if done:
                self.messages.append(str(item.get("text", "")))
                ctx.emit("agent.message", {"text": clip(item.get("text", ""))})
        elif itype == "reasoning":
            if done:
                ctx.emit("agent.thinking", {"text": clip(item.get("text", ""))}, internal=True)
        elif itype == "command_execution":
            if not done:
                ctx.emit(
                    "agent.tool_call",
                    {
                        "id": item.get("id"),
                        "name": "command",
                        "input": {"command": item.get("command")},
                    },
                )
            else:
                ctx.emit(
                    "agent.tool_result",
                    {
                        "id": item.get("id"),
                        "is_error": item.get("exit_code") not in (0, None),
                        "exit_code": item.get("exit_code"),
                        "content": clip(item.get("aggregated_output")),
                    },
                )
        elif itype == "file_change":
            if done:
                ctx.emit(
                    "agent.file_change",
                    {"id": item.get("id"), "changes": clip(item.get("changes"))},
                )
        elif itype == "mcp_tool_call":
            name = f"{item.get('server')}.{item.get('tool')}"
            ctx.emit(
                "agent.tool_result" if done else "agent.tool_call",
                {
                    "id": item.get("id"),
                    "name": name,
                    "content": clip(item.get("result")),
                    "status": item.get("status"),
                },
            )
        elif itype == "error":
            if done:
                self.errors.append(str(item.get("message", "")))
                ctx.emit("agent.error", {"error": clip(item.get("message"))})
        elif done:
            ctx.emit("agent.event", {"raw": clip(item)})

    def outcome(self, returncode: int | None, ctx: Context[CodexSettings]) -> Outcome:
        result = self.messages[-1] if self.messages else None
        if self.finished and self.failed is None and returncode == 0:
            return Outcome(status="done", result=result, exit_code=0, usage=self.usage)
        if self.guard is not None and not self.finished:
            return self.guard_outcome(ctx, returncode)
        if self.failed is not None or self.errors:
            message = self.failed or self.errors[-1]
            failure = classify(message)
            return Outcome(
                status="failed",
                reason="agent_error",
                failure=failure,
                error=message,
                retry_at=reset_time(message) if failure == "quota" else None,
                result=result,
                exit_code=returncode,
                usage=self.usage,
            )
        if self.finished and self.guard == "linger":
            return Outcome(status="done", result=result, exit_code=returncode, usage=self.usage)
        detail = self.stderr_text()[-2000:] or f"exit code {returncode}"
        return Outcome(
            status="failed",
            reason="no_result",
            failure="infra" if returncode in (None, 0) or (returncode or 0) < 0 else "agent",
            error=f"codex exited without a result: {detail}",
            exit_code=returncode,
        )
