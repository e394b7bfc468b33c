"""`corral mcp`: the operator MCP server over stdio."""

from __future__ import annotations

from corral.cli.common import ServerOpt, TokenOpt


def mcp(server: ServerOpt = None, token: TokenOpt = None) -> None:
    """Serve corral's tools to an MCP client over stdin/stdout (submit and
    follow jobs, answer waiting agents, status, agent daemons), as the CLI's
    URL and key. Add it to Claude Code with `claude mcp add corral -- corral mcp`."""
    import anyio

    from corral.mcp.stdio import serve

    anyio.run(serve, server, token)
