"""One job's MCP gateway: an MCP server (the official SDK's low-level
``Server``, streamable HTTP) on 127.0.0.1 at a port of its own, behind a
bearer secret made for the job.

It lives in one task (``Gateway.start`` waits until it listens, ``close``
stops it): the upstream servers' clients are entered and left in that task,
as the SDK's task groups require. The HTTP server is uvicorn, without its
signal handlers and logging set-up (the runner owns both)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import mcp_types as types
import uvicorn
from mcp.server.lowlevel import Server
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError

from corral import redact
from corral.executors.base import Emit, McpEndpoint
from corral.gateway.builtin import APPROVE, TOOLS, Builtins, Control, ToolError
from corral.gateway.policy import Policy, exposed, parse
from corral.gateway.settings import BUILTIN, McpServerSettings
from corral.gateway.upstream import Upstream, UpstreamError

log = logging.getLogger(__name__)

PATH = "/mcp"
# Long strings in tool.result events are cut to this many characters.
RESULT_CHARS = 2000
# Seconds a stopping gateway gives open connections (the agent has exited by then).
STOP_GRACE = 1

Asgi = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def mask(arguments: Any) -> Any:
    """Tool arguments as they are recorded: values under secret-looking keys
    (``token``, ``api_key``, ``password``...) replaced, known secrets redacted."""
    if isinstance(arguments, dict):
        return {
            k: redact.REDACTED
            if isinstance(k, str) and redact.SECRET_NAME.search(k) and isinstance(v, str)
            else mask(v)
            for k, v in arguments.items()
        }
    if isinstance(arguments, list):
        return [mask(v) for v in arguments]
    return redact.data(arguments)


def _clip(text: str) -> str:
    return text if len(text) <= RESULT_CHARS else text[:RESULT_CHARS] + f"... [{len(text)} chars]"


def _text_of(result: types.CallToolResult) -> str:
    return "\n".join(b.text for b in result.content if isinstance(b, types.TextContent))


class Gateway:
    """The gateway of one job. ``start()`` returns where the agent reaches it."""

    def __init__(
        self,
        *,
        job_id: str,
        policy: Policy,
        control: Control,
        emit: Emit,
        servers: Mapping[str, McpServerSettings] | None = None,
        job_mcp_tools: list[str] | None = None,
        run_marker: str | None = None,
        log_dir: Path | None = None,
        hold: Callable[[], AbstractContextManager[None]] | None = None,
        approve: bool = False,
    ) -> None:
        self.job_id = job_id
        self.policy = policy
        self.builtins = Builtins(control, job_mcp_tools=job_mcp_tools)
        self.emit = emit
        self.servers = dict(servers or {})
        self.run_marker = run_marker
        self.log_dir = log_dir
        self.token = secrets.token_urlsafe(32)
        redact.add(self.token)
        # exposed name -> (server, tool, its listing)
        self.tools: dict[str, tuple[str, str, types.Tool]] = {}
        self.upstreams: dict[str, Upstream] = {}
        self.in_flight = 0
        # Held while a call is in flight: the agent waits on it (a sub-job, a
        # person), so its output-stall guards pause (``executors.base.Waiting``).
        self.hold = hold or contextlib.nullcontext
        # Offer `approve`, Claude Code's permission prompt tool (permission_prompt = "human").
        self.approve = approve
        self.endpoint: McpEndpoint | None = None  # once started
        self.started_in: float | None = None  # seconds start() took
        self._stop = asyncio.Event()
        self._ready: asyncio.Future[McpEndpoint] | None = None
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> McpEndpoint:
        t0 = time.perf_counter()
        self._ready = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._serve(), name=f"corral-gateway-{self.job_id}")
        waits: set[asyncio.Future[Any]] = {self._ready, self._task}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled while starting: leave nothing behind
            await self.close()
            raise
        if not self._ready.done():
            self._task.result()  # raises what stopped it
            raise RuntimeError("the gateway stopped before it listened")
        self.endpoint = self._ready.result()
        self.started_in = time.perf_counter() - t0
        return self.endpoint

    async def close(self) -> None:
        """Stop serving and stop the upstream servers (stdio ones with their
        process trees)."""
        self._stop.set()
        if self._task is None:
            return
        if self._ready is not None and not self._ready.done():
            self._task.cancel()  # still starting (an upstream server that does not answer)
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await self._task

    async def _serve(self) -> None:
        assert self._ready is not None
        async with contextlib.AsyncExitStack() as stack:
            for name in self.policy.servers(sorted(self.servers)):
                upstream = Upstream(
                    name,
                    self.servers[name],
                    run_marker=self.run_marker,
                    log_path=self.log_dir / f"{self.job_id}.{name}.log" if self.log_dir else None,
                )
                try:
                    await upstream.connect(stack)
                except UpstreamError as exc:
                    self.emit("gateway.error", {"server": name, "error": str(exc)})
                    continue
                self.upstreams[name] = upstream
            self._index()
            server = self._mcp_server()
            app = server.streamable_http_app(
                streamable_http_path=PATH,
                host="127.0.0.1",
                session_idle_timeout=None,
                transport_security=TransportSecuritySettings(
                    enable_dns_rebinding_protection=True,
                    allowed_hosts=["127.0.0.1:*", "localhost:*"],
                    allowed_origins=["http://127.0.0.1:*", "http://localhost:*"],
                ),
            )
            # IPPROTO_TCP said outright: asyncio sets TCP_NODELAY only on
            # connections whose socket says so, and without it each answer's
            # second write waited for the client's delayed ACK (~40 ms a call).
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            uv = _Uvicorn(
                uvicorn.Config(
                    _authorized(app, self.token),
                    log_config=None,
                    access_log=False,
                    lifespan="on",
                    timeout_graceful_shutdown=STOP_GRACE,
                )
            )
            serving = asyncio.create_task(uv.serve(sockets=[sock]))
            try:
                while not uv.started:
                    if serving.done():
                        serving.result()
                        raise RuntimeError("the gateway's HTTP server did not start")
                    await asyncio.sleep(0.001)
                endpoint = McpEndpoint(
                    url=f"http://127.0.0.1:{port}{PATH}",
                    token=self.token,
                    tools=tuple(sorted(self.tools)),
                )
                self.emit(
                    "gateway.started",
                    {
                        "url": endpoint.url,
                        "tools": list(endpoint.tools),
                        "servers": [BUILTIN, *self.upstreams],
                    },
                )
                self._ready.set_result(endpoint)
                await self._stop.wait()
            finally:
                uv.should_exit = True
                await asyncio.gather(serving, return_exceptions=True)
                sock.close()

    # -- the tools ----------------------------------------------------------------

    def _index(self) -> None:
        builtins = [*TOOLS.values(), *([APPROVE] if self.approve else [])]
        for tool in builtins:
            if self._refusal(BUILTIN, tool.name) is None:
                listing = types.Tool(
                    name=tool.name, description=tool.description, input_schema=tool.schema()
                )
                self.tools[tool.name] = (BUILTIN, tool.name, listing)
        for server, upstream in self.upstreams.items():
            for listing in upstream.tools:
                if self.policy.allows(server, listing.name):
                    name = exposed(server, listing.name)
                    self.tools[name] = (
                        server,
                        listing.name,
                        listing.model_copy(update={"name": name}),
                    )

    def _mcp_server(self) -> Server[Any]:
        async def list_tools(
            ctx: Any, params: types.PaginatedRequestParams | None
        ) -> types.ListToolsResult:
            return types.ListToolsResult(tools=[t for _, _, t in self.tools.values()])

        async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
            return await self.call(params.name, params.arguments or {})

        return Server("corral", version="1", on_list_tools=list_tools, on_call_tool=call_tool)

    async def call(self, name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        """Route one call, recording it: ``tool.call`` then ``tool.result``."""
        known = self.tools.get(name)
        server, tool = (known[0], known[1]) if known else parse(name)
        call_id = secrets.token_hex(6)
        self.emit(
            "tool.call",
            {"id": call_id, "server": server, "tool": tool, "arguments": mask(arguments)},
        )
        t0 = time.perf_counter()
        refusal = self._refusal(server, tool)
        if known is None and refusal is None:
            refusal = f"no tool {name!r} here (the tools are: {', '.join(sorted(self.tools))})"
        if refusal is not None:
            self._record(call_id, server, tool, t0, error=refusal, refused=True)
            raise MCPError(types.INVALID_PARAMS, refusal)
        self.in_flight += 1
        try:
            with self.hold():
                if server == BUILTIN:
                    result = await self._builtin(tool, arguments)
                else:
                    result = await self.upstreams[server].call(tool, arguments)
        except MCPError as exc:
            self._record(call_id, server, tool, t0, error=exc.message)
            raise
        finally:
            self.in_flight -= 1
        text = _text_of(result)
        self._record(
            call_id,
            server,
            tool,
            t0,
            error=text if result.is_error else None,
            result=None if result.is_error else text,
        )
        return result

    def _refusal(self, server: str, tool: str) -> str | None:
        if server == BUILTIN and tool == APPROVE.name and self.approve:
            return None  # the provider asked for it: permission_prompt = "human"
        return self.policy.refusal(server, tool)

    async def _builtin(self, tool: str, arguments: dict[str, Any]) -> types.CallToolResult:
        try:
            answer = await self.builtins.call(TOOLS.get(tool) or APPROVE, arguments)
        except ToolError as exc:
            return types.CallToolResult(content=[types.TextContent(text=str(exc))], is_error=True)
        return types.CallToolResult(
            content=[types.TextContent(text=json.dumps(answer, default=str))],
            # Claude Code takes a permission prompt's answer from a single text
            # block only: with structuredContent too it calls the answer invalid.
            structured_content=None if tool == APPROVE.name else answer,
        )

    def _record(
        self,
        call_id: str,
        server: str,
        tool: str,
        t0: float,
        *,
        error: str | None = None,
        result: str | None = None,
        refused: bool = False,
    ) -> None:
        payload: dict[str, Any] = {
            "id": call_id,
            "server": server,
            "tool": tool,
            "duration_ms": round((time.perf_counter() - t0) * 1000, 3),
            "is_error": error is not None,
        }
        if error is not None:
            payload["error"] = _clip(error)
        if refused:
            payload["refused"] = True
        if result is not None:
            payload["result"] = _clip(result)
        self.emit("tool.result", payload)


def _authorized(app: Asgi, token: str) -> Asgi:
    """``app`` behind the job's secret: ``Authorization: Bearer <token>``."""
    expected = f"Bearer {token}".encode()

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not hmac.compare_digest(given, expected):
                body = json.dumps(
                    {"error": {"code": "unauthorized", "message": "bad or missing gateway token"}}
                ).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await app(scope, receive, send)

    return guarded


class _Uvicorn(uvicorn.Server):
    """uvicorn without its signal handlers: the runner owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
