"""``create_app(settings) -> FastAPI``: nothing is built at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from corral import __version__
from corral.api import (
    admin,
    agents,
    errors,
    jobs,
    ollama,
    runners,
    sessions,
    system,
    webhooks,
)
from corral.api.delivery import Sender
from corral.api.deps import Services
from corral.api.limits import BodyLimit
from corral.config import Settings, load_settings
from corral.errors import CorralError
from corral.store import Caps, RetryPolicy, Store
from corral.store.keys import new_secret
from corral.store.leader import run_as_leader
from corral.webhooks import Endpoint, Rules

log = logging.getLogger(__name__)


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        default_max_attempts=settings.default_max_attempts,
        backoff_base=settings.retry_backoff_base,
        backoff_max=settings.retry_backoff_max,
        max_infra_retries=settings.max_infra_retries,
        quota_backoff=settings.quota_backoff,
        fallbacks={n: p.fallback for n, p in settings.providers.items() if p.fallback},
    )


def caps(settings: Settings) -> Caps:
    return Caps(
        providers={n: p.concurrency for n, p in settings.providers.items() if p.concurrency},
        total=settings.max_running,
        repo=settings.repo_concurrency,
        local=frozenset(n for n, p in settings.provider_table().items() if p.local),
    )


def webhook_rules(settings: Settings) -> Rules:
    return Rules(
        endpoints=tuple(
            Endpoint(
                url=h.url,
                secret=h.secret.get_secret_value() if h.secret else None,
                states=frozenset(h.states),
                events=frozenset(h.events),
            )
            for h in settings.webhooks
        )
    )


async def open_store(settings: Settings) -> Store:
    store = await Store.open(
        settings.effective_database_url, policy=retry_policy(settings), caps=caps(settings)
    )
    store.db.webhooks = webhook_rules(settings)
    return store


async def _watchdog(svc: Services) -> None:
    while True:
        await asyncio.sleep(svc.settings.watchdog_interval)
        try:
            lost = await svc.store.jobs.expire()
            svc.watchdog.last_error = None
        except CorralError as exc:
            svc.watchdog.last_error = exc.message
            log.warning("watchdog sweep failed: %s", exc.message)
            continue
        svc.watchdog.sweeps += 1
        svc.watchdog.last_sweep_at = time.time()
        svc.watchdog.expired += len(lost)
        for job in lost:
            log.warning(
                "job %s lost its runner; now %s",
                job.id,
                job.state.value,
                extra={"job_id": job.id, "session_id": job.session_id},
            )


def create_app(settings: Settings, *, store: Store | None = None) -> FastAPI:
    """The corral HTTP app. With ``store`` given the caller owns it; otherwise
    the app opens (and migrates) the configured database at startup."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        st = store or await open_store(settings)
        secret = (
            settings.jwt_secret.get_secret_value()
            if settings.jwt_secret is not None
            else await st.settings.get_or_create("jwt_secret", new_secret)
        )
        hook_secret = (
            settings.webhook_secret.get_secret_value()
            if settings.webhook_secret is not None
            else await st.settings.get_or_create("webhook_secret", new_secret)
        )
        st.db.webhooks = webhook_rules(settings)
        svc = Services(
            settings=settings,
            store=st,
            jwt_secret=secret,
            webhook_secret=hook_secret,
            providers=settings.provider_table(),
        )
        if await st.settings.get("paused") is None:  # the config's default, once
            await st.settings.set("paused", "true" if settings.paused else "false")
        app.state.services = svc
        sender = Sender(
            st,
            default_secret=hook_secret,
            timeout=settings.webhook_timeout,
            horizon=settings.webhook_retry_horizon,
            concurrency=settings.webhook_concurrency,
        )
        # The [agents.*] tables, for the runners that host them (every
        # replica writes the same: it is idempotent).
        await st.agents.configure(dict(settings.agents))
        tasks = [
            asyncio.create_task(_watchdog(svc), name="corral-watchdog"),
            asyncio.create_task(run_as_leader(st, "webhooks", sender.run), name="corral-webhooks"),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if store is None:
                await st.close()

    app = FastAPI(
        title="corral",
        version=__version__,
        lifespan=lifespan,
        description="Control plane for fleets of AI coding agents.",
    )
    errors.install(app)
    for module in (system, jobs, sessions, runners, admin, webhooks, ollama, agents):
        app.include_router(module.router)
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_body_bytes,
        larger={"/worker/artifacts/": settings.max_artifact_bytes},
    )
    return app


def factory() -> FastAPI:
    """For ``uvicorn --factory corral.api.app:factory`` (settings from env/toml)."""
    return create_app(load_settings())
