"""Traces of a job's way through corral (the optional extra ``corral[otel]``).

Spans: ``corral.submit`` (intake/submit.py), ``corral.lease`` (the lease of
a job to a runner), ``corral.run`` (the runner running it), ``corral.complete``
(its outcome stored) and ``corral.webhook`` (one delivery attempt), each with
``corral.job_id`` and, where known, ``corral.provider``, ``corral.attempt``
and ``corral.state``.

The trace context travels as a W3C ``traceparent``: the submit span's is
stored with the job (``jobs.traceparent``), the lease answers the lease
span's (``LeasedJob.traceparent``), the runner's run span is its child and
the runner's worker calls send the run span's in a ``traceparent`` header
(the embedded runner passes it in-process). A job's process gets it as
``TRACEPARENT`` and the runner's ``OTEL_*`` variables (executors/sandbox.py).

Configured by the OpenTelemetry SDK's own environment variables, read by the
SDK (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_EXPORTER_OTLP_*``, ``OTEL_BSP_*``, ``OTEL_TRACES_SAMPLER``); tracing
is on when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``
or another registered one) or an OTLP endpoint is set, and
``OTEL_SDK_DISABLED`` is not true. Otherwise, or without the extra installed,
``span`` returns one shared no-op context manager: the job path pays a
function call and a ``None`` test. A ``traceparent`` that came in (a runner's
lease, a client's header) is still passed on unchanged."""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import re
from collections.abc import Iterator, Mapping
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

log = logging.getLogger(__name__)

HEADER = "traceparent"
# version-trace_id-parent_id-flags (W3C Trace Context, level 1)
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
_EXPORTERS = "opentelemetry_traces_exporter"  # the SDK's entry point group

_tracer: Tracer | None = None
_provider: TracerProvider | None = None
_NOOP: contextlib.nullcontext[None] = contextlib.nullcontext()


def valid(traceparent: str | None) -> str | None:
    """``traceparent`` if it has the W3C form (lower-cased), else None."""
    if traceparent is None:
        return None
    value = traceparent.strip().lower()
    return value if _TRACEPARENT.match(value) and not value.startswith("ff") else None


def wanted(env: Mapping[str, str] = os.environ) -> bool:
    """Whether ``env`` turns tracing on (see the module's docstring)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return bool(
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def enabled() -> bool:
    return _tracer is not None


def setup(env: Mapping[str, str] = os.environ) -> bool:
    """Start exporting spans if ``env`` asks for it and the extra is installed
    (once per process; the CLI's ``serve`` and ``runner`` call it). Returns
    whether tracing is on."""
    global _tracer, _provider
    if _tracer is not None:
        return True
    if not wanted(env):
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "OTEL_* settings ask for traces but corral[otel] is not installed: "
            "pip install 'corral[otel]'"
        )
        return False
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, read by the SDK; else "corral".
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "corral"}))
    provider = TracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER
    names = [n.strip() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if n.strip()]
    for name in names:
        exporter = _exporter(name, env)
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_*
    trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = trace.get_tracer("corral")
    log.info("traces: exporting spans (%s)", ", ".join(names))
    return True


def _exporter(name: str, env: Mapping[str, str]) -> Any:
    """The span exporter registered as ``name`` (``otlp``: over HTTP unless
    the OTLP protocol says grpc); it reads its own OTEL_EXPORTER_* settings."""
    if name == "otlp":
        protocol = env.get(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
        )
        name = "otlp_proto_grpc" if protocol.strip() == "grpc" else "otlp_proto_http"
    for ep in entry_points(group=_EXPORTERS, name=name):
        return ep.load()()
    log.warning("traces: no span exporter %r is installed (OTEL_TRACES_EXPORTER)", name)
    return None


def shutdown() -> None:
    """Send the spans not exported yet (on exit)."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


def span(
    name: str, *, parent: str | None = None, **attributes: object
) -> contextlib.AbstractContextManager[str | None]:
    """A span ``corral.NAME``, current while the block runs, child of the
    ``parent`` traceparent (else of the current span). The block gets the
    traceparent to pass on: the new span's, or with tracing off ``parent``
    as it came. ``attributes`` are recorded as ``corral.KEY`` (None skipped)."""
    if _tracer is None:
        return contextlib.nullcontext(valid(parent)) if parent is not None else _NOOP
    return _span(_tracer, name, parent, attributes)


@contextlib.contextmanager
def _span(
    tracer: Tracer, name: str, parent: str | None, attributes: Mapping[str, object]
) -> Iterator[str | None]:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    propagator = TraceContextTextMapPropagator()
    context = None
    if parent is not None and valid(parent) is not None:
        context = propagator.extract({HEADER: parent})
    with tracer.start_as_current_span(
        f"corral.{name}", context=context, attributes=_attrs(attributes)
    ):
        carrier: dict[str, str] = {}
        propagator.inject(carrier)
        yield carrier.get(HEADER)


def annotate(**attributes: object) -> None:
    """Record ``corral.KEY`` attributes on the current span (if tracing is on)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(_attrs(attributes))


def failed(message: str) -> None:
    """Mark the current span as failed (if tracing is on)."""
    if _tracer is None:
        return
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    trace.get_current_span().set_status(Status(StatusCode.ERROR, message[:500]))


def current() -> str | None:
    """The traceparent of the current span, if tracing is on and one is recording."""
    if _tracer is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get(HEADER)


def _attrs(attributes: Mapping[str, object]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        if value is None:
            continue
        if isinstance(value, enum.Enum):
            value = value.value
        if type(value) not in (str, bool, int, float):
            value = str(value)
        out[f"corral.{key}"] = value
    return out
