"""``corral.metrics.text`` writes the same bytes as prometheus_client's
``generate_latest``, which it replaces on ``GET /metrics`` for speed."""

from __future__ import annotations

import time

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    Summary,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

from corral import metrics
from corral.metrics import Families


def _frozen(*registries: object) -> Families:
    """One collection, so both writers see the same values (process metrics move)."""
    return Families([m for r in registries for m in r.collect()])  # type: ignore[attr-defined]


def test_the_same_bytes_as_generate_latest() -> None:
    reg = CollectorRegistry()
    c = Counter("c_things", "Help with a \\ backslash\nand a newline.", ["a", "b"], registry=reg)
    c.labels('quote " here', "back\\slash").inc(3)
    c.labels("new\nline", "ünïcödé").inc(0.1)
    g = Gauge("g_value", "A gauge.", registry=reg)
    g.set(float("nan"))
    Gauge("g_inf", "Inf.", ["k"], registry=reg).labels("x").set(float("-inf"))
    Gauge("g_big", "Big.", registry=reg).set(123456789012.0)
    Gauge("g_tiny", "Tiny.", registry=reg).set(1e-9)
    Gauge("g_empty", "No children.", ["k"], registry=reg)
    h = Histogram("h_seconds", "A histogram.", ["p"], registry=reg, buckets=(0.005, 1, 1e7))
    h.labels("shell").observe(0.2)
    h.labels("claude").observe(2e7)
    Summary("s_bytes", "A summary.", registry=reg).observe(7)
    Info("i_build", "An info.", registry=reg).info({"version": "1.2"})
    Enum("e_state", "An enum.", states=["a", "b"], registry=reg).state("b")
    stamped = GaugeMetricFamily("t_stamped", "With a timestamp.", labels=["k"])
    stamped.add_metric(["v"], 1.5, timestamp=time.time())
    odd = GaugeMetricFamily("odd_labels", "A label name outside the legacy set.", labels=["k.x"])
    odd.add_metric(["v"], 2)
    assert metrics._family(stamped) is None and metrics._family(odd) is None
    for _ in range(2):  # the second time from the cached prefixes
        families = _frozen(reg, Families([stamped, odd]), REGISTRY)
        assert metrics.text(families) == generate_latest(families)  # type: ignore[arg-type]


def test_corral_counters_after_jobs_ran() -> None:
    for provider in ("shell", "claude"):
        metrics.JOBS.labels(provider, "done").inc()
        metrics.RUN_TIME.labels(provider, "done").observe(1.5)
        metrics.TOKENS.labels(provider, "m", "input").inc(10)
    families = _frozen(REGISTRY)
    assert metrics.text(families) == generate_latest(families)  # type: ignore[arg-type]
    # Written by the fast path, not handed back to generate_latest.
    fast = {m.name for m in families.collect() if metrics._family(m) is not None}
    assert {"corral_jobs", "corral_job_run_seconds", "corral_tokens", "process_cpu_seconds"} <= fast
