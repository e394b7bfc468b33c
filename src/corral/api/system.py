"""Health, status and the watchdog's figures."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from corral import __version__
from corral.api.deps import Reader, Svc, principal
from corral.auth import Principal
from corral.jobs import JobState
from corral.models import Identity, Status

router = APIRouter(tags=["system"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness; needs no credential."""
    return {"status": "ok", "version": __version__}


@router.get("/whoami", response_model=Identity)
async def whoami(who: Annotated[Principal, Depends(principal)]) -> Identity:
    """The key making the request: its id, name and role (any key)."""
    return Identity(key_id=who.key_id, name=who.name, role=who.role.value)


@router.get("/status", response_model=Status)
async def status(svc: Svc, who: Reader) -> dict[str, Any]:
    """Kill switch, quota pauses, job counts, runners (with their sandbox) and what this
    server's embedded runner serves."""
    runners = await svc.store.runners.list()
    return {
        "version": __version__,
        "database": svc.store.db.dialect,
        "paused": await svc.store.settings.get("paused") == "true",
        "providers_paused": [p.model_dump(mode="json") for p in await svc.store.jobs.pauses()],
        "jobs": await svc.store.jobs.counts(),
        "runners": [r.model_dump(mode="json") for r in runners],
        # What this replica's embedded runner serves ([] without one).
        "embedded_providers": (
            svc.settings.embedded_providers() if svc.settings.runner.embedded else []
        ),
    }


def _remote_providers(svc: Svc) -> list[str]:
    return [n for n, p in svc.settings.providers.items() if not p.is_local]


@router.get("/api/delegated/status")
async def delegated_status(svc: Svc, who: Reader) -> dict[str, Any]:
    """Jobs on remote providers in flight (provider, remote id, since, last
    poll) and counters (submitted, done, failed, cancelled, retried, resumed)."""
    return await svc.store.jobs.delegated(_remote_providers(svc), svc.settings.lease_ttl)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(svc: Svc, who: Reader) -> PlainTextResponse:
    """Prometheus text format, read from the database at each scrape (so every
    replica reports the same fleet-wide figures)."""
    registry = CollectorRegistry()
    jobs = Gauge("corral_jobs", "Jobs by state.", ["state"], registry=registry)
    counts = await svc.store.jobs.counts()
    for job_state in JobState:
        jobs.labels(job_state.value).set(counts.get(job_state.value, 0))
    runners = Gauge("corral_runners", "Active runners.", registry=registry)
    runners.set(len(await svc.store.runners.list()))
    paused = Gauge(
        "corral_provider_paused",
        "1 while a quota pauses the provider.",
        ["provider"],
        registry=registry,
    )
    for p in await svc.store.jobs.pauses():
        paused.labels(p.provider).set(1)
    delegated = await svc.store.jobs.delegated(_remote_providers(svc), svc.settings.lease_ttl)
    counters = Gauge(
        "corral_delegated_jobs",
        "Jobs on remote providers, by outcome.",
        ["outcome"],
        registry=registry,
    )
    for name, n in delegated["counters"].items():
        counters.labels(name).set(n)
    Gauge("corral_delegated_in_flight", "Delegated jobs running now.", registry=registry).set(
        len(delegated["in_flight"])
    )
    hooks = Gauge(
        "corral_webhook_deliveries", "Webhook deliveries by state.", ["state"], registry=registry
    )
    for delivery_state, n in (await svc.store.outbox.counts()).items():
        hooks.labels(delivery_state).set(n)
    w = svc.watchdog
    Gauge(
        "corral_watchdog_expired", "Leases this replica's watchdog expired.", registry=registry
    ).set(w.expired)
    Gauge(
        "corral_watchdog_recovered",
        "Jobs this replica ended with the outcome from a registering runner's journal.",
        registry=registry,
    ).set(w.recovered)
    Gauge("corral_paused", "1 while the kill switch is on.", registry=registry).set(
        1 if await svc.store.settings.get("paused") == "true" else 0
    )
    return PlainTextResponse(generate_latest(registry).decode(), media_type=CONTENT_TYPE_LATEST)


@router.get("/watchdog/status")
async def watchdog_status(svc: Svc, who: Reader) -> dict[str, Any]:
    """Watchdog sweeps, expired leases, last error, delegated-job counters."""
    w = svc.watchdog
    delegated = await svc.store.jobs.delegated(_remote_providers(svc), svc.settings.lease_ttl)
    return {
        "delegated": delegated["counters"],
        "interval": svc.settings.watchdog_interval,
        "lease_ttl": svc.settings.lease_ttl,
        "sweeps": w.sweeps,
        "expired": w.expired,
        "recovered": w.recovered,
        "last_sweep_at": w.last_sweep_at,
        "last_error": w.last_error,
        "grace_until": w.grace_until,
    }
