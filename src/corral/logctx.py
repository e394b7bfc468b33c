"""What a log line is about: the ids of the job, session, runner, agent or
request the code runs for, kept in a context variable so that every log call
made while handling it carries them (as the JSON format's fields and a
``key=value`` tail of the text format), not only the calls that pass
``extra=``. A task started inside inherits the context it was created in."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType

KEYS = ("request_id", "job_id", "session_id", "runner", "agent")

# Never mutated: each bind sets a new mapping.
_EMPTY: Mapping[str, str] = MappingProxyType({})
_context: ContextVar[Mapping[str, str]] = ContextVar("corral_log_context", default=_EMPTY)


def bind(**ids: str | None) -> None:
    """Add ``ids`` to the current context (for the rest of this task)."""
    _context.set({**_context.get(), **{k: v for k, v in ids.items() if v}})


@contextmanager
def bound(**ids: str | None) -> Iterator[None]:
    """``ids`` in the context while the block runs."""
    token = _context.set({**_context.get(), **{k: v for k, v in ids.items() if v}})
    try:
        yield
    finally:
        _context.reset(token)


def current() -> Mapping[str, str]:
    return _context.get()


class ContextFilter(logging.Filter):
    """Copies the context's ids onto each record (an ``extra=`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True
