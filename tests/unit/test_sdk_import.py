"""The MCP SDK loaded from two threads at once, as ``corral serve`` does
when a job's gateway starts while the ``/mcp`` server is still loading
(``corral/sdk_import.py``). Each round is a fresh interpreter: an import
happens once per process."""

from __future__ import annotations

import subprocess
import sys

# Two threads start together, each importing one end of the SDK's circle.
RACE = """
import importlib, sys, threading
from corral import sdk_import
load = sdk_import.load if sys.argv[1] == "locked" else importlib.import_module
start, errors = threading.Barrier(2), []
def run(name):
    start.wait()
    try:
        load(name)
    except BaseException as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=run, args=(n,))
           for n in ("corral.mcp.http", "corral.gateway.server")]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(errors[0] if errors else "ok")
"""


def _race(how: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", RACE, how], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


def test_the_sdk_loads_from_two_threads_at_once() -> None:
    """Without the lock (``_race("plain")``: ``importlib.import_module`` in
    both threads) this race raised ``_DeadlockError`` in 7 rounds of 8 on
    this machine (2026-12-07), as a job's gateway did in CI: "the job's MCP
    gateway did not start: _DeadlockError: deadlock detected by
    _ModuleLock('mcp.server.streamable_http_manager')"."""
    assert [_race("locked") for _ in range(3)] == ["ok"] * 3
