"""``Retry-After`` (RFC 9110 section 10.2.3), read one way everywhere: a
webhook receiver, a chat API, an issue tracker or a model API that says when
to come back."""

from __future__ import annotations

import contextlib
import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds ``value`` asks to wait: delay-seconds (a number; a fraction or
    a negative one is taken as it is meant, not refused) or an HTTP-date
    (``Wed, 21 Oct 2026 07:28:00 GMT``; a date passed is 0). None when it is
    neither, or missing."""
    if not value:
        return None
    value = value.strip()
    with contextlib.suppress(ValueError):
        wait = float(value)
        return max(0.0, wait) if math.isfinite(wait) else None
    with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
        when = parsedate_to_datetime(value)
        if when.tzinfo is None:  # "-0000": UTC, as HTTP-dates are
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    return None
