"""The layers of src/corral import only downwards (DESIGN.md, "Code layout").

The import graph is read from the source with ``ast``: every ``import`` and
``from ... import`` counts, at the top of a module or inside a function (a
lazy import is still a dependency), relative ones resolved; importing
``a.b.c`` also runs the packages ``a`` and ``a.b``. Reaching a forbidden
layer through another module is as bad as importing it directly, so the
runner and store rules follow the graph transitively."""

from __future__ import annotations

import ast
import itertools
import subprocess
import sys
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
ROOT = "corral"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _files() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((SRC / ROOT).rglob("*.py"))}


def _imports(name: str, path: Path, modules: set[str]) -> Iterator[tuple[str, int]]:
    """(module, line) for each corral module ``name`` imports, with the
    packages that importing it runs."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            # `from corral.protocol import topics` imports the module topics.
            targets = [source]
            targets += [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in modules]
        for target in targets:
            if target != ROOT and not target.startswith(ROOT + "."):
                continue
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in modules and prefix != name:
                    yield prefix, node.lineno


def _graph() -> tuple[dict[str, list[tuple[str, int]]], dict[str, Path]]:
    files = _files()
    modules = set(files)
    return {name: list(_imports(name, path, modules)) for name, path in files.items()}, files


GRAPH, FILES = _graph()


def layer(module: str) -> str:
    """``corral.store.jobs.create`` -> ``store``; ``corral.config`` -> ``config``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def _where(module: str, target: str) -> str:
    line = next(n for t, n in GRAPH[module] if t == target)
    return f"{FILES[module].relative_to(SRC.parent)}:{line}"


def reaches(start: str, forbidden: set[str]) -> list[str] | None:
    """The chain of imports from ``start`` to a module of a ``forbidden``
    layer, or None."""
    parent: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        module = queue.popleft()
        for target, _ in GRAPH[module]:
            if target in parent:
                continue
            parent[target] = module
            if layer(target) in forbidden:
                chain = [target]
                while (prev := parent[chain[-1]]) is not None:
                    chain.append(prev)
                chain.reverse()
                return [f"{a} ({_where(a, b)}) -> {b}" for a, b in itertools.pairwise(chain)]
            queue.append(target)
    return None


LAYERS = {layer(m) for m in GRAPH}

# id: (layers, what they must never reach, why)
RULES = {
    "runner-and-executors": (
        {"runner", "executors"},
        {"store", "api", "server", "cli", "intake", "sinks", "services"},
        "a runner on another host has no database and no server: it speaks protocol v1",
    ),
    "gateway": (
        {"gateway"},
        {"store", "api", "server", "cli", "intake", "sinks", "services", "runner"},
        "the gateway runs on the runner's host next to the agent: it reaches the control "
        "plane only through the worker link the runner hands it",
    ),
    "executors-below-runner": (
        {"executors"},
        {"runner"},
        "the runner drives the executors, never the other way round",
    ),
    "store": (
        {"store"},
        {"api", "server", "cli", "config", "intake", "sinks", "services"},
        "the store is persistence only: it is handed values, not settings or routes",
    ),
    "sinks": (
        {"sinks"},
        {"api", "server", "cli", "intake", "runner"},
        "a sink reads the store and the bus and writes outwards; the routes, the intake and "
        "the composition root that runs it sit above it",
    ),
    "forges": (
        {"forges"},
        {
            "store",
            "api",
            "server",
            "cli",
            "intake",
            "sinks",
            "runner",
            "executors",
            "services",
            "config",
            "bus",
        },
        "a tracker client speaks a third party's API: intake and sinks use it, not the reverse",
    ),
    "api-without-sinks": (
        {"api"},
        {"sinks"},
        "routes answer requests; sending results out is the sinks', run by the server's loops",
    ),
    "protocol": (
        {"protocol"},
        LAYERS - {"protocol", "models", "errors", "jobs", "routing", "jsontext", ROOT},
        "the wire contract depends on the pure core only, so both sides can import it",
    ),
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_layers_never_reach_what_they_must_not(rule: str) -> None:
    sources, forbidden, why = RULES[rule]
    # Each import that crosses into a forbidden layer, with the shortest
    # chain that reaches it from the guarded layers.
    crossings: dict[str, list[str]] = {}
    for module in sorted(GRAPH):
        if layer(module) in sources:
            chain = reaches(module, forbidden)
            if chain is not None and len(chain) < len(crossings.get(chain[-1], chain * 2)):
                crossings[chain[-1]] = chain
    assert not crossings, f"{why}; but:\n" + "\n".join(
        f"  {last}\n      (reached: {' / '.join(chain[:-1]) or 'directly'})"
        for last, chain in sorted(crossings.items())
    )


def test_only_the_cli_and_testing_import_the_server() -> None:
    """``corral.server`` is the composition root of ``corral serve``: it
    imports every layer, so nothing but the CLI and the test helpers may
    import it (a route importing it would make a cycle through everything)."""
    allowed = {"server", "cli", "testing"}
    found = [
        f"{_where(module, target)}: {module} imports {target}"
        for module, edges in sorted(GRAPH.items())
        for target, _ in edges
        if layer(target) == "server" and layer(module) not in allowed
    ]
    assert not found, "only cli/ and testing.py import corral.server; but:\n  " + "\n  ".join(found)


def test_the_graph_is_read() -> None:
    """The check sees the imports it guards, lazy ones too, and the packages
    an import runs: an empty graph cannot pass it."""
    assert "corral.protocol.topics" in {t for t, _ in GRAPH["corral.store.events"]}
    # Inside a function: `from corral.store import Store` in `corral db ...`.
    assert {"corral.store", "corral.store.migrate"} <= {t for t, _ in GRAPH["corral.cli.admin"]}
    # `from corral.executors.sandbox import ...` runs corral/executors/__init__.py.
    assert "corral.executors" in {t for t, _ in GRAPH["corral.runner.workspace"]}
    # The sinks are in the graph, and the loops that run them reach them.
    assert "corral.sinks.webhook" in {t for t, _ in GRAPH["corral.server.loops"]}
    assert "corral.sinks.folder" in {t for t, _ in GRAPH["corral.intake.folder"]}


def test_importing_the_runner_loads_no_store_server_or_jwt() -> None:
    heavy = ("sqlalchemy", "alembic", "asyncpg", "aiosqlite", "jwt", "fastapi", "starlette")
    code = (
        "import sys, corral.runner\n"
        f"print(' '.join(m for m in sys.modules if m.split('.')[0] in {heavy!r}"
        " or m.startswith(('corral.store', 'corral.api', 'corral.server'))))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == []
