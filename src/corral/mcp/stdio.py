"""``corral mcp``: the operator MCP server over stdin/stdout, for MCP clients
that start their servers as processes (Claude Code, Codex, Claude Desktop).

It reaches corral with the CLI's URL and key (``--server``/``CORRAL_URL``,
``--token``/``CORRAL_TOKEN``, else the local server and its admin key), asks
once who that key is (``GET /whoami``) and lists the tools of its role.
Stdout carries the protocol only; logs go to stderr."""

from __future__ import annotations

from corral.auth import Principal, Role
from corral.client import AsyncClient
from corral.errors import Forbidden
from corral.mcp.server import CorralMCP


class StdioAccess:
    """One caller: the key the process was started with."""

    def __init__(self, client: AsyncClient, who: Principal) -> None:
        self._client = client
        self.who = who

    def principal(self, request: object | None) -> Principal | None:
        return self.who

    async def client(self, request: object | None) -> AsyncClient:
        return self._client


async def serve(url: str | None, token: str | None) -> None:
    """Serve on stdin/stdout until the client closes them."""
    async with AsyncClient(url, token) as c:
        me = await c.whoami()
        who = Principal(key_id=me.key_id, role=Role(me.role), name=me.name)
        if who.role is Role.RUNNER:
            raise Forbidden("a runner key cannot operate corral: use an operator or viewer key")
        await CorralMCP(StdioAccess(c, who)).run_stdio_async()
