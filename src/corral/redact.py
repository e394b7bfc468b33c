"""Secrets never leave in what corral stores or logs.

A process keeps the secrets it knows (``SECRETS``): provider API keys and
credentials as they are read (token files and commands included), and what
its configuration holds (``Settings.secrets()``: secret values of provider
and agent ``env`` tables, webhook secrets, the JWT secret, the database
password). ``text()`` and ``data()`` replace them, and
anything shaped like a corral API key or a bearer token, with ``[redacted]``.

Where it applies: the store boundary of worker writes (events, the outcome:
an upstream error that echoes the API key is stored redacted, and so are the
webhook bodies and listings made from it), the runner before it sends (a
runner on another host knows credentials the server does not), and the log
handler of `corral serve` and `corral runner`."""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported by the CLI's log setup, which loads no pydantic
    from corral.models import NewEvent, Outcome

REDACTED = "[redacted]"
# Shorter values are not treated as secrets: replacing "1" or "true" everywhere
# would mangle output and protect nothing.
MIN_LENGTH = 8
# Names of env entries whose values are secrets (ANTHROPIC_API_KEY, BOT_TOKEN...).
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)
_SHAPES = r"(?P<key>crl_[0-9a-f]+_)[A-Za-z0-9_\-]+|(?P<bearer>Bearer\s+)[A-Za-z0-9._~+/=\-]+"


class Secrets:
    """A set of secret values and the one pattern that finds them."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._known: tuple[str, ...] = ()
        self._in_json: tuple[str, ...] = ()
        self._lock = threading.Lock()
        self._pattern = re.compile(_SHAPES)

    def add(self, *values: str | None) -> None:
        fresh = {v for v in values if v and len(v) >= MIN_LENGTH} - self._values
        if not fresh:
            return
        with self._lock:
            self._values |= fresh
            # Longest first: a secret containing another is replaced whole.
            known = tuple(sorted(self._values, key=len, reverse=True))
            self._pattern = re.compile("|".join([_SHAPES, *map(re.escape, known)]))
            self._known = known
            self._in_json = tuple({form for v in known for form in _json_forms(v)})

    def text(self, value: str) -> str:
        # Substring tests first: ~20x cheaper than the regex on the lines of
        # output that hold no secret, which is nearly all of them.
        if "crl_" in value or "Bearer" in value:
            return self._pattern.sub(_replace, value)
        for known in self._known:
            if known in value:
                return self._pattern.sub(_replace, value)
        return value

    def suspect(self, text: str) -> bool:
        """Whether JSON ``text`` (``jsontext.dumps``) may hold something
        ``data()`` would redact in the value it encodes. False only when
        nothing can be there: JSON escapes a string one character at a time,
        so a secret inside a string is inside its text in one of the two
        forms corral's encoder writes (UTF-8, or ``\\u`` escapes in its
        fallback); a hit may be a key or a number (a false alarm, never a miss)."""
        if "crl_" in text or "Bearer" in text:
            return True
        return any(form in text for form in self._in_json)

    def suspects(self, texts: Sequence[str]) -> list[int]:
        """The indices of the JSON ``texts`` that are ``suspect``. The batch
        is looked at once first (one search per batch instead of one per
        event, issue #18): the joined text holds each text whole, so it is
        suspect whenever one of them is, and a batch with none (nearly every
        batch of output) is done. Joined by a line feed, which compact JSON
        text never holds raw, nor does a secret's form or a shape's marker:
        nothing is found across two texts, so a clean batch is not looked at
        twice."""
        if not texts or not self.suspect("\n".join(texts)):
            return []
        return [i for i, text in enumerate(texts) if self.suspect(text)]

    def data(self, value: Any) -> Any:
        """``value`` (JSON-like: dicts, lists, strings) with every string
        redacted; the very same object when there was nothing to redact."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            changed: dict[Any, Any] | None = None
            for k, v in value.items():
                r = self.text(v) if type(v) is str else self.data(v)
                if r is not v:
                    changed = changed if changed is not None else dict(value)
                    changed[k] = r
            return value if changed is None else changed
        if isinstance(value, list):
            items = [self.data(v) for v in value]
            return value if all(a is b for a, b in zip(items, value, strict=True)) else items
        return value


def _json_forms(value: str) -> set[str]:
    """``value`` as it stands inside a JSON string: escaped as pydantic-core
    writes it (non-ASCII as is) and as the standard library's ``json`` does
    (non-ASCII as ``\\u`` escapes), the two writers of ``jsontext.dumps``."""
    import json  # here: the CLI's log setup imports this module and wants it light

    forms = {json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
    try:
        import pydantic_core

        forms.add(pydantic_core.to_json(value).decode()[1:-1])
    except (ImportError, ValueError):  # a lone surrogate: only the fallback writes it
        pass
    return forms


def _replace(match: re.Match[str]) -> str:
    return (match.group("key") or match.group("bearer") or "") + REDACTED


SECRETS = Secrets()


def text(value: str) -> str:
    return SECRETS.text(value)


def optional(value: str | None) -> str | None:
    return None if value is None else SECRETS.text(value)


def data(value: Any) -> Any:
    return SECRETS.data(value)


def add(*values: str | None) -> None:
    SECRETS.add(*values)


def outcome(value: Outcome) -> Outcome:
    """An executor's outcome with its result, error and message redacted."""
    update = {
        "result": optional(value.result),
        "error": optional(value.error),
        "message": data(value.message),
    }
    if all(update[k] is getattr(value, k) for k in update):
        return value
    return value.model_copy(update=update)


def suspects(texts: Sequence[str]) -> list[int]:
    return SECRETS.suspects(texts)


def event(value: NewEvent) -> NewEvent:
    payload = data(value.payload)
    return value if payload is value.payload else value.model_copy(update={"payload": payload})


def env_secrets(env: dict[str, str]) -> list[str]:
    """The values of ``env`` whose names say they are secrets."""
    return [v for k, v in env.items() if SECRET_NAME.search(k)]
