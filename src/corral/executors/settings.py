"""What a provider table takes: ``[providers.NAME]`` in corral.toml.

Each executor kind owns its settings model (the class's ``settings``), and a
table is validated against its kind's model only: a key the kind does not
take is an error naming the key, the kind and what it takes. The models are
built from the base here (what every provider has: routing, caps, fallback)
and the mixins several kinds share: ``LocalSettings`` (a process on the
runner's host), ``AgentSettings`` (a headless agent CLI) and
``RemoteSettings`` (an API somewhere else, its credential and its runner).

This module loads pydantic and the standard library only: the configuration
imports it, and a kind's executor module (where its model lives) is imported
only when a table of that kind is read."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from corral import redact
from corral.errors import ConfigError
from corral.pricing import Prices

_SHELL_OPERATOR = frozenset("();<>|&")
_EXPANSION = re.compile(r"\$[({A-Za-z_]|`")


def split_command(value: object) -> object:
    """A command setting as an argv list: a list as given; a string split into
    words like a shell splits them (``shlex.split``: quotes and backslashes),
    and never run by a shell, so a string using what only a shell does (``;``,
    ``&&``, ``|``, redirections, ``$VAR``, ``$(...)``) is refused rather than
    passed on as literal words."""
    if not isinstance(value, str):
        return value
    words = re.sub(r"\\.", "x", value)  # escaped characters are plain ones
    lexer = shlex.shlex(words, posix=False, punctuation_chars=True)  # quotes stay on words
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
        argv = shlex.split(value)
    except ValueError as exc:
        raise ValueError(f"cannot split {value!r} into words: {exc}") from None
    syntax = [
        t
        for t in tokens
        if all(c in _SHELL_OPERATOR for c in t) or (not t.startswith("'") and _EXPANSION.search(t))
    ]
    if syntax:
        raise ValueError(
            f"{value!r} uses shell syntax ({' '.join(dict.fromkeys(syntax))}) but a command "
            "is run directly, not by a shell; to use a shell, say so: "
            f'["sh", "-c", {_toml_string(value)}]'
        )
    return argv


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ProviderSettings(BaseModel):
    """Every provider, whatever its kind."""

    model_config = ConfigDict(extra="forbid")

    # Why a key some other kinds take is not one of this kind's (shown with the error).
    refused: ClassVar[dict[str, str]] = {}

    kind: str = Field(description="Executor kind: one of the installed kinds (below).")
    enabled: bool = Field(True, description="A disabled provider is never routed to.")
    models: list[str] = Field(default_factory=list, description="Models it serves.")
    tiers: dict[Literal["low", "medium", "high"], str] = Field(
        default_factory=dict, description="complexity_hint -> model."
    )
    concurrency: int | None = Field(
        None, ge=1, description="At most this many of its jobs active at once (others queue)."
    )
    fallback: str | None = Field(
        None,
        description="Provider that takes this one's jobs while a quota limit or a budget "
        "pauses it.",
    )
    prices: Prices | None = Field(
        None,
        description="USD per million tokens (input, output, cache_read, cache_write) pricing "
        "its jobs when it reports no cost: a self-hosted or negotiated model; wins over the "
        "genai-prices estimate.",
    )

    @property
    def is_local(self) -> bool:
        """Whether its jobs run on the runner's host (its executor says)."""
        from corral.executors.base import load

        return load(self.kind).local


class LocalSettings(ProviderSettings):
    """A kind whose jobs are processes on the runner's host, in its sandbox."""

    refused: ClassVar[dict[str, str]] = {
        "runner": "only a remote provider is assigned to a runner; a local one is served by "
        "the runners that list it (runner.providers, corral runner --provider)",
    }

    env: dict[str, str] = Field(
        default_factory=dict,
        description="Extra environment of the job's process (e.g. ANTHROPIC_BASE_URL, "
        "ANTHROPIC_API_KEY); it starts from a clean environment plus these.",
    )
    api_key_env: str | None = Field(
        None,
        description="A variable of the runner's environment passed on to the job's process "
        "(its name and value), e.g. ANTHROPIC_API_KEY.",
    )
    network: bool = Field(
        True, description="The job reaches the network (false: only a loopback of its own)."
    )


