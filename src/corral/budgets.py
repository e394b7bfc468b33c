"""Budgets (``[[budgets]]``): a spending limit in USD over a scope (every job,
one provider's, or one label's) per period (day, week, month) in a time zone.

Pure: the window a time falls in, which jobs a budget covers, and which
levels a spend has crossed. The store sums the spend and keeps what was
announced (``store/jobs/budgets.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

Period = Literal["day", "week", "month"]
Action = Literal["pause", "warn"]
LEVELS = (80, 100)  # percent of the limit whose crossing is announced


@dataclass(frozen=True, slots=True)
class Budget:
    name: str
    scope: str  # "global", "provider:NAME" or "label:NAME"
    limit: float
    period: Period = "month"
    timezone: str = "UTC"
    action: Action = "pause"

    @property
    def kind(self) -> str:
        return self.scope.partition(":")[0]

    @property
    def target(self) -> str:
        return self.scope.partition(":")[2]

    def covers(self, provider: str, labels: Sequence[str]) -> bool:
        """Whether a job of ``provider`` with ``labels`` counts against it."""
        if self.kind == "global":
            return True
        if self.kind == "provider":
            return provider == self.target
        return self.target in labels

    def window(self, now: datetime) -> tuple[datetime, datetime]:
        """The period ``now`` falls in, as UTC instants ``[start, end)``."""
        zone = ZoneInfo(self.timezone)
        local = now.astimezone(zone)
        day = local.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
        if self.period == "day":
            start, end = day, day + timedelta(days=1)
        elif self.period == "week":  # ISO weeks: Monday to Monday
            start = day - timedelta(days=day.weekday())
            end = start + timedelta(days=7)
        else:
            start = day.replace(day=1)
            end = (start + timedelta(days=32)).replace(day=1)
        return (
            start.replace(tzinfo=zone).astimezone(UTC),
            end.replace(tzinfo=zone).astimezone(UTC),
        )

    def level(self, spent: float) -> int:
        """The highest level of ``LEVELS`` that ``spent`` reached (0: none)."""
        reached = [lv for lv in LEVELS if spent >= self.limit * lv / 100]
        return max(reached, default=0)

    def hard(self, spent: float) -> bool:
        """Whether nothing it covers may start now."""
        return self.action == "pause" and spent >= self.limit


def usd(value: float) -> str:
    """Dollars as people read them: cents, or two significant digits below a cent."""
    return f"${value:,.2f}" if value >= 0.01 or value == 0 else f"${value:.2g}"
