"""JSON text on the job path, written and read by pydantic-core (issue #18).

``json.dumps`` of an output line's payload took ~1.8 us, pydantic-core's
writer ~0.3 us; a job's row or event read back ~2.7 us with ``json.loads``,
~1.1 us with pydantic-core's parser. What pydantic-core refuses and the
standard library takes (a lone surrogate, escaped by ``json.dumps``; an
unknown type, refused by both) goes to the standard library, so the values
accepted and the errors raised are those of ``json``."""

from __future__ import annotations

import json
from typing import Any

import pydantic_core


def dumps(value: Any) -> str:
    """Compact JSON text of ``value`` (non-ASCII written as UTF-8, not escaped)."""
    try:
        return pydantic_core.to_json(value).decode()
    except ValueError:
        return json.dumps(value, separators=(",", ":"))


def loads(text: str | bytes) -> Any:
    """The value of JSON ``text``; a ``ValueError`` (``json.JSONDecodeError``) if it is none."""
    try:
        return pydantic_core.from_json(text)
    except ValueError:
        return json.loads(text)
