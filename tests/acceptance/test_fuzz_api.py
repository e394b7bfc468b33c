"""Schema-driven fuzzing (schemathesis) of a real `corral serve` on loopback
with a real admin key: every operation of the OpenAPI document, valid and
invalid inputs, a fixed seed and a bounded number of examples. No answer may
be a 5xx, and every status and body must be one the document declares.

The server runs without a runner, so no fuzzed job ever runs. Left out:
the streams (SSE and long polls never end by design) and the Ollama proxies
`/api/chat` and `/api/embed`, whose errors are the upstream model server's
(tests/acceptance/test_chat.py drives them against fake servers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.config import GenerationConfig

from corral.testing import ServerProcess, start_server

EXCLUDED = (
    r"^/(sessions/\{[^}]+\}/stream|sse/.*|runners/\{[^}]+\}/(lease|agents)|api/(chat|embed))$"
)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("fuzz") / "data", args=("--no-runner", "--no-queue"))
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def api_schema(fuzzed: ServerProcess) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json")
    return schema.exclude(path_regex=EXCLUDED)


FUZZ = settings(
    max_examples=8,
    derandomize=True,  # the same inputs on every run
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


# Every operation of the API, each with its coverage cases: the suite's 120 s
# guard is for one behaviour, this is a few thousand requests (about 35 s idle).
@pytest.mark.timeout(600)
def test_no_5xx_and_only_documented_answers(
    api_schema: schemathesis.BaseSchema, fuzzed: ServerProcess
) -> None:
    """For each operation: schemathesis's coverage cases (deterministic:
    each parameter at and beyond its bounds, wrong types, missing fields),
    then random valid inputs from a fixed seed."""
    auth = {"Authorization": f"Bearer {fuzzed.admin_key}"}
    failures: list[str] = []
    calls = 0

    def call(case: schemathesis.Case) -> None:
        nonlocal calls
        calls += 1
        case.call_and_validate(headers=auth, checks=CHECKS, timeout=10)

    for result in api_schema.get_all_operations():
        operation = result.ok()
        try:
            for case in api_schema.iter_coverage_cases(
                operation, generation_modes=MODES, generation_config=GenerationConfig()
            ):
                call(case)
            FUZZ(given(case=operation.as_strategy(GenerationMode.POSITIVE))(call))()
        except Exception as exc:  # every operation is tried; all failures are reported
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
    assert calls > 1000


def test_the_schema_lists_the_fuzzed_operations(api_schema: schemathesis.BaseSchema) -> None:
    labels = {op.ok().label for op in api_schema.get_all_operations()}
    assert "GET /sessions/{session_id}/events" in labels
    assert "GET /jobs/{job_id}/events" in labels
    assert len(labels) > 30, labels
