"""An upstream MCP server for one job: connected when the job's gateway
starts, its tools listed once, each call proxied with the server's timeout.

A stdio server is started by the SDK's client in a session of its own, its
environment PATH, HOME, the locale, its ``env`` and the job's run marker (so
the runner's sweep finds what it leaves behind); leaving the client stops it
with its process tree. Its stderr goes to a log file of the runner's."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any, TextIO

import mcp_types as types
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from corral import redact
from corral.errors import CorralError
from corral.executors.process import MARKER_VAR
from corral.gateway.settings import McpServerSettings

# Seconds an upstream server may take to start and list its tools.
CONNECT_SECONDS = 30.0


class UpstreamError(CorralError):
    """An upstream MCP server could not be reached or started."""


class Upstream:
    def __init__(
        self,
        name: str,
        settings: McpServerSettings,
        *,
        run_marker: str | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.run_marker = run_marker
        self.log_path = log_path
        self.tools: list[types.Tool] = []
        self.client: Client | None = None
        redact.add(*settings.secrets())

    async def connect(self, stack: contextlib.AsyncExitStack) -> None:
        """Connect (start a stdio server) and list its tools; it is left, and
        stopped, when ``stack`` closes."""
        try:
            # The handshake and the listing each wait CONNECT_SECONDS at most.
            client = Client(await self._transport(stack), read_timeout_seconds=CONNECT_SECONDS)
            self.client = await stack.enter_async_context(client)
            listed = await self.client.list_tools()
        except Exception as exc:  # the SDK's transports raise many kinds
            raise UpstreamError(f"MCP server {self.name!r}: {type(exc).__name__}: {exc}") from exc
        self.tools = list(listed.tools)

    async def _transport(self, stack: contextlib.AsyncExitStack) -> Any:
        s = self.settings
        if s.command is not None:
            env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TZ")}
            env.update({k: v for k, v in os.environ.items() if k.startswith("LC_")})
            env.update(s.env)
            if self.run_marker:
                env[MARKER_VAR] = self.run_marker
            params = StdioServerParameters(
                command=s.command[0], args=[*s.command[1:], *s.args], env=env
            )
            return stdio_client(params, errlog=self._errlog(stack))
        assert s.url is not None
        headers = dict(s.headers)
        token = await asyncio.to_thread(s.token)
        if token:
            redact.add(token)
            headers["Authorization"] = f"Bearer {token}"
        http = await stack.enter_async_context(create_mcp_http_client(headers=headers))
        return streamable_http_client(s.url, http_client=http)

    def _errlog(self, stack: contextlib.AsyncExitStack) -> TextIO:
        if self.log_path is None:
            return stack.enter_context(open(os.devnull, "w"))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        return stack.enter_context(self.log_path.open("a"))

    async def call(self, tool: str, arguments: dict[str, Any]) -> types.CallToolResult:
        """Call ``tool``; a timeout or a broken connection is an error result
        (the agent reads it), an MCP error from the server is raised as is."""
        assert self.client is not None
        try:
            return await self.client.call_tool(
                tool, arguments, read_timeout_seconds=self.settings.timeout
            )
        except MCPError:
            raise
        except Exception as exc:
            return types.CallToolResult(
                content=[
                    types.TextContent(
                        text=f"MCP server {self.name!r} failed: {type(exc).__name__}: {exc}"
                    )
                ],
                is_error=True,
            )
