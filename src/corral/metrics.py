"""Prometheus counters and histograms of what this process did, in
prometheus-client's default registry (with the process, platform and GC
collectors it ships). ``GET /metrics`` writes that registry, then gauges read
from the store's counts.

Counters count on the replica that did the work (Prometheus' usual model:
``sum()`` over the replicas gives the fleet; a restart starts them from zero
and ``rate()``/``increase()`` handle that). They are counted after the
transaction that made the change committed, so a rolled-back change counts
nothing. The gauges (``corral_jobs`` and the rest) are fleet-wide: every
replica reads them from the database."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from prometheus_client import Counter, Histogram, Metric, disable_created_metrics, generate_latest
from prometheus_client.utils import floatToGoString
from prometheus_client.validation import (
    _is_valid_legacy_labelname,
    _is_valid_legacy_metric_name,
)

from corral.models import Job

# No ``*_created`` series: ``corral_jobs_created`` would read as a count of jobs.
disable_created_metrics()  # type: ignore[no-untyped-call]

JOBS = Counter(
    "corral_jobs",
    "Jobs that entered each state on this replica (queued counts submissions and retries).",
    ["provider", "state"],
)
COST = Counter(
    "corral_job_cost_usd",
    "Cost in USD of the jobs that ended on this replica (jobs with a known cost).",
    ["provider", "model"],
)
TOKENS = Counter(
    "corral_tokens",
    "Tokens of the jobs that ended on this replica, by kind "
    "(input, output, cache_read, cache_write).",
    ["provider", "model", "kind"],
)
WEBHOOKS = Counter(
    "corral_webhook_deliveries",
    "Webhook delivery attempts this replica made, by outcome (delivered, retry, failed).",
    ["outcome"],
)
TOOL_CALLS = Counter(
    "corral_tool_calls",
    "MCP tool calls of running jobs (their tool.result events this replica took in), "
    "by upstream server (corral: corral's own tools) and outcome (ok, error, refused).",
    ["server", "outcome"],
)
# Seconds, from a shell job's few milliseconds to an agent's hour.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
QUEUE_WAIT = Histogram(
    "corral_job_queue_wait_seconds",
    "From a job becoming available (submitted, retried, or its run_at) to a runner's lease.",
    ["provider"],
    buckets=_BUCKETS,
)
START = Histogram(
    "corral_job_submit_to_start_seconds",
    "From submission to the job's process or request starting (each attempt).",
    ["provider"],
    buckets=_BUCKETS,
)
RUN_TIME = Histogram(
    "corral_job_run_seconds",
    "From start to end of the jobs that ended on this replica, by final state.",
    ["provider", "state"],
    buckets=_BUCKETS,
)

_TOKEN_KINDS = {
    "input": ("input_tokens", "prompt_tokens"),
    "output": ("output_tokens", "completion_tokens"),
    "cache_read": ("cache_read_input_tokens",),
    "cache_write": ("cache_creation_input_tokens",),
}
_ENDED = ("done", "failed", "cancelled")


def _seconds(end: datetime | None, start: datetime | None) -> float | None:
    if end is None or start is None:
        return None
    return max(0.0, (end - start).total_seconds())


def tokens(usage: Mapping[str, Any] | None) -> dict[str, int]:
    """Token counts by kind from a job's usage (either naming: Anthropic's or OpenAI's)."""
    out: dict[str, int] = {}
    for kind, keys in _TOKEN_KINDS.items():
        for key in keys:
            value = (usage or {}).get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                out[kind] = value
                break
    return out


def job_entered(job: Job) -> None:
    """``job`` (as committed) has just entered its state."""
    state, provider = job.state.value, job.provider
    JOBS.labels(provider, state).inc()
    if state == "assigned":
        wait = _seconds(job.assigned_at, job.available_at)
        if wait is not None:
            QUEUE_WAIT.labels(provider).observe(wait)
    elif state == "running":
        start = _seconds(job.started_at, job.created_at)
        if start is not None:
            START.labels(provider).observe(start)
    elif state in _ENDED:
        ran = _seconds(job.finished_at, job.started_at)
        if ran is not None:
            RUN_TIME.labels(provider, state).observe(ran)
        model = job.model or ""
        if job.cost:
            COST.labels(provider, model).inc(job.cost)
        for kind, n in tokens(job.usage).items():
            TOKENS.labels(provider, model, kind).inc(n)


def tool_results(payloads: Sequence[Mapping[str, Any]]) -> None:
    for p in payloads:
        outcome = "refused" if p.get("refused") else "error" if p.get("is_error") else "ok"
        TOOL_CALLS.labels(str(p.get("server") or ""), outcome).inc()


def webhook_attempt(outcome: str) -> None:
    WEBHOOKS.labels(outcome).inc()


# -- the text format ---------------------------------------------------------------------


class Collector(Protocol):
    def collect(self) -> Iterable[Metric]: ...


class Families:
    """Metric families made for one scrape, as ``text`` and ``generate_latest`` read them."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self.families = families

    def collect(self) -> Sequence[Metric]:
        return self.families


# Each sample's ``name{labels} `` prefix, escaped once (None: not in the
# legacy character set): prometheus_client's generate_latest escapes and
# validates every name, label and value on every scrape (~6 us a line: 3.7 ms
# for the ~580 lines of a replica that ran jobs of five providers); the label
# sets of a replica are few and fixed.
_PREFIXES: dict[tuple[str, tuple[tuple[str, str], ...]], str | None] = {}
_TYPES = {"counter": "counter", "gauge": "gauge", "histogram": "histogram", "summary": "summary"}
_OPENMETRICS_ONLY = ("_created", "_gsum", "_gcount")


def text(*collectors: Collector) -> bytes:
    """The Prometheus text format (0.0.4) of ``collectors``, the same bytes as
    ``generate_latest`` writes (tests/unit/test_metrics_text.py); a family
    with anything unusual (timestamps, OpenMetrics-only samples, names
    outside the legacy character set) is written by ``generate_latest``."""
    out: list[str] = []
    for collector in collectors:
        for metric in collector.collect():
            lines = _family(metric)
            out.append(generate_latest(Families([metric])).decode() if lines is None else lines)
    return "".join(out).encode()


def _family(metric: Metric) -> str | None:
    kind = _TYPES.get(metric.type)
    if kind is None or not _is_valid_legacy_metric_name(metric.name):
        return None
    name = metric.name + "_total" if kind == "counter" else metric.name
    doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
    lines = [f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"]
    odd = tuple(metric.name + suffix for suffix in _OPENMETRICS_ONLY)
    for s in metric.samples:
        key = (s.name, tuple(s.labels.items()))
        try:
            prefix = _PREFIXES[key]
        except KeyError:
            prefix = _PREFIXES[key] = _prefix(s.name, s.labels)
            if len(_PREFIXES) > 100_000:
                _PREFIXES.clear()
        if prefix is None or s.timestamp is not None or s.name in odd:
            return None
        lines.append(f"{prefix}{floatToGoString(s.value)}\n")  # type: ignore[no-untyped-call]
    return "".join(lines)


def _prefix(name: str, labels: Mapping[str, str]) -> str | None:
    if not _is_valid_legacy_metric_name(name):
        return None
    if not labels:
        return name + " "
    if not all(_is_valid_legacy_labelname(k) for k in labels):
        return None
    pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return f"{name}{{{pairs}}} "


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
