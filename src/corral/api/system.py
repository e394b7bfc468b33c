"""Health, status and the watchdog's figures."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Gauge,
    generate_latest,
)

from corral import __version__
from corral import metrics as _counters  # noqa: F401 - registers the counters
from corral.api.deps import Reader, Svc, principal
from corral.auth import Principal
from corral.jobs import ACTIVE, JobState
from corral.models import Identity, Status
from corral.store import migrate

log = logging.getLogger(__name__)
router = APIRouter(tags=["system"])
ACTIVE_VALUES = {s.value for s in ACTIVE}


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness; needs no credential."""
    return {"status": "ok", "version": __version__}


# How long /ready waits for the database before it calls it gone.
READY_TIMEOUT = 2.0


@functools.cache
def _head() -> str:
    return migrate.heads()[0]


def _state(task: asyncio.Task[Any]) -> str:
    if not task.done():
        return "running"
    if task.cancelled():
        return "stopped"
    exc = task.exception()
    return f"crashed ({type(exc).__name__})" if exc else "stopped"


@router.get(
    "/ready",
    responses={503: {"description": "Not ready: `error.message` says why; `checks` has each."}},
)
async def ready(svc: Svc) -> JSONResponse:
    """Readiness (needs no credential): the database answers, its migrations
    are at this server's head, and this replica's loops run (the watchdog has
    swept lately; the webhook sender and intake loops run, or stand by while
    another replica leads them). 200, or 503 with the reasons."""
    reasons: list[str] = []
    checks: dict[str, Any] = {}
    try:
        current = await asyncio.wait_for(migrate.current(svc.store.db), READY_TIMEOUT)
    except Exception as exc:  # whatever the driver says: the database is not usable
        log.warning("/ready: the database does not answer: %s", exc)
        checks["database"] = "unreachable"
        reasons.append("the database does not answer")
    else:
        checks["database"] = "ok"
        checks["migration"] = current
        if current != _head():
            reasons.append(f"the database is at migration {current}, this server needs {_head()}")
    live = svc.liveness
    loops: dict[str, str] = {}
    for name, task in live.tasks.items():
        state = _state(task)
        if state == "running" and name in live.leading:
            state = "leading" if live.leading[name] else "standby"
        loops[name] = state
        if not task.done():
            continue
        reasons.append(f"loop {name} {state}")
    checks["loops"] = loops
    w, interval = svc.watchdog, svc.settings.watchdog_interval
    # In its start-up grace (one lease_ttl) the watchdog sweeps nothing on purpose.
    late = time.time() - max(w.last_sweep_at or 0.0, w.grace_until or 0.0)
    if late > max(10 * interval, 15.0):
        reasons.append(
            f"the watchdog has not swept for {late:.0f} s ({w.last_error or 'no error'})"
        )
    if svc.stopping:
        reasons.append("this replica is stopping")
    body: dict[str, Any] = {"status": "ready" if not reasons else "not_ready", "checks": checks}
    if reasons:
        body["error"] = {"code": "not_ready", "message": "; ".join(reasons)}
    return JSONResponse(body, status_code=503 if reasons else 200)


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
    """Prometheus text format: this replica's counters and histograms (jobs by
    state entered, cost, tokens, webhook deliveries, tool calls, queue wait,
    start and run times) and process metrics, then fleet-wide gauges read from
    the store's counts (the same on every replica; no table is scanned)."""
    registry = CollectorRegistry()
    by_key = await svc.store.jobs.counts_by_provider()
    # Not ``corral_jobs``: that family is the counter (corral_jobs_total).
    jobs = Gauge("corral_jobs_current", "Jobs by state, now.", ["state"], registry=registry)
    per_provider = Gauge(
        "corral_provider_jobs_current",
        "Jobs by provider and state, now.",
        ["provider", "state"],
        registry=registry,
    )
    totals = dict.fromkeys((s.value for s in JobState), 0)
    for (job_state, provider), n in by_key.items():
        totals[job_state] = totals.get(job_state, 0) + n
        per_provider.labels(provider, job_state).set(n)
    for job_state, n in totals.items():
        jobs.labels(job_state).set(n)
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
    remote = _remote_providers(svc)
    counters = Gauge(
        "corral_delegated_jobs",
        "Jobs on remote providers, by state.",
        ["outcome"],
        registry=registry,
    )
    delegated = dict.fromkeys(("submitted", "done", "failed", "cancelled"), 0)
    in_flight = 0
    for (job_state, provider), n in by_key.items():
        if provider in remote:
            delegated["submitted"] += n
            if job_state in delegated:
                delegated[job_state] += n
            elif job_state in ACTIVE_VALUES:
                in_flight += n
    for name, n in delegated.items():
        counters.labels(name).set(n)
    Gauge("corral_delegated_in_flight", "Delegated jobs running now.", registry=registry).set(
        in_flight
    )
    Gauge(
        "corral_webhook_deliveries_pending",
        "Webhook deliveries waiting to be sent.",
        registry=registry,
    ).set(await svc.store.outbox.pending())
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
    body = generate_latest(REGISTRY) + generate_latest(registry)
    return PlainTextResponse(body.decode(), media_type=CONTENT_TYPE_LATEST)


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
