"""``[mcp.servers.NAME]``: the upstream MCP servers a provider's jobs may use
through their gateway (``mcp_servers = [...]`` on the provider)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from corral.errors import ConfigError
from corral.executors.settings import split_command

# A server's name: the first part of its tools' names (SERVER.TOOL in rules).
SERVER_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
# corral's own tools are the server ``corral``.
BUILTIN = "corral"


class McpServerSettings(BaseModel):
    """An upstream MCP server: streamable HTTP at ``url``, or a ``command``
    the runner starts (stdio) for each job that uses it, stopped with its
    process tree when the job ends."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        None, pattern=r"^https?://", description="Streamable HTTP endpoint (http:// or https://)."
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="HTTP headers sent to `url` (values are secrets)."
    )
    bearer: SecretStr | None = Field(
        None, description="Bearer token for `url` (prefer bearer_env, bearer_file)."
    )
    bearer_env: str | None = Field(
        None, description="Environment variable of the runner holding the bearer token."
    )
    bearer_file: Path | None = Field(
        None, description="File holding the bearer token (read when a job starts)."
    )
    bearer_command: list[str] | None = Field(
        None,
        description="Command printing the bearer token (run when a job starts): an argv "
        "list, or a string split into words like a shell would (never run by a shell).",
    )
    command: list[str] | None = Field(
        None,
        description="stdio server: the program and its arguments (an argv list, or a string "
        "split into words like a shell would; never run by a shell).",
    )
    args: list[str] = Field(default_factory=list, description="More arguments of `command`.")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="stdio server: its environment besides PATH, HOME and the locale.",
    )
    timeout: float = Field(
        120.0, gt=0, le=86400, description="Seconds one call to it may take (then it fails)."
    )

    @field_validator("command", "bearer_command", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return split_command(value)

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerSettings:
        if (self.url is None) == (self.command is None):
            raise ValueError("give either url (streamable HTTP) or command (stdio), not both")
        if self.command is not None and not self.command:
            raise ValueError("command must not be empty")
        sources = [self.bearer, self.bearer_env, self.bearer_file, self.bearer_command]
        if sum(s is not None for s in sources) > 1:
            raise ValueError("give at most one of bearer, bearer_env, bearer_file, bearer_command")
        if self.command is not None and any(s is not None for s in sources):
            raise ValueError("bearer tokens are for url servers; give a stdio server env instead")
        return self

    def token(self) -> str | None:
        """The bearer token, read afresh (a file or command may rotate it);
        blocking: call it in a thread."""
        if self.bearer is not None:
            return self.bearer.get_secret_value()
        if self.bearer_env is not None:
            value = os.environ.get(self.bearer_env)
            if not value:
                raise ConfigError(f"environment variable {self.bearer_env} is not set")
            return value
        if self.bearer_file is not None:
            try:
                return self.bearer_file.expanduser().read_text().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read bearer_file {self.bearer_file}: {exc}") from exc
        if self.bearer_command is not None:
            import subprocess

            try:
                done = subprocess.run(
                    self.bearer_command,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=30,
                    check=False,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise ConfigError(f"bearer_command failed: {exc}") from exc
            if done.returncode != 0:
                raise ConfigError(f"bearer_command failed: exit code {done.returncode}")
            return done.stdout.decode(errors="replace").strip()
        return None

    def secrets(self) -> list[str]:
        """Values to redact wherever they would show (headers, env, the token)."""
        found = list(self.headers.values()) + list(self.env.values())
        if self.bearer is not None:
            found.append(self.bearer.get_secret_value())
        return found


class McpSettings(BaseModel):
    """``[mcp]``: the MCP servers the gateway may proxy."""

    model_config = ConfigDict(extra="forbid")

    servers: dict[str, McpServerSettings] = Field(
        default_factory=dict,
        description="Upstream MCP servers by name ([mcp.servers.NAME]); a provider lists "
        "the ones its jobs get in mcp_servers.",
    )

    @field_validator("servers")
    @classmethod
    def _names(cls, value: dict[str, McpServerSettings]) -> dict[str, McpServerSettings]:
        import re

        for name in value:
            if name == BUILTIN:
                raise ValueError(f"{BUILTIN!r} names corral's own tools; pick another name")
            if not re.match(SERVER_NAME, name):
                raise ValueError(
                    f"MCP server name {name!r}: letters, digits, '_' and '-' (up to 64)"
                )
        return value
