"""corral: delegate a job to another corral through its jobs API.

The remote job is submitted with an idempotency key derived from this job's
id, so a submission repeated after a crash returns the same remote job
instead of making a second one; its id is recorded at once as the session's
handle (``{"job", "remote_job", "remote_session"}``). A runner that takes
the job over after a crash finds the handle and follows the existing remote
job: resumed, never re-submitted. A follow-up turn of the session becomes a
turn of the remote session. The remote job's events are relayed as
``remote.<type>`` events; its outcome (result, error, failure class, usage,
cost) becomes this job's. Cancelling here cancels there."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from corral.errors import ClientError, ConfigError
from corral.executors.base import Context, classify_http, failed
from corral.executors.settings import ProviderSettings, RemoteSettings
from corral.jobs import TERMINAL, JobState
from corral.models import Outcome
from corral.protocol.handles import RemoteHandle

if TYPE_CHECKING:
    from corral.client import AsyncClient

# Fields of this job passed on to the remote one.
PASSED_ON = ("prompt", "command", "title", "priority", "timeout", "labels", "model")
PASSED_ON_CHAT = ("messages", "tools", "options", "think")


class CorralSettings(RemoteSettings):
    """Delegates jobs to another corral through its jobs API (the key: one of
    its API keys, role operator); resumed, never submitted twice, after a crash."""

    base_url: str | None = Field(None, description="The other corral's URL.")
    remote_provider: str | None = Field(
        None, description="The provider to ask the other corral for (its routing decides else)."
    )


class CorralExecutor:
    kind: ClassVar[str] = "corral"
    settings: ClassVar[type[ProviderSettings]] = CorralSettings
    local: ClassVar[bool] = False

    def __init__(self) -> None:
        self._remote: tuple[AsyncClient, str] | None = None
        self._cancelled = False

    async def run(self, ctx: Context[CorralSettings]) -> Outcome:
        s = ctx.settings
        if not s.base_url:
            return failed("input", "no_base_url", f"provider {ctx.provider!r} needs base_url")
        try:
            key = await s.credential()
        except ConfigError as exc:
            return failed("input", "credential", exc.message)
        if not key:
            return failed("input", "credential", f"provider {ctx.provider!r} needs an api_key")
        # Imported by the run: reading a provider table imports this module.
        from corral.client import ApiError, AsyncClient

        handle = RemoteHandle.decode(ctx.handle)
        ctx.started(None)
        async with AsyncClient(s.base_url, key, timeout=s.timeout) as remote:
            try:
                if handle.job == ctx.job.id and handle.remote_job:
                    remote_id = handle.remote_job
                    ctx.emit("remote.resumed", {"remote_job": remote_id, "url": s.base_url})
                else:
                    remote_id = await self._submit(ctx, remote, handle.remote_session)
                self._remote = (remote, remote_id)
                if self._cancelled:
                    await remote.cancel(remote_id)
                return await self._follow(ctx, remote, remote_id)
            except ApiError as exc:
                return failed(
                    classify_http(exc.status), f"remote_{exc.code}", f"{s.base_url}: {exc.message}"
                )
            except ClientError as exc:
                return failed("infra", "remote_unreachable", exc.message)

    async def _submit(
        self, ctx: Context[CorralSettings], remote: AsyncClient, session: str | None
    ) -> str:
        job = ctx.job
        fields: dict[str, Any] = {
            name: getattr(job, name) for name in PASSED_ON if getattr(job, name) is not None
        }
        if job.messages is not None:
            fields.update(
                {n: getattr(job, n) for n in PASSED_ON_CHAT if getattr(job, n) is not None}
            )
        if ctx.settings.model and "model" not in fields:
            fields["model"] = ctx.settings.model
        if ctx.settings.models and not fields.get("model"):
            fields["model"] = ctx.settings.models[0]
        remote_provider = ctx.settings.remote_provider
        if remote_provider:
            fields["preferred_ai"] = remote_provider
        # Same key, same remote job: a submission repeated after a crash is not a second one.
        fields["idempotency_key"] = f"corral-delegate:{job.id}"
        fields["labels"] = [*fields.get("labels", []), f"delegated-from:{job.id}"][:32]
        prompt = fields.pop("prompt", None)
        if session:
            accepted = await remote.turn(session, prompt, **fields)
        else:
            accepted = await remote.submit(prompt, **fields)
        remote_id = accepted.job_id
        handle = RemoteHandle(job=job.id, remote_job=remote_id, remote_session=accepted.session_id)
        ctx.save_handle(handle.encode())
        ctx.emit(
            "remote.submitted",
            {
                "remote_job": remote_id,
                "remote_session": accepted.session_id,
                "url": ctx.settings.base_url,
                "created": accepted.created,
            },
        )
        return remote_id

    async def _follow(
        self, ctx: Context[CorralSettings], remote: AsyncClient, remote_id: str
    ) -> Outcome:
        timeout = ctx.job.timeout
        try:
            async with asyncio.timeout(timeout):
                while True:
                    async for event in remote.job_events(remote_id, timeout=60):
                        if event.type != "job.state" or event.job_id == remote_id:
                            ctx.emit(f"remote.{event.type}"[:64], {"payload": event.payload})
                    job = await remote.get(remote_id)
                    if job.state in TERMINAL:
                        break
        except TimeoutError:
            with contextlib.suppress(ClientError):
                await remote.cancel(remote_id)
            return failed("agent", "timeout", f"timed out after {timeout:g}s (remote cancelled)")
        if job.state is JobState.DONE:
            return Outcome(
                status="done",
                result=job.result,
                usage=job.usage,
                cost=job.cost,
                exit_code=job.exit_code,
                message=job.message,
            )
        if job.state is JobState.CANCELLED and self._cancelled:
            return failed("agent", "cancelled", "cancelled")
        return Outcome(
            status="failed",
            result=job.result,
            error=f"remote job {remote_id}: {job.error or job.state.value}",
            reason=job.reason or "remote_failed",
            failure=job.failure or ("infra" if job.state is JobState.CANCELLED else "agent"),
            exit_code=job.exit_code,
            usage=job.usage,
            cost=job.cost,
        )

    async def cancel(self) -> None:
        self._cancelled = True
        if self._remote is not None:
            remote, remote_id = self._remote
            with contextlib.suppress(ClientError):
                await remote.cancel(remote_id)
