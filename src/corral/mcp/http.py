"""``/mcp``: the operator MCP server over streamable HTTP, in ``corral serve``.

Every request carries an API key (``Authorization: Bearer KEY`` or
``X-API-Key``) checked like any route's: none or a bad one is a 401, a
runner key a 403, both in corral's error shape. The tools then call the
API as that key, over loopback to the address the request came in on, so
an MCP client can do exactly what the key may do over HTTP and no more.

The SDK's DNS-rebinding check (Host and Origin allowlists) is off: it guards
servers that trust whoever reaches them, and every request here must carry a
key that a page in a browser does not have. Sessions are stateless, so
replicas behind a load balancer need no stickiness."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator

from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from corral.auth import Principal
from corral.client import AsyncClient
from corral.errors import CorralError
from corral.mcp.mount import KEY, PRINCIPAL
from corral.mcp.server import CorralMCP

# Clients kept open (one connection pool per key calling): at most this many.
CLIENTS = 32


class HttpAccess:
    """The caller of each request: the key ``McpMount`` checked."""

    def __init__(self) -> None:
        self._clients: OrderedDict[tuple[str, str], AsyncClient] = OrderedDict()

    def principal(self, request: object | None) -> Principal | None:
        if not isinstance(request, Request):
            return None
        found = request.scope.get(PRINCIPAL)
        return found if isinstance(found, Principal) else None

    async def client(self, request: object | None) -> AsyncClient:
        if not isinstance(request, Request) or KEY not in request.scope:
            raise CorralError("no API key came with this request")
        host, port = request.scope.get("server") or ("127.0.0.1", 0)
        url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        key = (url, str(request.scope[KEY]))
        found = self._clients.get(key)
        if found is not None:
            self._clients.move_to_end(key)
            return found
        made = self._clients[key] = AsyncClient(url, key[1])
        while len(self._clients) > CLIENTS:
            _, old = self._clients.popitem(last=False)
            await old.aclose()
        return made

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), OrderedDict()
        for c in clients:
            await c.aclose()


class McpEndpoint:
    """The SDK's transport at ``/mcp`` (``McpMount`` checks the key first)."""

    def __init__(self) -> None:
        self.access = HttpAccess()
        self.server = CorralMCP(self.access)
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
        # Stateless: any replica behind a load balancer answers any request
        # (the tools keep nothing between calls; corral's database has it all).
        self.server.streamable_http_app(transport_security=security, stateless_http=True)
        self.sessions: StreamableHTTPSessionManager = self.server.session_manager
        self._transport = StreamableHTTPASGIApp(self.sessions)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A request whose key ``McpMount`` checked."""
        await self._transport(scope, receive, send)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """While the server runs: the SDK's sessions live in this task group."""
        try:
            async with self.sessions.run():
                yield
        finally:
            await self.access.aclose()
