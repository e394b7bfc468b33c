"""The runner's side of the per-job MCP gateway (corral/gateway/): when a job
gets one, and the worker link its corral tools call.

An agent job (claude-code, codex) gets a gateway unless its provider's
``mcp_tools`` is empty. With ``network = false`` the job's sandbox has a
loopback of its own (``bwrap --unshare-net``), where the gateway on the
runner's 127.0.0.1 cannot be reached: such a job runs without one, and a
``gateway.unavailable`` event says why."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from corral import sdk_import
from corral.executors.base import Emit
from corral.executors.settings import AgentSettings, ProviderSettings
from corral.gateway.settings import McpServerSettings
from corral.models import Job, Question
from corral.protocol import (
    ChatSend,
    ChatSent,
    ChildJob,
    ChildSubmit,
    ChildWait,
    Progress,
    ProgressRecorded,
)
from corral.runner.link import LinkError, Refused, WorkerLink

if TYPE_CHECKING:
    from corral.gateway.server import Gateway

T = TypeVar("T")
# WorkerChannel.ask: the question as it ended (None: the job was lost meanwhile).
Ask = Callable[[str, list[str], float | None], Awaitable[Question | None]]

# The refusals that mean the worker lost its job (fenced off, or the job ended).
FENCED = ("stale_epoch", "job_not_active")


def wanted(settings: ProviderSettings, emit: Emit, *, sandboxed: bool) -> bool:
    """Whether a job of this provider gets a gateway (saying why not when the
    network setting rules it out)."""
    if not isinstance(settings, AgentSettings) or not settings.mcp_tools:
        return False
    if not settings.network and sandboxed:
        emit(
            "gateway.unavailable",
            {
                "reason": "the provider has network = false: the job's sandbox has a loopback "
                "of its own, where the runner's MCP gateway cannot be reached"
            },
        )
        return False
    return True


async def start(
    job: Job,
    settings: AgentSettings,
    *,
    link: WorkerLink,
    emit: Emit,
    servers: Mapping[str, McpServerSettings],
    run_marker: str | None,
    log_dir: Path,
    hold: Callable[[], AbstractContextManager[None]] | None = None,
    ask: Ask | None = None,
) -> Gateway:
    """Start the job's gateway (imported here, in a thread, the first time:
    it loads the MCP SDK and uvicorn; ``sdk_import`` on why one at a time)."""
    await asyncio.to_thread(sdk_import.load, "corral.gateway.server")
    from corral.gateway.policy import Policy
    from corral.gateway.server import Gateway

    gateway = Gateway(
        job_id=job.id,
        policy=Policy.of(job.provider, settings.mcp_tools, job.mcp_tools),
        control=Control(link, ask),
        emit=emit,
        servers={name: servers[name] for name in settings.mcp_servers if name in servers},
        job_mcp_tools=job.mcp_tools,
        run_marker=run_marker,
        log_dir=log_dir,
        hold=hold,
        approve=getattr(settings, "permission_prompt", None) == "human",
    )
    await gateway.start()
    return gateway


class Control:
    """The gateway's corral tools over the job's worker link: refusals become
    tool errors the agent can read (``builtin.ToolError``)."""

    def __init__(self, link: WorkerLink, ask: Ask | None = None) -> None:
        self.link = link
        self._ask = ask

    async def submit_child(self, body: ChildSubmit) -> ChildJob:
        return await self._call(lambda: self.link.submit_child(body))

    async def wait_child(self, job_id: str, body: ChildWait) -> ChildJob:
        return await self._call(lambda: self.link.wait_child(job_id, body))

    async def cancel_child(self, job_id: str) -> ChildJob:
        return await self._call(lambda: self.link.cancel_child(job_id))

    async def progress(self, body: Progress) -> ProgressRecorded:
        return await self._call(lambda: self.link.progress(body))

    async def send_message(self, body: ChatSend) -> ChatSent:
        return await self._call(lambda: self.link.send_message(body))

    async def ask(self, question: str, options: list[str], timeout: float | None) -> Question:
        """Through the job's channel (``WorkerChannel.ask``: retried while the
        server is away, the stall guards paused); None from it: fenced."""
        from corral.gateway.builtin import ToolError

        if self._ask is None:
            raise ToolError("this runner cannot ask a person")
        try:
            asked = await self._ask(question, options, timeout)
        except ValueError as exc:
            raise ToolError(f"invalid question: {exc}") from exc
        if asked is None:
            raise ToolError(
                "refused: this job no longer holds its lease; nothing was asked, stop working on it"
            )
        return asked

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        from corral.gateway.builtin import ToolError

        try:
            return await call()
        except Refused as exc:
            if exc.code in FENCED or exc.status == 401:
                raise ToolError(
                    f"refused: this job no longer holds its lease ({exc.code}: {exc}); "
                    "nothing was changed, stop working on it"
                ) from exc
            raise ToolError(f"corral refused the call ({exc.status} {exc.code}): {exc}") from exc
        except LinkError as exc:
            raise ToolError(f"corral could not be reached: {exc}") from exc
