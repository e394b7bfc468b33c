"""The runner's outcome journal (runner/journal.py): what is recorded survives
the process, a forgotten entry does not, recordings made together share one
commit, and what one registration presents fits in it."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from corral.models import NewEvent, Outcome
from corral.protocol import JournalEntry
from corral.runner import runner as runner_module
from corral.runner.journal import Journal, Pending


def _entry(n: int, events: int = 0) -> JournalEntry:
    return JournalEntry(
        id=f"e{n}",
        token="t",
        finished_at=datetime.now(UTC),
        outcome=Outcome(status="done", result=f"result {n}"),
        events=[NewEvent(type="output", payload={"line": "x" * 100}) for _ in range(events)],
    )


async def test_recorded_entries_are_presented_until_forgotten(tmp_path: Path) -> None:
    path = tmp_path / "runner" / "journal.sqlite"
    async with Journal(path) as journal:
        await journal.record("j1", _entry(1, events=2))
        await journal.record("j2", _entry(2))
        journal.forget("e1")
    assert (path.stat().st_mode & 0o777) == 0o600
    async with Journal(path) as journal:  # a restart
        [left] = await journal.pending()
        journal.forget("e0")  # never recorded: nothing to delete
        assert left.job_id == "j2" and left.entry.outcome.result == "result 2"
        # Recorded again under its id (artifacts added): replaced, not doubled.
        await journal.record("j2", left.entry.model_copy(update={"artifacts": ["diff.patch"]}))
        [again] = await journal.pending()
        assert again.entry.artifacts == ["diff.patch"]
    async with Journal(path) as journal:  # what a registration presented is forgotten
        [left] = await journal.pending()
        journal.forget(left.entry.id)
    async with Journal(path) as journal:
        assert await journal.pending() == []


async def test_recordings_made_together_share_a_commit(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    commits: list[int] = []
    async with Journal(path) as journal:
        commit = journal._commit

        def counted(puts, drops):  # type: ignore[no-untyped-def]
            commits.append(len(puts))
            commit(puts, drops)

        journal._commit = counted  # type: ignore[method-assign]
        await asyncio.gather(*(journal.record(f"j{n}", _entry(n)) for n in range(50)))
        assert len(await journal.pending()) == 50
    assert sum(commits) == 50 and len(commits) < 50, commits


async def test_an_entry_forgotten_before_its_commit_is_never_written(tmp_path: Path) -> None:
    """The report was answered before the journal's commit took the entry: it
    is dropped unwritten, and its future is done (nothing waits on a write
    that will not come); one the commit took is deleted after it."""
    path = tmp_path / "journal.sqlite"
    commits: list[tuple[int, int]] = []
    async with Journal(path) as journal:
        commit = journal._commit

        def counted(puts, drops):  # type: ignore[no-untyped-def]
            commits.append((len(puts), len(drops)))
            commit(puts, drops)

        journal._commit = counted  # type: ignore[method-assign]
        durable = journal.put("j1", _entry(1))
        journal.forget("e1")  # before the write loop ran
        assert durable.done()
        assert await journal.pending() == []
        assert commits == []
        await journal.put("j2", _entry(2))
        journal.forget("e2")
        assert await journal.pending() == []
        assert commits == [(1, 0), (0, 1)]


async def test_an_unreadable_entry_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    async with Journal(path) as journal:
        await journal.record("j1", _entry(1))
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:  # closed, committed
        conn.execute("INSERT INTO outcomes VALUES ('bad', 'j9', 0, '{\"not\": \"an entry\"}')")
    async with Journal(path) as journal:
        assert [p.job_id for p in await journal.pending()] == ["j1"]
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM outcomes").fetchone() == (1,)


def test_a_registration_carries_what_fits(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(runner_module, "JOURNAL_BYTES", 20_000)
    small = [Pending(f"j{n}", _entry(n)) for n in range(3)]
    assert [e.id for e in runner_module._fit(small)] == ["e0", "e1", "e2"]
    # One entry larger than the room alone: it goes with the events that fit.
    big, *rest = runner_module._fit([Pending("j", _entry(9, events=1000)), *small])
    assert 0 < len(big.events) < 1000 and len(big.events) + big.events_omitted == 1000
    assert sum(len(e.model_dump_json()) for e in [big, *rest]) <= 20_000
    # The others wait for the next registration once the room is used.
    fitted = runner_module._fit([*small, Pending("j", _entry(9, events=1000))])
    assert [e.id for e in fitted] == ["e0", "e1", "e2"]
