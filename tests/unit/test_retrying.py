"""Retry-After read one way by every sender (webhooks, chat, trackers, model APIs)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from corral.retrying import retry_after

NOW = datetime(2026, 10, 21, 7, 28, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("1.5", 1.5),
        ("-3", 0.0),  # a wait already over
        ("Wed, 21 Oct 2026 07:28:30 GMT", 30.0),  # IMF-fixdate
        ("Wed, 21 Oct 2026 07:29:00 -0000", 60.0),  # no zone: UTC
        ("Wednesday, 21-Oct-26 07:28:10 GMT", 10.0),  # obsolete RFC 850 form
        ("Wed, 21 Oct 2026 07:00:00 GMT", 0.0),  # a date passed
        ("soon", None),
        ("nan", None),
        ("inf", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after(value: str | None, seconds: float | None) -> None:
    assert retry_after(value, NOW) == seconds
