"""The per-job MCP gateway: each running agent job (claude-code, codex) gets
its own MCP server, hosted by the runner next to the agent.

- streamable HTTP on 127.0.0.1, a random port, a per-job secret as a bearer
  token; the executor hands it to the agent (Claude Code: ``--mcp-config``
  and ``--allowedTools``; Codex: ``-c mcp_servers.corral...``);
- its tool router sends each call to a backend: corral's own tools
  (``builtin``: sub-jobs, progress) go to the control plane over runner
  protocol v1 with the job's worker token, so a fenced worker's calls fail;
  upstream MCP servers (``upstream``: ``[mcp.servers.NAME]``, HTTP or stdio)
  are proxied, namespaced by server;
- only what the provider's ``mcp_tools`` allowlist (narrowed by the job's)
  permits is listed, and any other call is refused naming the rule
  (``policy``);
- every call is recorded: ``tool.call`` and ``tool.result`` events.

``settings`` is pure pydantic (the configuration imports it); ``server``
loads the MCP SDK, starlette and uvicorn, and is imported by the runner only
when a job needs a gateway. The gateway never imports the runner: the runner
hands it the job's worker link (``builtin.Control``) and its ``emit``."""
