"""`corral submit --at TIME`: when() reads ISO-8601 with a time zone or a
delay from now, and refuses anything else saying what to write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from corral.cli.submit import when
from corral.errors import BadRequest

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("+90s", NOW + timedelta(seconds=90)),
        ("+10m", NOW + timedelta(minutes=10)),
        ("+2h", NOW + timedelta(hours=2)),
        ("+1d", NOW + timedelta(days=1)),
        ("+0s", NOW),
        (" +5m ", NOW + timedelta(minutes=5)),
        ("2030-01-01T09:00:00Z", datetime(2030, 1, 1, 9, tzinfo=UTC)),
        ("2030-01-01T09:00Z", datetime(2030, 1, 1, 9, tzinfo=UTC)),
        ("2030-01-01T10:00:00+01:00", datetime(2030, 1, 1, 9, tzinfo=UTC)),
        ("2030-01-01 04:00-05:00", datetime(2030, 1, 1, 9, tzinfo=UTC)),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_when_reads_iso_and_relative_times_in_utc(text: str, expected: datetime) -> None:
    at = when(text, now=NOW)
    assert at == expected
    assert at.utcoffset() == timedelta(0)


def test_a_relative_time_counts_from_the_real_clock_by_default() -> None:
    before = datetime.now(UTC)
    at = when("+1h")
    assert before + timedelta(hours=1) <= at <= datetime.now(UTC) + timedelta(hours=1)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("2030-01-01T09:00", "has no time zone: add Z"),
        ("tomorrow", "is not a time"),
        ("+10", "is not a time"),
        ("+10w", "is not a time"),
        ("-10m", "is not a time"),
        ("10m", "is not a time"),
        ("", "is not a time"),
        ("+999999999d", "too far in the future"),
    ],
)
def test_when_refuses_what_it_cannot_read_and_says_what_to_write(text: str, needle: str) -> None:
    with pytest.raises(BadRequest, match=needle):
        when(text, now=NOW)


def test_an_offset_time_keeps_its_instant() -> None:
    tokyo = timezone(timedelta(hours=9))
    assert when("2030-01-01T18:00+09:00", now=NOW) == datetime(2030, 1, 1, 18, tzinfo=tokyo)
