"""Where ``/mcp`` is mounted: a light ASGI app that loads the operator MCP
server (http.py) in the background once the server starts.

The SDK costs about a second of CPU to import (its own HTTP client,
JSON schema, OpenTelemetry), so ``corral serve`` answers ``/health`` without
waiting for it; a request to ``/mcp`` that arrives first waits until it is
loaded."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from corral import sdk_import
from corral.protocol import error_body

if TYPE_CHECKING:
    from corral.mcp.http import McpEndpoint

PATH = "/mcp"
# How long a request waits for the MCP server to load before a 503.
LOAD_SECONDS = 60.0


class McpMount:
    def __init__(self) -> None:
        self.endpoint: McpEndpoint | None = None
        self._loading = False
        self._ready = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.endpoint is None and self._loading:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), LOAD_SECONDS)
        if self.endpoint is None:
            body = error_body("unavailable", "the MCP server is not running; try again")
            await JSONResponse(body, status_code=503)(scope, receive, send)
            return
        await self.endpoint(scope, receive, send)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Load the MCP server (in a thread: the event loop goes on) and run
        its sessions for as long as the block runs."""
        self._loading = True
        try:
            self.endpoint = await asyncio.to_thread(_load)
            async with self.endpoint.running():
                self._ready.set()
                yield
        finally:
            self._loading = False
            self.endpoint = None
            self._ready.set()  # waiting requests answer 503 now


def _load() -> McpEndpoint:
    http = sdk_import.load("corral.mcp.http")
    endpoint: McpEndpoint = http.McpEndpoint()
    return endpoint
