"""Hot-path statements run on the driver's cursor (corral/store/prepared.py)
give what ``Connection.execute`` gives: the same rows with the same Python
types, ``IN`` lists of any length (empty included), the statement's own
literals, a rowcount, and SQLAlchemy's exceptions. On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from corral.store import Store
from corral.store.db import Tx, fields
from corral.store.prepared import Prepared, driver, savepoint
from corral.store.schema import jobs, sessions

NOW = datetime(2026, 12, 4, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    store = await Store.open(db_url)
    try:
        yield store
    finally:
        await store.close()


def session_row(i: int) -> dict[str, Any]:
    at = NOW + timedelta(seconds=i)
    return {
        "id": f"s{i}",
        "created_at": at,
        "updated_at": at,
        "epoch": 0,
        "last_seq": 0,
        "turns": 1,
    }


INSERT_SESSION = Prepared(sa.insert(sessions), per_call_columns=True)
INSERT_JOB = Prepared(sa.insert(jobs).returning(*jobs.c), per_call_columns=True)
BY_STATE = Prepared(
    sa.select(jobs.c.id)
    .where(jobs.c.state.in_(sa.bindparam("states", expanding=True)))
    .order_by(jobs.c.id)
)
NOT_IN = Prepared(
    sa.select(jobs.c.id)
    .where(jobs.c.provider.not_in(sa.bindparam("providers", expanding=True)))
    .order_by(jobs.c.id)
)
# A literal list and a literal value, as the statement holds them.
ACTIVE = Prepared(
    sa.select(sa.func.count())
    .select_from(jobs)
    .where(jobs.c.state.in_(["running", "assigned"]), jobs.c.provider == "shell")
)
TOUCH = Prepared(
    sa.update(jobs)
    .where(jobs.c.session_id == sa.bindparam("w_session"))
    .values(updated_at=sa.bindparam("v_now", type_=jobs.c.updated_at.type))
)


def job_row(i: int, state: str, provider: str = "shell") -> dict[str, Any]:
    return {
        "id": f"j{i}",
        "session_id": f"s{i}",
        "turn": 1,
        "state": state,
        "provider": provider,
        "source": "api",
        "command": "true",
        "labels": {"team": "a"} if i % 2 else None,
        "think": bool(i % 2),
        "priority": 0,
        "attempt": 1,
        "max_attempts": 3,
        "epoch": 0,
        "created_at": NOW,
        "available_at": NOW,
        "updated_at": NOW,
    }


async def seed(store: Store) -> list[Any]:
    def body(tx: Tx) -> list[Any]:
        rows = []
        for i, state in enumerate(["queued", "running", "assigned", "done"]):
            INSERT_SESSION(tx.conn, session_row(i))
            provider = "codex" if i == 3 else "shell"
            rows.append(INSERT_JOB(tx.conn, job_row(i, state, provider)).one())
        return rows

    return await store.db.write(body)


async def test_rows_match_what_sqlalchemy_reads(store: Store) -> None:
    inserted = await seed(store)

    def both(tx: Tx) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        ours = [fields(r) for r in Prepared(sa.select(jobs).order_by(jobs.c.id))(tx.conn)]
        theirs = [fields(r) for r in tx.conn.execute(sa.select(jobs).order_by(jobs.c.id))]
        return ours, theirs

    ours, theirs = await store.db.write(both)
    assert ours == theirs
    assert [fields(r) for r in inserted] == theirs
    first = ours[1]
    # Types as SQLAlchemy gives them: aware datetimes, JSON decoded, booleans, and
    # the server defaults of the columns the insert left out.
    assert first["created_at"] == NOW and first["created_at"].tzinfo is not None
    assert first["labels"] == {"team": "a"} and first["think"] is True
    assert first["needs_local_agent"] is False and first["allow_delegation"] is True
    assert inserted[0]._mapping["id"] == "j0"


async def test_in_lists_of_any_length_and_literals(store: Store) -> None:
    await seed(store)

    def ask(tx: Tx) -> dict[str, Any]:
        ids = {}
        for states in ([], ["queued"], ["queued", "done"], ["running", "assigned", "done"]):
            ids[",".join(states)] = [r.id for r in BY_STATE(tx.conn, {"states": states})]
        ids["not in none"] = [r.id for r in NOT_IN(tx.conn, {"providers": []})]
        ids["not in shell"] = [r.id for r in NOT_IN(tx.conn, {"providers": ["shell"]})]
        ids["active shell"] = ACTIVE(tx.conn).scalar_one()
        return ids

    assert await store.db.write(ask) == {
        "": [],
        "queued": ["j0"],
        "queued,done": ["j0", "j3"],
        "running,assigned,done": ["j1", "j2", "j3"],
        "not in none": ["j0", "j1", "j2", "j3"],
        "not in shell": ["j3"],
        "active shell": 2,
    }


async def test_rowcount_and_sqlalchemy_errors(store: Store) -> None:
    await seed(store)
    later = NOW + timedelta(hours=1)
    touched = await store.db.write(lambda tx: TOUCH(tx.conn, {"w_session": "s1", "v_now": later}))
    assert touched.rowcount == 1 and touched.all() == []
    row = await store.db.read(
        lambda conn: conn.execute(sa.select(jobs.c.updated_at).where(jobs.c.id == "j1")).one()
    )
    assert row.updated_at == later

    with pytest.raises(sa.exc.IntegrityError):
        await store.db.write(lambda tx: INSERT_SESSION(tx.conn, session_row(0)))
    with pytest.raises(sa.exc.CompileError, match="bogus"):
        await store.db.write(lambda tx: INSERT_SESSION(tx.conn, {**session_row(8), "bogus": 1}))
    with pytest.raises(sa.exc.IntegrityError):  # created_at is NOT NULL
        await store.db.write(lambda tx: driver(tx.conn, "INSERT INTO sessions (id) VALUES ('x')"))
    # The writer goes on after both.
    await store.db.write(lambda tx: INSERT_SESSION(tx.conn, session_row(9)))


async def test_a_savepoint_undoes_its_block_alone(store: Store) -> None:
    """``savepoint``: a failing block (here a statement the database refuses,
    which on PostgreSQL aborts the transaction up to the savepoint) is rolled
    back alone and its error goes on; the transaction keeps what came before
    and after it; a block that succeeds is kept; savepoints nest."""

    def body(tx: Tx) -> str:
        INSERT_SESSION(tx.conn, session_row(1))
        with pytest.raises(sa.exc.IntegrityError), savepoint(tx.conn, "t_outer"):
            INSERT_SESSION(tx.conn, session_row(2))
            with savepoint(tx.conn, "t_inner"):
                INSERT_SESSION(tx.conn, session_row(3))
            INSERT_SESSION(tx.conn, session_row(1))  # a duplicate id
        with savepoint(tx.conn, "t_kept"):
            INSERT_SESSION(tx.conn, session_row(4))
        INSERT_SESSION(tx.conn, session_row(5))
        return "committed"

    assert await store.db.write(body) == "committed"
    ids = await store.db.read(
        lambda conn: conn.execute(sa.select(sessions.c.id).order_by(sessions.c.id)).scalars().all()
    )
    assert ids == ["s1", "s4", "s5"]
