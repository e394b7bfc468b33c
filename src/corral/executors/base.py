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
    started: Callable[[int], None]  # called with the pid once the process runs
    kill_grace: float = 5.0
    settings: Mapping[str, object] = field(default_factory=dict)


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
