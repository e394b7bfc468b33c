"""What a daemon's stdout line reports: `{"corral": {"messages": N}}`."""

from __future__ import annotations

import pytest

from corral.runner.daemons import _messages


@pytest.mark.parametrize(
    ("line", "count"),
    [
        ('{"corral": {"messages": 3}}', 3),
        ('{"corral": {"messages": 1}, "other": "kept in the log"}', 1),
        ('{"corral": {"messages": 0}}', 0),
        ('{"corral": {"messages": -4}}', 0),
        ('{"corral": {"messages": true}}', 0),
        ('{"corral": {"messages": "7"}}', 0),
        ('{"corral": {"messages": 10000001}}', 0),
        ('{"corral": "message"}', 0),
        ('{"corral": {"messages": 2}', 0),  # cut short
        ('{"corral": [1, 2]}', 0),
    ],
)
def test_message_counts(line: str, count: int) -> None:
    assert _messages(line) == count
