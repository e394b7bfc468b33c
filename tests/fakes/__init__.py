"""Test fakes: local stand-ins for the model APIs that the real agent CLIs talk to."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.testing import on_ci

AGENTS_BIN = Path(__file__).parents[2] / "agents" / "node_modules" / ".bin"


def agent_bin(name: str) -> Path:
    """The path of the agent CLI `name` installed under agents/node_modules/.bin.

    Fails in CI (where the CLIs must be installed) and skips elsewhere.
    """
    path = AGENTS_BIN / name
    if not path.exists():
        msg = f"agent CLI {name!r} not found at {path}"
        if on_ci():
            pytest.fail(f"{msg}; CI must run: npm ci --prefix agents")
        pytest.skip(f"{msg}; to run this test, run: npm ci --prefix agents")
    return path
