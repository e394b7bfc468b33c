"""Health, status and the watchdog's figures."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Metric
from prometheus_client.core import GaugeMetricFamily

from corral import __version__
from corral.api.deps import Reader, Svc, principal
from corral.auth import Principal
from corral.jobs import ACTIVE, JobState
from corral.metrics import Families
from corral.metrics import text as exposition
from corral.models import Identity, Status
from corral.store import migrate
from corral.store.overview import Overview

log = logging.getLogger(__name__)
router = APIRouter(tags=["system"])
ACTIVE_VALUES = {s.value for s in ACTIVE}


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness; needs no credential."""
    return {"status": "ok", "version": __version__}


# How long /ready waits for the database before it calls it gone.
READY_TIMEOUT = 2.0


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
        if current != (head := migrate.head()):
            reasons.append(f"the database is at migration {current}, this server needs {head}")
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
    now = await svc.store.overview()
    return {
        "version": __version__,
        "database": svc.store.db.dialect,
        "paused": now.paused,
        "providers_paused": now.pauses,
        "jobs": now.by_state(),
        "runners": now.runners,
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
    now = await svc.store.overview(webhooks=True)
    body = exposition(REGISTRY, Families(_fleet(svc, now)))
    return PlainTextResponse(body.decode(), media_type=CONTENT_TYPE_LATEST)


def _gauge(name: str, doc: str, value: float | None = None, labels: Sequence[str] = ()) -> Any:
    return GaugeMetricFamily(name, doc, value=value, labels=labels or None)


def _fleet(svc: Svc, now: Overview) -> list[Metric]:
    # Not ``corral_jobs``: that family is the counter (corral_jobs_total).
    jobs = _gauge("corral_jobs_current", "Jobs by state, now.", labels=["state"])
    per_provider = _gauge(
        "corral_provider_jobs_current",
        "Jobs by provider and state, now.",
        labels=["provider", "state"],
    )
    totals = dict.fromkeys((s.value for s in JobState), 0)
    for (job_state, provider), n in now.counts.items():
        totals[job_state] = totals.get(job_state, 0) + n
        per_provider.add_metric([provider, job_state], n)
    for job_state, n in totals.items():
        jobs.add_metric([job_state], n)
    paused = _gauge(
        "corral_provider_paused", "1 while a quota pauses the provider.", labels=["provider"]
    )
    for p in now.pauses:
        paused.add_metric([p.provider], 1)
    remote = set(_remote_providers(svc))
    delegated = dict.fromkeys(("submitted", "done", "failed", "cancelled"), 0)
    in_flight = 0
    for (job_state, provider), n in now.counts.items():
        if provider in remote:
            delegated["submitted"] += n
            if job_state in delegated:
                delegated[job_state] += n
            elif job_state in ACTIVE_VALUES:
                in_flight += n
    counters = _gauge(
        "corral_delegated_jobs", "Jobs on remote providers, by state.", labels=["outcome"]
    )
    for name, n in delegated.items():
        counters.add_metric([name], n)
    w = svc.watchdog
    return [
        jobs,
        per_provider,
        _gauge("corral_runners", "Active runners.", len(now.runners)),
        paused,
        counters,
        _gauge("corral_delegated_in_flight", "Delegated jobs running now.", in_flight),
        _gauge(
            "corral_webhook_deliveries_pending",
            "Webhook deliveries waiting to be sent.",
            now.webhooks_pending or 0,
        ),
        _gauge("corral_watchdog_expired", "Leases this replica's watchdog expired.", w.expired),
        _gauge(
            "corral_watchdog_recovered",
            "Jobs this replica ended with the outcome from a registering runner's journal.",
            w.recovered,
        ),
        _gauge("corral_paused", "1 while the kill switch is on.", 1 if now.paused else 0),
    ]


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
