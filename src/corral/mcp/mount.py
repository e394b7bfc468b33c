"""Where ``/mcp`` is mounted: a light ASGI app that loads the operator MCP
server (http.py) when the first request to ``/mcp`` comes.

The SDK costs about a second of CPU to import (its own HTTP client,
JSON schema, OpenTelemetry) and ~26 MB of memory: a server nobody asks
for MCP never pays it. The first request waits for the load (in a thread:
the event loop goes on); it was loaded in the background at every start
before, a second of CPU at each ``corral serve`` (the test suite starts
hundreds)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from corral import sdk_import
from corral.api.deps import bearer
from corral.errors import CorralError
from corral.protocol import error_body
from corral.services import Services

if TYPE_CHECKING:
    from corral.mcp.http import McpEndpoint

log = logging.getLogger(__name__)

PATH = "/mcp"
# The caller of a request, checked here, for the tools (``http.HttpAccess``).
PRINCIPAL = "corral.principal"
KEY = "corral.key"
# How long a request waits for the MCP server to load before a 503.
LOAD_SECONDS = 60.0


class McpMount:
    def __init__(self) -> None:
        self.endpoint: McpEndpoint | None = None
        self._open = False  # ``running`` runs: requests get the server
        self._wanted = asyncio.Event()  # a request asked for it
        self._ready = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The key first: a request without a good one loads nothing.
        request = Request(scope, receive)
        svc: Services = request.app.state.services
        try:
            key = bearer(request)
            who = await svc.authenticate(key)
            who.require("read")
        except CorralError as exc:
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            response = JSONResponse(
                error_body(exc.code, exc.message), status_code=exc.status, headers=headers
            )
            await response(scope, receive, send)
            return
        scope[PRINCIPAL], scope[KEY] = who, key
        if self.endpoint is None and self._open:
            self._wanted.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), LOAD_SECONDS)
        if self.endpoint is None:
            body = error_body("unavailable", "the MCP server is not running; try again")
            await JSONResponse(body, status_code=503)(scope, receive, send)
            return
        await self.endpoint(scope, receive, send)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Once the first request asks for it, load the MCP server (in a
        thread: the event loop goes on) and run its sessions for as long as
        the block runs (entering it waits for that request)."""
        self._open = True
        try:
            await self._wanted.wait()
            began = time.perf_counter()
            self.endpoint = await asyncio.to_thread(_load)
            log.info("/mcp: the MCP server loaded in %.1f s", time.perf_counter() - began)
            async with self.endpoint.running():
                self._ready.set()
                yield
        finally:
            self._open = False
            self.endpoint = None
            self._ready.set()  # waiting requests answer 503 now


def _load() -> McpEndpoint:
    http = sdk_import.load("corral.mcp.http")
    endpoint: McpEndpoint = http.McpEndpoint()
    return endpoint
