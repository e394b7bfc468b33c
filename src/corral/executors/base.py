"""The executor seam: ``run(ctx) -> Outcome`` and ``cancel()``.

Executors register under the entry point group ``corral.executors`` by their
``kind``; built-ins register the same way a third-party package would."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import ClassVar, Protocol

from corral.config import ProviderSettings
from corral.errors import ConfigError
from corral.models import Job, Outcome, Session


class Emit(Protocol):
    """Record an event for the running job (sent to the server in batches)."""

    def __call__(
        self,
        type: str,
        payload: Mapping[str, object],
        *,
        ephemeral: bool = False,
        internal: bool = False,
    ) -> None: ...


@dataclass
class Context:
    job: Job
    session: Session
    workdir: Path
    emit: Emit
    # Called once the work runs: with the pid of a local process (recorded so
    # a restarted runner can reap it), or None for remote work.
    started: Callable[[int | None], None]
    kill_grace: float = 5.0
    provider: str = "shell"
    settings: ProviderSettings = field(default_factory=lambda: ProviderSettings(kind="shell"))
    # The executor's conversation handle from the session's previous turn
    # (e.g. Claude Code's session id for --resume), and how to record a new one.
    handle: str | None = None
    save_handle: Callable[[str], None] = lambda handle: None
    # A directory of the runner's own for this provider (config, caches).
    state_dir: Path | None = None
    # A marker in the agent's environment that every descendant inherits:
    # lets the runner find and stop processes that left the process tree.
    run_marker: str | None = None


class Executor(Protocol):
    kind: ClassVar[str]

    async def run(self, ctx: Context) -> Outcome: ...

    async def cancel(self) -> None: ...


GROUP = "corral.executors"


@functools.cache
def load(kind: str) -> type[Executor]:
    """The executor class registered for ``kind`` (looked up once: scanning the
    installed distributions' entry points costs ~2 ms)."""
    found = entry_points(group=GROUP, name=kind)
    for ep in found:
        cls: type[Executor] = ep.load()
        return cls
    known = ", ".join(sorted(ep.name for ep in entry_points(group=GROUP))) or "none"
    raise ConfigError(f"no executor of kind {kind!r} is installed (installed: {known})")


def kinds() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=GROUP))