class AgentSettings(LocalSettings):
    """A headless agent CLI that prints JSON lines (claude-code, codex)."""

    command: list[str] | None = Field(
        None,
        description="The CLI to run (default: the kind's, e.g. `claude`, on PATH): an argv "
        "list, or a string split into words like a shell would (never run by a shell).",
    )
    model: str | None = Field(None, description="Model passed to the CLI (a job's model wins).")
    extra_args: list[str] = Field(
        default_factory=list, description="More CLI arguments, appended as given."
    )
    startup_timeout: float = Field(
        60.0, gt=0, description="Seconds the agent may take to print its first line."
    )
    stall_timeout: float = Field(
        600.0, gt=0, description="Seconds without any output after which the agent is killed."
    )
    result_grace: float = Field(
        5.0, ge=0, description="Seconds the agent may linger after its final result line."
    )
    mcp_servers: list[str] = Field(
        default_factory=list,
        description="Upstream MCP servers ([mcp.servers.NAME]) its jobs reach through their "
        "gateway.",
    )
    mcp_tools: list[str] = Field(
        default_factory=lambda: ["corral.*"],
        description="The gateway tools its jobs may call: SERVER.TOOL, SERVER.* or * (corral's "
        "own are corral.*); a job may narrow them (its mcp_tools), never widen. [] turns the "
        "gateway off.",
    )

    @field_validator("mcp_tools")
    @classmethod
    def _rules(cls, value: list[str]) -> list[str]:
        from corral.models import TOOL_RULE

        for rule in value:
            if not re.match(TOOL_RULE, rule):
                raise ValueError(f"mcp_tools rule {rule!r}: write SERVER.TOOL, SERVER.* or *")
        return value

    @field_validator("command", mode="before")
    @classmethod
    def _split_command(cls, value: object) -> object:
        return split_command(value)


# Seconds a token_command may take; then it is killed and the run fails.
TOKEN_COMMAND_TIMEOUT = 30.0


class RemoteSettings(ProviderSettings):
    """A kind whose jobs run on another server, reached through its API: the
    runner only drives them."""

    runner: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="The name of the runner that serves it (`corral runner --name`); default "
        "(or `embedded`): the runner inside `corral serve`.",
    )
    base_url: str | None = Field(None, description="The server's API base URL.")
    api_key: SecretStr | None = Field(None, description="The API key (prefer api_key_env).")
    api_key_env: str | None = Field(None, description="Environment variable holding the key.")
    token_file: Path | None = Field(
        None, description="File holding the key (re-read for every use)."
    )
    token_command: list[str] | None = Field(
        None,
        description="Command printing the key (run for every use, killed after "
        f"{TOKEN_COMMAND_TIMEOUT:g} s): an argv list, or a string split into words like a "
        "shell would (never run by a shell).",
    )
    model: str | None = Field(None, description="Model of a job that names none.")
    timeout: float = Field(600.0, gt=0, description="Seconds a remote request may take.")
    max_retries: int = Field(
        2,
        ge=0,
        le=20,
        description="Retries of connection errors, 5xx and 429 (honouring Retry-After) "
        "before a run fails.",
    )

    @field_validator("token_command", mode="before")
    @classmethod
    def _split_command(cls, value: object) -> object:
        return split_command(value)

    async def credential(self) -> str | None:
        """The API key, read afresh (token files and commands may rotate), and
        remembered as a secret to redact from what is stored and logged
        (``corral.redact``). Neither blocks the event loop: the token file is
        read in a thread (a mounted secret may sit on a slow file system), the
        token command runs as the loop's subprocess and is killed, with what it
        started, after ``TOKEN_COMMAND_TIMEOUT``."""
        key = await self._read_credential()
        redact.add(key)
        return key

    async def _read_credential(self) -> str | None:
        return await read_token(self.api_key, self.api_key_env, self.token_file, self.token_command)


async def read_token(
    value: SecretStr | None,
    env: str | None,
    token_file: Path | None,
    token_command: list[str] | None,
) -> str | None:
    """A credential from the first of: a value, an environment variable, a
    file (read in a thread), a command (run as a subprocess of the loop)."""
    if value is not None:
        return value.get_secret_value()
    if env:
        found = os.environ.get(env)
        if not found:
            raise ConfigError(f"environment variable {env} is not set")
        return found
    import asyncio  # here: the configuration imports this module, asyncio costs ~20 ms

    if token_file is not None:
        path = token_file.expanduser()  # noqa: ASYNC240 - no I/O: it reads HOME
        try:
            return (await asyncio.to_thread(path.read_text)).strip()
        except OSError as exc:
            raise ConfigError(f"cannot read token_file {token_file}: {exc}") from exc
    if token_command:
        return await _run_token_command(token_command)
    return None


async def _run_token_command(argv: list[str]) -> str:
    import asyncio

    from corral.executors.process import stop_tree

    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # a group of its own: stopped whole on timeout
        )
    except OSError as exc:
        raise ConfigError(f"token_command failed: cannot run {argv[0]!r}: {exc}") from exc
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TOKEN_COMMAND_TIMEOUT)
    except TimeoutError:
        await stop_tree(proc, grace=0)
        raise ConfigError(
            f"token_command timed out after {TOKEN_COMMAND_TIMEOUT:g}s (killed)"
        ) from None
    except asyncio.CancelledError:
        await stop_tree(proc, grace=0)
        raise
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise ConfigError(
            f"token_command failed: exit code {proc.returncode}"
            + (f": {detail[0][:200]}" if detail[0] else "")
        )
    return out.decode(errors="replace").strip()
