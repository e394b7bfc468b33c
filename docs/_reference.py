"""Reference tables generated from the code, for the docs pages' cog blocks.

`cog -r -I docs docs/*.md docs/reference/*.md` regenerates every page;
tests/unit/test_docs.py fails when a page is stale (`cog --check`)."""

from __future__ import annotations

import enum
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = list(dict.fromkeys(_type_name(a) for a in args if a is not type(None)))
        return " \\| ".join(parts) + (" \\| none" if type(None) in args else "")
    if origin in (list, tuple, set, frozenset):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"table of {_type_name(args[1])}" if len(args) == 2 else "table"
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return "table"
        if issubclass(annotation, SecretStr):
            return "secret"
        if issubclass(annotation, enum.Enum):
            return " \\| ".join(f"`{m.value}`" for m in annotation)
        if issubclass(annotation, Path):
            return "path"
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            annotation.__name__, annotation.__name__
        )
    return str(annotation)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return _toml(value.value)
    if isinstance(value, Path) and value.is_relative_to(Path.home()):
        # Defaults under the generating user's home read as the reader's.
        return f'"~/{value.relative_to(Path.home())}"'
    if isinstance(value, str | Path):
        return f'"{value}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{}"
            if not value
            else "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
        )
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "see below"
        return f"`{_toml(value)}`"
    if field.default is PydanticUndefined:
        return "required"
    if field.default is None:
        return "none"
    return f"`{_toml(field.default)}`"


def _cell(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("|", "\\|")).strip()


def fields(model: type[BaseModel]) -> Iterator[tuple[str, FieldInfo]]:
    yield from model.model_fields.items()


def settings_table(
    model: type[BaseModel],
    prefix: str = "",
    env: str | None = "CORRAL_",
    skip: tuple[str, ...] = (),
) -> str:
    """One row per field: key, environment variable, type, default, meaning."""
    head = (
        "| key | type | default | meaning |"
        if env is None
        else ("| key | environment | type | default | meaning |")
    )
    rows = [head, "|---" * head.count(" | ") + "|---|"]
    for name, field in fields(model):
        if name in skip:
            continue
        key = f"`{prefix}{name}`"
        cells = [key]
        if env is not None:
            cells.append(f"`{env}{name.upper()}`")
        cells += [
            _cell(_type_name(field.annotation)),
            _cell(_default(field)),
            _cell(field.description or ""),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def providers_reference() -> str:
    """The keys every provider takes, then one table per installed executor
    kind with the keys of its own settings model (``settings`` of its class)."""
    import inspect

    from corral.executors.base import kinds, load
    from corral.executors.settings import ProviderSettings

    common = tuple(ProviderSettings.model_fields)
    parts = [
        "Every kind takes:",
        settings_table(ProviderSettings, prefix="providers.NAME.", env=None),
    ]
    for kind in kinds():
        executor = load(kind)
        model = executor.settings
        where = (
            "Local: its jobs are processes on the runner's host, in the runner's sandbox."
            if executor.local
            else "Remote: its jobs run on another server; the runner only drives them."
        )
        doc = _cell(inspect.cleandoc(model.__doc__ or ""))
        parts.append(f'### `kind = "{kind}"`\n\n{doc} {where} It also takes:')
        parts.append(settings_table(model, prefix="providers.NAME.", env=None, skip=common))
    return "\n\n".join(parts)


def cli_reference() -> str:
    """Every command of the typer app, by typer's own docs generator."""
    import typer
    import typer.main
    from typer.cli import get_docs_for_click

    from corral.cli import app

    command = typer.main.get_command(app)
    text = get_docs_for_click(
        obj=command, ctx=typer.Context(command), name="corral", title="Commands"
    )
    # One level down: the page's own title is the only top-level heading.
    lines = [f"#{line}" if line.startswith("#") else line for line in text.strip().splitlines()]
    return "\n".join(lines) + "\n"


def _inspect_clean(text: str) -> str:
    import inspect

    return inspect.cleandoc(text)


def http_reference() -> str:
    """Every route of the app: method, path, the role it needs, and its summary."""
    from fastapi.routing import APIRoute

    from corral.api.app import create_app
    from corral.config import load_settings

    app = create_app(load_settings())
    rows = ["| method and path | role | |", "|---|---|---|"]
    routes = [r for r in _flat(app.routes) if isinstance(r, APIRoute) and r.include_in_schema]
    for route in sorted(routes, key=lambda r: (r.tags[0] if r.tags else "", r.path)):
        doc = _inspect_clean(route.endpoint.__doc__ or "").split("\n\n")[0]
        summary = _cell(doc) or _cell(route.summary or route.name.replace("_", " "))
        for method in sorted(route.methods - {"HEAD"}):
            rows.append(f"| `{method} {route.path}` | {_role(route)} | {summary} |")
    return "\n".join(rows)


def _flat(routes: list[Any]) -> Iterator[Any]:
    """Routes, with those of included routers (FastAPI keeps them nested)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _flat(inner.routes)
        else:
            yield route


def _role(route: Any) -> str:
    """The credential a route needs, from its dependencies (see api/deps.py)."""
    found: list[str] = []

    def walk(dependant: Any) -> None:
        for dep in dependant.dependencies:
            role = getattr(dep.call, "corral_role", None)
            if role is not None:
                found.append(role)
            walk(dep)

    walk(route.dependant)
    return found[0] if found else "none"


def mcp_tools() -> str:
    """The operator MCP server's tools: name, the least role that lists it,
    its arguments (from the input schema clients see) and what it does."""
    import asyncio

    from corral.mcp.server import CorralMCP
    from corral.mcp.tools import TOOLS

    listed = {t.name: t for t in asyncio.run(CorralMCP(None).list_tools())}
    role = {"read": "viewer", "write": "operator", "admin": "admin"}
    rows = ["| tool | role | arguments | |", "|---|---|---|---|"]
    for t in TOOLS:
        schema = listed[t.name].input_schema
        required = set(schema.get("required", []))
        args = []
        for name, prop in schema.get("properties", {}).items():
            kind = _schema_type(prop)
            mark = "" if name in required else "?"
            args.append(f"`{name}{mark}`: {kind}")
        doc = _cell(" ".join((t.fn.__doc__ or "").split()))
        rows.append(f"| `{t.name}` | {role[t.permission]} | {', '.join(args) or '-'} | {doc} |")
    return "\n".join(rows)


def _schema_type(prop: dict[str, Any]) -> str:
    """A JSON schema property in a few words: ``string``, ``list of string``..."""
    if "anyOf" in prop:
        kinds = [_schema_type(p) for p in prop["anyOf"] if p.get("type") != "null"]
        return " \\| ".join(kinds)
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if prop.get("type") == "array":
        return f"list of {_schema_type(prop.get('items', {}))}"
    return str(prop.get("type", "any"))
