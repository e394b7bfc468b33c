"""The MCP SDK is imported by one thread at a time.

Two parts of one process load it lazily, each from its own thread: the
control plane's ``/mcp`` server at its first request (``mcp/mount.py``, a
second of CPU it does not make the event loop wait for) and a job's MCP
gateway as the embedded runner starts the job (``runner/gateway.py``). The
SDK's modules import each other in a circle (``mcp.server.lowlevel.server``
and ``mcp.server.streamable_http_manager``): two threads entering that circle
from its two ends each hold one module's import lock and wait for the
other's, and Python breaks the tie with ``_DeadlockError`` in one of them —
a job whose gateway "did not start" because it began in the server's first
second, while ``/mcp`` was still loading at every start (seen in CI,
2026-12-07). Importing under one lock makes it a wait.
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType

_LOCK = threading.Lock()


def load(name: str) -> ModuleType:
    """``importlib.import_module(name)``, one thread at a time (blocking: call
    it in a worker thread from the event loop)."""
    with _LOCK:
        return importlib.import_module(name)
