"""corral.jsontext: pydantic-core's JSON with the standard library's answers."""

from __future__ import annotations

import json
import math

import pytest

from corral import jsontext


@pytest.mark.parametrize(
    "value",
    [
        {"stream": "stdout", "line": "x" * 80},
        {"é": "ü 中", "n": [1, 2.5, None, True], "nested": {"a": {"b": []}}},
        {"big": 10**30, "neg": -(2**70)},
        "\ud800 a lone surrogate",  # pydantic-core refuses it; json escapes it
    ],
)
def test_round_trips_what_json_does(value: object) -> None:
    text = jsontext.dumps(value)
    assert json.loads(text) == value
    assert jsontext.loads(text) == value
    assert jsontext.loads(text.encode("utf-8", "surrogatepass")) == value


def test_compact_and_utf8() -> None:
    assert jsontext.dumps({"a": [1, "é"]}) == '{"a":[1,"é"]}'


def test_reads_what_json_writes() -> None:
    value = {"s": "\ud800", "é": 1, "inf": math.inf}
    assert jsontext.loads(json.dumps(value)) == value


def test_errors_are_jsons() -> None:
    with pytest.raises(TypeError):
        jsontext.dumps({"a": object()})
    with pytest.raises(json.JSONDecodeError):
        jsontext.loads('{"a": ')
