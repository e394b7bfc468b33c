"""Cron schedules, pure: which slots of a schedule are due, and what the
schedule loop does about them.

A **slot** is an instant the cron expression names, in the schedule's time
zone (croniter syntax: five fields, or six with seconds last). The loop
keeps, per schedule, the last slot it handled (``last``); at each look it
asks ``plan(cron, zone, last, now, grace, catch_up)``:

- the slots after ``last`` up to ``now`` are due;
- the latest of them is fired when it is no more than ``grace`` seconds old
  (the loop was merely a little late), or, when it is older (corral was down
  or the schedule's leader changed hands), only if ``catch_up = "latest"``;
- every other due slot is skipped, all of them reported by one event, never
  replayed in a burst.

A schedule seen for the first time (or whose cron or zone changed) starts
from ``now``: its past slots are not "missed"."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

CatchUp = Literal["latest", "none"]

# Counting the skipped slots of a fine-grained cron after a long outage
# walks every one of them: stop counting here (the event says "at least").
MAX_COUNTED = 10_000


def check_cron(expr: str) -> str:
    """``expr`` if croniter reads it (5 fields, or 6 with seconds last);
    else ValueError saying what to write."""
    fields = expr.split()
    if len(fields) not in (5, 6) or not croniter.is_valid(expr):
        raise ValueError(
            f"cron {expr!r} is not a cron expression: five fields (minute hour day month "
            "weekday, e.g. '0 9 * * 1-5') or six with seconds last ('* * * * * */10')"
        )
    return expr


@functools.cache
def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; ValueError if there is none by that name."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"timezone {name!r} is not an IANA time zone (e.g. 'UTC', 'Europe/Paris')"
        ) from exc


def next_slot(cron: str, tz: str, after: datetime) -> datetime:
    """The first slot strictly after ``after``, in UTC."""
    at: datetime = croniter(cron, after.astimezone(zone(tz))).get_next(datetime)
    return at.astimezone(UTC)


def latest_slot(cron: str, tz: str, now: datetime) -> datetime:
    """The last slot at or before ``now``, in UTC (croniter's previous slot
    is strictly before its base, hence the microsecond)."""
    base = (now + timedelta(microseconds=1)).astimezone(zone(tz))
    at: datetime = croniter(cron, base).get_prev(datetime)
    return at.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Skipped:
    """Due slots not fired: how many (at least that many when
    ``at_least``: counting stops at ``MAX_COUNTED``), the first and the last."""

    count: int
    first: datetime
    last: datetime
    at_least: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do now: fire the slot ``fire`` (or nothing), report
    ``skipped`` (or nothing), and remember ``last`` as the last slot handled.
    ``late``: ``fire`` is older than the grace (a catch-up)."""

    fire: datetime | None
    skipped: Skipped | None
    last: datetime
    late: bool = False


def plan(
    cron: str,
    tz: str,
    last: datetime | None,
    now: datetime,
    *,
    grace: float,
    catch_up: CatchUp,
) -> Plan | None:
    """What the loop does for one schedule at ``now``; None: nothing is due.
    ``last`` None: the schedule starts now (nothing fired, nothing skipped)."""
    if last is None:
        return Plan(fire=None, skipped=None, last=now)
    first = next_slot(cron, tz, last)
    if first > now:
        return None
    latest = latest_slot(cron, tz, now)
    late = (now - latest).total_seconds() > grace
    fire = latest if not late or catch_up == "latest" else None
    # Skipped: every due slot but the one fired.
    end = latest if fire is None else None
    count, at = 0, first
    while at < latest or at == end:
        count += 1
        if count >= MAX_COUNTED:
            break
        at = next_slot(cron, tz, at)
    skipped = None
    if count:
        last_skipped = latest if fire is None else latest_slot(cron, tz, latest - _EPS)
        skipped = Skipped(count, first, last_skipped, at_least=count >= MAX_COUNTED)
    return Plan(fire=fire, skipped=skipped, last=latest, late=late and fire is not None)


_EPS = timedelta(microseconds=1)
