"""Health, status and the watchdog's figures."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from corral import __version__
from corral.api.deps import Reader, Svc

router = APIRouter(tags=["system"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness; needs no credential."""
    return {"status": "ok", "version": __version__}


@router.get("/status")
async def status(svc: Svc, who: Reader) -> dict[str, Any]:
    runners = await svc.store.runners.list()
    return {
        "version": __version__,
        "database": svc.store.db.dialect,
        "paused": await svc.store.settings.get("paused") == "true",
        "providers_paused": [p.model_dump(mode="json") for p in await svc.store.jobs.pauses()],
        "jobs": await svc.store.jobs.counts(),
        "runners": [r.model_dump(mode="json") for r in runners],
    }


def _remote_providers(svc: Svc) -> list[str]:
    return [n for n, p in svc.settings.providers.items() if not p.is_local]


@router.get("/api/delegated/status")
async def delegated_status(svc: Svc, who: Reader) -> dict[str, Any]:
    """Jobs on remote providers in flight (provider, remote id, since, last
    poll) and counters (submitted, done, failed, cancelled, retried, resumed)."""
    return await svc.store.jobs.delegated(_remote_providers(svc), svc.settings.lease_ttl)


@router.get("/watchdog/status")
async def watchdog_status(svc: Svc, who: Reader) -> dict[str, Any]:
    w = svc.watchdog
    delegated = await svc.store.jobs.delegated(_remote_providers(svc), svc.settings.lease_ttl)
    return {
        "delegated": delegated["counters"],
        "interval": svc.settings.watchdog_interval,
        "lease_ttl": svc.settings.lease_ttl,
        "sweeps": w.sweeps,
        "expired": w.expired,
        "last_sweep_at": w.last_sweep_at,
        "last_error": w.last_error,
    }
