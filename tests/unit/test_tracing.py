"""corral.tracing without OTEL settings: off, a no-op that still passes a
caller's traceparent on; which settings turn it on."""

from __future__ import annotations

import pytest
from opentelemetry import trace

from corral import tracing

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "corral"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
    ],
    ids=[
        "none",
        "name-only",
        "otlp",
        "console",
        "exporter-none",
        "endpoint",
        "traces-endpoint",
        "sdk-disabled",
    ],
)
def test_which_settings_turn_traces_on(env: dict[str, str], on: bool) -> None:
    assert tracing.wanted(env) is on


def test_without_settings_it_is_a_no_op() -> None:
    assert tracing.setup({"OTEL_SERVICE_NAME": "corral"}) is False
    assert not tracing.enabled()
    # No provider was installed: the API's own proxy answers.
    assert not type(trace.get_tracer_provider()).__module__.startswith("opentelemetry.sdk")
    first = tracing.span("submit", job_id="j")
    assert first is tracing.span("lease", job_id="k")  # one shared object, nothing built
    with first as context:
        assert context is None
        tracing.annotate(state="done")
        tracing.failed("x")
        assert tracing.current() is None
    # A traceparent that came in is passed on unchanged (an invalid one dropped).
    with tracing.span("run", parent=TP) as context:
        assert context == TP
    with tracing.span("run", parent="00-zz-not-a-traceparent") as context:
        assert context is None


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        (TP, TP),
        (TP.upper(), TP),
        ("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", None),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331", None),
        ("", None),
        (None, None),
    ],
    ids=["valid", "upper", "version-ff", "short", "empty", "none"],
)
def test_valid(value: str | None, kept: str | None) -> None:
    assert tracing.valid(value) == kept


def test_fastapis_own_telemetry_is_off_without_a_lookup_per_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """corral's traces are its jobs' (corral.tracing): FastAPI's native
    telemetry is off, and deciding so per request reads no environment."""
    from fastapi import FastAPI

    from corral.api import app as app_module

    app = FastAPI(**app_module._no_native_telemetry())
    native = getattr(app, "_native_telemetry", None)
    if native is None:
        pytest.skip("this FastAPI has no native telemetry")
    from opentelemetry import _logs

    asked: list[int] = []
    monkeypatch.setattr(_logs, "get_logger_provider", lambda: asked.append(1))
    assert native.enabled() is False
    assert asked == []
