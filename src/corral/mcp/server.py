"""The operator MCP server: corral's tools (tools.py) on the official SDK's
``MCPServer``, for any transport. The transport says who calls (``Access``):
each call's key for ``/mcp`` (http.py), the CLI's key for ``corral mcp``
(stdio.py). ``tools/list`` answers only the tools the caller's role may use;
a call the API refuses is a tool error carrying the API's message, and the
session goes on."""

from __future__ import annotations

import functools
import logging
from typing import Any, Protocol

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

from corral import __version__
from corral.auth import Principal, permits
from corral.client import AsyncClient
from corral.errors import CorralError
from corral.mcp.tools import TOOLS, Tool

INSTRUCTIONS = """\
corral runs jobs for AI coding agents. submit_job queues a prompt (or a shell \
command) and answers its id at once; wait_job, get_job and job_logs follow it. \
A job whose `waiting_for` is set waits for a person: answer it with `answer`."""


class Access(Protocol):
    """Who makes a request, and a client that calls the API as them."""

    def principal(self, request: object | None) -> Principal | None: ...

    async def client(self, request: object | None) -> AsyncClient: ...


class CorralMCP(MCPServer):
    """An ``MCPServer`` that knows how to reach corral as each caller."""

    def __init__(self, access: Access | None) -> None:
        # The SDK's constructor configures the root logger (logging.basicConfig):
        # library code adds no handlers, so what it adds is taken back.
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        try:
            super().__init__(
                "corral", title="corral", version=__version__, instructions=INSTRUCTIONS
            )
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)
        self.access = access
        for t in TOOLS:
            self.add_tool(
                _refusals_as_tool_errors(t),
                name=t.name,
                title=t.title,
                description=_description(t),
                annotations=ToolAnnotations(
                    title=t.title,
                    readOnlyHint=t.read_only,
                    destructiveHint=t.name in ("cancel_job", "pause", "agent_action"),
                    openWorldHint=False,
                ),
            )
        self.middleware.append(self._only_permitted_tools)

    async def client_of(self, ctx: Context) -> AsyncClient:
        if self.access is None:
            raise ToolError("this server has no way to reach corral")
        return await self.access.client(ctx.request_context.request)

    async def _only_permitted_tools(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        result = await call_next(ctx)
        if ctx.method != "tools/list" or self.access is None:
            return result
        who = self.access.principal(ctx.request)
        allowed = {t.name for t in TOOLS if who is not None and permits(who.role, t.permission)}
        if isinstance(result, dict):
            return {**result, "tools": [t for t in result["tools"] if t["name"] in allowed]}
        tools = [t for t in getattr(result, "tools", []) if t.name in allowed]
        return result.model_copy(update={"tools": tools}) if result is not None else None


def _description(t: Tool) -> str:
    doc = " ".join((t.fn.__doc__ or "").split())
    role = {"read": "viewer", "write": "operator", "admin": "admin"}[t.permission]
    return f"{doc} (Needs the {role} role.)"


def _refusals_as_tool_errors(t: Tool) -> Any:
    """``t``'s function, with corral's errors (the API's refusals, an
    unreachable server) turned into tool errors that carry their message."""

    @functools.wraps(t.fn)
    async def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return await t.fn(*args, **kwargs)
        except CorralError as exc:
            raise ToolError(f"{exc.code}: {exc.message}") from exc

    return call
