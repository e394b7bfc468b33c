"""corral.schedules: which slots are due and what the loop does about them;
[[schedules]] tables refused with a message saying what to fix."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from corral.config import ScheduleSettings, Settings, load_settings
from corral.errors import ConfigError
from corral.schedules import MAX_COUNTED, Plan, Skipped, check_cron, latest_slot, next_slot, plan


def at(minute: int, second: float = 0.0, hour: int = 12) -> datetime:
    return datetime(2030, 1, 1, hour, minute, tzinfo=UTC) + timedelta(seconds=second)


@pytest.mark.parametrize(
    ("cron", "tz", "after", "expected"),
    [
        ("* * * * *", "UTC", at(0), at(1)),
        ("* * * * *", "UTC", at(0, 0.5), at(1)),
        ("*/15 * * * *", "UTC", at(7), at(15)),
        ("* * * * * */10", "UTC", at(0, 3), at(0, 10)),
        # 09:00 in Paris is 08:00 UTC in winter, 07:00 in summer.
        ("0 9 * * *", "Europe/Paris", at(0), datetime(2030, 1, 2, 8, tzinfo=UTC)),
        (
            "0 9 * * *",
            "Europe/Paris",
            datetime(2030, 7, 1, tzinfo=UTC),
            datetime(2030, 7, 1, 7, tzinfo=UTC),
        ),
    ],
    ids=["minute", "mid-second", "quarter", "seconds-field", "paris-winter", "paris-summer"],
)
def test_next_slot_is_strictly_after_in_utc(
    cron: str, tz: str, after: datetime, expected: datetime
) -> None:
    assert next_slot(cron, tz, after) == expected


def test_latest_slot_includes_now_itself() -> None:
    assert latest_slot("* * * * *", "UTC", at(5)) == at(5)
    assert latest_slot("* * * * *", "UTC", at(5, 59.9)) == at(5)
    assert latest_slot("*/10 * * * *", "UTC", at(9, 59)) == at(0)


CASES = {
    "first sight starts now": (at(0, 20), None, "latest", Plan(None, None, at(0, 20))),
    "nothing due yet": (at(0, 59), at(0, 20), "latest", None),
    "due on time": (at(1, 0.01), at(0, 20), "latest", Plan(at(1), None, at(1))),
    "due within grace": (at(1, 30), at(0, 20), "none", Plan(at(1), None, at(1))),
    "one missed, latest": (at(1, 31), at(0, 20), "latest", Plan(at(1), None, at(1), late=True)),
    "one missed, none": (
        at(1, 31),
        at(0, 20),
        "none",
        Plan(None, Skipped(1, at(1), at(1)), at(1)),
    ),
    "many missed, latest": (
        at(10, 45),
        at(0, 20),
        "latest",
        Plan(at(10), Skipped(9, at(1), at(9)), at(10), late=True),
    ),
    "many missed, none": (
        at(10, 45),
        at(0, 20),
        "none",
        Plan(None, Skipped(10, at(1), at(10)), at(10)),
    ),
    "a slow loop, on time for the latest": (
        at(3, 1),
        at(0, 20),
        "none",
        Plan(at(3), Skipped(2, at(1), at(2)), at(3)),
    ),
}


@pytest.mark.parametrize(("now", "last", "catch_up", "expected"), CASES.values(), ids=CASES)
def test_plan(now: datetime, last: datetime | None, catch_up: str, expected: Plan | None) -> None:
    got = plan("* * * * *", "UTC", last, now, grace=30, catch_up=catch_up)  # type: ignore[arg-type]
    assert got == expected


def test_counting_skipped_slots_stops_after_max_counted() -> None:
    last = at(0)
    latest = last + timedelta(days=2)  # 172,800 one-second slots
    got = plan(
        "* * * * * *", "UTC", last, latest + timedelta(seconds=0.5), grace=0.1, catch_up="none"
    )
    assert got is not None and got.fire is None and got.last == latest
    assert got.skipped == Skipped(MAX_COUNTED, at(0, 1), latest, at_least=True)


@pytest.mark.parametrize(
    "cron", ["", "bogus", "* * *", "61 * * * *", "* * * * * * * *", "@reboot"], ids=repr
)
def test_check_cron_refuses_what_croniter_cannot_read(cron: str) -> None:
    with pytest.raises(ValueError, match="is not a cron expression: five fields"):
        check_cron(cron)


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ({"cron": "* * * * *", "command": "true"}, "name"),
        ({"name": "x", "command": "true"}, "cron"),
        ({"name": "x", "cron": "* * *", "command": "true"}, "not a cron expression"),
        ({"name": "x", "cron": "* * * * *"}, "prompt, command or messages"),
        ({"name": "x", "cron": "* * * * *", "command": "t", "timezone": "Mars/Base"}, "IANA"),
        ({"name": "x", "cron": "* * * * *", "command": "t", "catch_up": "all"}, "catch_up"),
        ({"name": "x", "cron": "* * * * *", "command": "t", "idempotency_key": "k"}, "set by"),
        (
            {"name": "x", "cron": "* * * * *", "command": "t", "run_at": "2030-01-01T00:00Z"},
            "set by",
        ),
        ({"name": "x", "cron": "* * * * *", "command": "t", "colour": "red"}, "colour"),
        ({"name": "no spaces", "cron": "* * * * *", "command": "t"}, "name"),
    ],
    ids=[
        "no-name",
        "no-cron",
        "bad-cron",
        "no-work",
        "bad-zone",
        "bad-catch-up",
        "own-key",
        "own-run-at",
        "unknown",
        "bad-name",
    ],
)
def test_bad_schedule_tables_say_what_to_fix(table: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_settings(schedules=[table])


def test_two_schedules_may_not_share_a_name() -> None:
    table = {"name": "x", "cron": "* * * * *", "command": "true"}
    with pytest.raises(ConfigError, match="two \\[\\[schedules\\]\\] are named 'x'"):
        load_settings(schedules=[table, table])


def test_a_schedule_takes_the_job_fields() -> None:
    s = ScheduleSettings.model_validate(
        {
            "name": "nightly",
            "cron": "0 3 * * *",
            "timezone": "Europe/Paris",
            "prompt": "Update the dependencies.",
            "provider": "claude",
            "repo": "/src/app",
            "labels": ["deps"],
            "priority": 3,
        }
    )
    job = s.job()
    assert (job.prompt, job.preferred_ai, job.repo, job.labels, job.priority) == (
        "Update the dependencies.",
        "claude",
        "/src/app",
        ["deps"],
        3,
    )
    assert (s.enabled, s.catch_up) == (True, "latest")
    assert Settings(schedules=[s]).schedule("nightly") is s
