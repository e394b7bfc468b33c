"""The operator MCP server: drive corral from any MCP client with an API key.

``tools``: the tools, each thin over the Python client; ``server``: the SDK
server that lists the tools a caller's role may use; ``http``: ``/mcp`` in
``corral serve`` (streamable HTTP, the API keys as bearer tokens; ``mount``
loads it when the first request comes);
``stdio``: ``corral mcp``. The per-job gateway agents call while they run is
another thing (``corral.gateway``)."""
