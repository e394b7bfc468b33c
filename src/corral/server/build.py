"""The parts a running control plane is made of, built from the settings:
the store (with its policies), the services routes and intake share, and the
local keys of a server on this machine."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from pathlib import Path

from corral import redact
from corral.auth import Role
from corral.config import Settings
from corral.pricing import price_ref
from corral.services import Services
from corral.store import Caps, RetryPolicy, Store
from corral.store.keys import new_secret
from corral.webhooks import Endpoint, Rules


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        default_max_attempts=settings.default_max_attempts,
        backoff_base=settings.retry_backoff_base,
        backoff_max=settings.retry_backoff_max,
        max_infra_retries=settings.max_infra_retries,
        quota_backoff=settings.quota_backoff,
        fallbacks={n: p.fallback for n, p in settings.providers.items() if p.fallback},
        max_subjob_depth=settings.max_subjob_depth,
        prices={n: price_ref(p) for n, p in settings.providers.items()},
    )


def caps(settings: Settings) -> Caps:
    return Caps(
        providers={n: p.concurrency for n, p in settings.providers.items() if p.concurrency},
        total=settings.max_running,
        repo=settings.repo_concurrency,
        local=frozenset(n for n, p in settings.provider_table().items() if p.local),
        budgets=tuple(b.budget() for b in settings.budgets),
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
    """The configured database, migrated, with the settings' policies."""
    store = await Store.open(
        settings.effective_database_url,
        policy=retry_policy(settings),
        caps=caps(settings),
        connections=settings.database_connections,
    )
    store.db.webhooks = webhook_rules(settings)
    return store


async def services(settings: Settings, store: Store) -> Services:
    """The services over ``store``: the secrets (configured, else made once
    and kept in the database, so every replica shares them), the kill
    switch's default and the ``[agents.*]`` tables."""
    secret = (
        settings.jwt_secret.get_secret_value()
        if settings.jwt_secret is not None
        else await store.settings.get_or_create("jwt_secret", new_secret)
    )
    hook_secret = (
        settings.webhook_secret.get_secret_value()
        if settings.webhook_secret is not None
        else await store.settings.get_or_create("webhook_secret", new_secret)
    )
    store.db.webhooks = webhook_rules(settings)
    # Every secret this server knows is redacted from what it stores and logs.
    redact.add(*await asyncio.to_thread(settings.secrets), secret, hook_secret)
    if await store.settings.get("paused") is None:  # the config's default, once
        await store.settings.set("paused", "true" if settings.paused else "false")
    # For the runners that host them (every replica writes the same: it is idempotent).
    await store.agents.configure(dict(settings.agents))
    return Services(
        settings=settings,
        store=store,
        jwt_secret=secret,
        webhook_secret=hook_secret,
        providers=settings.provider_table(),
    )


def embedded_runner_name(settings: Settings) -> str:
    """Stable for one replica (a restart releases its old jobs at once), distinct
    between replicas sharing a database (so they never release each other's)."""
    where = hashlib.sha256(str(settings.data_dir.resolve()).encode()).hexdigest()[:8]
    return f"embedded-{socket.gethostname()}-{where}"


async def local_key(store: Store, path: Path, *, name: str, role: Role) -> str:
    """The key in ``path`` (created with mode 0600 if absent), stored in the database."""
    if path.exists():  # noqa: ASYNC240 - once, at start
        key = path.read_text().strip()  # noqa: ASYNC240
        await store.keys.ensure(key, name=name, role=role)
        return key
    _, key = await store.keys.create(name=name, role=role)
    _write_secret(path, key)
    return key


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
