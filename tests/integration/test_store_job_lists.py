"""GET /jobs pages walk an index in order (no sort, no scan of the table), and
the job counts kept by triggers equal COUNT(*) over the table after any change."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from corral.errors import CorralError
from corral.jobs import JobState
from corral.models import JobCreate, Runner
from corral.store import Caps, Store
from corral.store.jobs import board, dispatch, reads, rules
from corral.store.jobs.state import ACTIVE_STATES
from corral.store.schema import ACTIVE_PREDICATE, jobs, sessions
from corral.store.sessions import page_query
from corral.testing import job_row, session_row

N = 3000
STATES = ("done", "done", "done", "failed", "cancelled", "queued", "running")
PROVIDERS = ("shell", "shell", "gpu", "claude", "rare")
SOURCES = ("api", "folder", "cli", "tracker")
LABELS = (["bench"], ["bench", "nightly"], [], ["urgent"])


async def seed(store: Store, n: int = N) -> None:
    start = datetime.now(UTC) - timedelta(days=3)
    sess, rows = [], []
    for i in range(n):
        at = start + timedelta(seconds=i * 7)
        sid = uuid.uuid4().hex
        sess.append(session_row(sid, at))
        rows.append(
            job_row(
                sid,
                at,
                state=STATES[i % len(STATES)],
                provider=PROVIDERS[i % len(PROVIDERS)],
                command=f"make {i}",
                labels=LABELS[i % len(LABELS)],
                source=SOURCES[i % len(SOURCES)],
            )
        )

    def body(tx: Any) -> None:
        tx.conn.execute(sa.insert(sessions), sess)
        tx.conn.execute(sa.insert(jobs), rows)
        if tx.conn.dialect.name == "postgresql":
            tx.conn.execute(sa.text("ANALYZE jobs"))
            tx.conn.execute(sa.text("ANALYZE job_labels"))
            tx.conn.execute(sa.text("ANALYZE sessions"))

    await store.db.write(body)


FILTERS: dict[str, dict[str, Any]] = {
    "none": {},
    "state": {"states": [JobState.DONE]},
    "state-provider": {"states": [JobState.FAILED], "provider": "rare"},
    "provider": {"provider": "gpu"},
    "source": {"source": "tracker"},
    "label": {"label": "urgent"},
}


def _page(**filters: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"states": [], "session_id": None, "provider": None, "limit": 50}
    return {**base, "after": None, **filters}


def _bad(dialect: str, plan: list[str]) -> list[str]:
    """Plan lines that sort rows or read the whole jobs table."""
    if dialect == "sqlite":
        return [p for p in plan if "TEMP B-TREE" in p or p.strip() in ("SCAN jobs", "SCAN j")]
    # PostgreSQL may rightly sort a few matching rows found by an index (a rare
    # provider's failures) rather than walk the order: a sort of at most ten
    # pages' worth by its own estimate passes, a bigger one does not.
    return [
        p
        for p in plan
        if "Seq Scan on jobs" in p
        or (
            (p.strip().startswith("->  Sort") or p.startswith("Sort"))
            and int(re.search(r"rows=(\d+)", p).group(1)) > 500
        )  # type: ignore[union-attr]
    ]


@pytest.mark.parametrize("name", list(FILTERS), ids=list(FILTERS))
async def test_each_filter_walks_an_index(store: Store, name: str) -> None:
    await seed(store)
    first = await store.jobs.list(**FILTERS[name], limit=50)
    assert len(first) == 50
    after = first[-1]
    for keyset in (None, after):
        stmt = reads.page_query(**_page(**FILTERS[name], after=keyset))
        plan = await store.db.read(lambda c, s=stmt: reads.explain(c, s))
        assert not _bad(store.db.dialect, plan), "\n".join(plan)
        assert any("ix_job" in p for p in plan), "\n".join(plan)


@pytest.mark.parametrize("keyset", [False, True], ids=["first-page", "keyset"])
async def test_several_states_merge_one_walk_each(store: Store, keyset: bool) -> None:
    await seed(store)
    states = [JobState.FAILED, JobState.CANCELLED]
    after = (await store.jobs.list(states=states, limit=50))[-1] if keyset else None
    stmt = reads.page_query(**_page(states=states, after=after))
    plan = await store.db.read(lambda c: reads.explain(c, stmt))
    text = "\n".join(plan)
    if store.db.dialect == "sqlite":
        walks = [p for p in plan if "ix_jobs_state_created_at_id (state=?" in p]
        assert len(walks) == 2, text
        # Only the pages (50 rows each) are sorted, to be merged, never jobs.
        assert sum("TEMP B-TREE" in p for p in plan) <= 2, text
        assert not any(p.strip().startswith("SCAN jobs") for p in plan), text
        assert not any(p.strip() == "SCAN jobs" for p in plan), text
    else:
        assert text.count("ix_jobs_state_created_at_id") == 2, text
        assert "Seq Scan on jobs" not in text, text
    # And the merged page is the right one.
    got = await store.jobs.list(states=[JobState.FAILED, JobState.CANCELLED], limit=40)
    expected = await store.db.read(
        lambda c: [
            r.id
            for r in c.execute(
                sa.select(jobs.c.id)
                .where(jobs.c.state.in_(["failed", "cancelled"]))
                .order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
                .limit(40)
            )
        ]
    )
    assert [j.id for j in got] == expected
    nxt = await store.jobs.list(
        states=[JobState.FAILED, JobState.CANCELLED], limit=40, before=got[-1].id
    )
    assert nxt[0].created_at < got[-1].created_at


async def test_label_pages_follow_the_labels_table(store: Store) -> None:
    await seed(store, 400)
    got = await store.jobs.list(label="nightly", limit=30)
    assert len(got) == 30 and all("nightly" in j.labels for j in got)
    assert got == sorted(got, key=lambda j: (j.created_at, j.id), reverse=True)
    rest = await store.jobs.list(label="nightly", limit=500, before=got[-1].id)
    assert len(got) + len(rest) == 100
    assert not {j.id for j in got} & {j.id for j in rest}


async def _table_counts(store: Store) -> dict[tuple[str, str], int]:
    stmt = sa.select(jobs.c.state, jobs.c.provider, sa.func.count()).group_by(
        jobs.c.state, jobs.c.provider
    )
    return await store.db.read(lambda c: {(s, p): int(n) for s, p, n in c.execute(stmt)})


async def test_counts_follow_every_change(store: Store) -> None:
    await seed(store, 200)
    assert await store.jobs.counts_by_provider() == await _table_counts(store)
    created = [(await store.jobs.create(JobCreate(command="true")))[0] for _ in range(3)]
    await store.jobs.cancel(created[0].id, by="test")

    def move(tx: Any) -> None:
        # Any UPDATE counts, not only the store's own operations.
        tx.conn.execute(sa.update(jobs).where(jobs.c.state == "running").values(state="done"))
        tx.conn.execute(sa.update(jobs).where(jobs.c.provider == "rare").values(provider="gpu"))

    await store.db.write(move)
    expected = await _table_counts(store)
    assert await store.jobs.counts_by_provider() == expected
    await store.jobs.compact_counts()
    assert await store.jobs.counts_by_provider() == expected
    by_state: dict[str, int] = {}
    for (state, _), n in expected.items():
        by_state[state] = by_state.get(state, 0) + n
    assert await store.jobs.counts() == by_state
    if store.db.dialect == "postgresql":
        # Folded: one row per key.
        rows = await store.db.read(
            lambda c: c.execute(sa.text("SELECT COUNT(*) FROM job_counts")).scalar_one()
        )
        assert rows == len(expected)


async def test_counts_survive_folds_racing_state_changes(store: Store) -> None:
    """Folding the +1/-1 rows while other transactions change states loses
    nothing (PostgreSQL: each row is deleted and summed by one fold only)."""
    created = [(await store.jobs.create(JobCreate(command="true")))[0] for _ in range(40)]

    async def fold(stop: asyncio.Event) -> int:
        folds = 0
        while not stop.is_set():
            await store.jobs.compact_counts()
            folds += 1
            await asyncio.sleep(0)
        return folds

    stop = asyncio.Event()
    folding = [asyncio.create_task(fold(stop)) for _ in range(2)]
    try:
        await asyncio.gather(cancel_all(store, created), cancel_all(store, created[::-1]))
    finally:
        stop.set()
    stop.set()
    assert sum(await asyncio.gather(*folding)) > 0
    assert await store.jobs.counts_by_provider() == await _table_counts(store)
    await store.jobs.compact_counts()
    assert await store.jobs.counts_by_provider() == await _table_counts(store)


async def cancel_all(store: Store, created: list[Any]) -> None:
    """One of two writers on the same jobs: each cancel either wins or finds the
    job cancelled already, never counts twice."""
    for job in created:
        with contextlib.suppress(CorralError):
            await store.jobs.cancel(job.id, by="other")


async def test_several_states_with_a_label(store: Store) -> None:
    await seed(store, 400)
    got = await store.jobs.list(states=[JobState.DONE, JobState.FAILED], label="bench", limit=30)
    assert len(got) == 30
    assert all("bench" in j.labels and j.state in ("done", "failed") for j in got)
    assert got == sorted(got, key=lambda j: (j.created_at, j.id), reverse=True)


async def test_session_pages_walk_an_index_newest_first(store: Store) -> None:
    """GET /sessions and /ui/sessions: keyset pages in order, each session
    with its last turn, found by walking the (created_at, id) index."""
    await seed(store, 500)
    first = await store.sessions.page(limit=50)
    second = await store.sessions.page(limit=50, before=first[-1].session.id)
    rows = first + second
    keys = [(r.session.created_at, r.session.id) for r in rows]
    assert keys == sorted(keys, reverse=True) and len(set(keys)) == 100
    job_of = await store.db.read(
        lambda c: dict(c.execute(sa.select(jobs.c.session_id, jobs.c.id)).all())
    )
    assert all(r.job_id == job_of[r.session.id] and r.state for r in rows)
    empty = await store.sessions.create("nothing yet")
    top = (await store.sessions.page(limit=1))[0]
    assert top.session.id == empty.id and top.job_id is None and top.what == ""
    for after in (None, first[-1].session):
        stmt = page_query(50, after)
        plan = await store.db.read(lambda c, s=stmt: reads.explain(c, s))
        assert not any(
            "TEMP B-TREE" in p or "Seq Scan on sessions" in p or p.strip() == "SCAN sessions"
            for p in plan
        ), "\n".join(plan)
        assert any("ix_sessions_created_at_id" in p for p in plan), "\n".join(plan)


async def _stored(
    store: Store,
    n: int,
    job: Callable[[int], dict[str, Any]],
    at: datetime,
    *,
    analyze: bool = True,
) -> list[dict[str, Any]]:
    """``n`` jobs written straight into the database, one session each: a
    finished ``shell`` job at ``at`` changed by ``job(i)``'s columns (then
    PostgreSQL's statistics, as autovacuum would take them, unless not
    ``analyze``). Returns the jobs' rows."""
    sids = [uuid.uuid4().hex for _ in range(n)]
    sess = [session_row(sid, at) for sid in sids]
    rows = [job_row(sid, at, **job(i)) for i, sid in enumerate(sids)]

    def body(tx: Any) -> None:
        tx.conn.execute(sa.insert(sessions), sess)
        tx.conn.execute(sa.insert(jobs), rows)
        if analyze and tx.conn.dialect.name == "postgresql":
            tx.conn.execute(sa.text("ANALYZE jobs"))

    await store.db.write(body)
    return rows


async def _lease_plan(store: Store, runner: Runner, room: int) -> list[str]:
    """The plan of the lease's candidates statement for ``runner``'s
    ``shell`` queue, with ``room`` places (read through the store)."""

    def plan(conn: sa.Connection) -> list[str]:
        facts = board.Board(conn, Caps(), datetime.now(UTC), runner=runner, max_jobs=room, ttl=30)
        facts.read_lease_facts()
        stmt = dispatch._candidates().params(provider="shell", room=room, **rules.params(facts))
        return reads.explain(conn, stmt)

    return await store.db.read(plan)


async def test_a_lease_counts_its_runner_s_active_jobs_from_an_index(store: Store) -> None:
    """Every lease counts the jobs its runner holds (``board._HELD``): the
    index over (runner_id, state) reaches the active ones directly, whatever
    number of finished jobs the runner ran before."""
    runner_id = uuid.uuid4().hex
    at = datetime.now(UTC)
    await _stored(
        store,
        2000,
        lambda i: {"state": "running" if i < 3 else "done", "runner_id": runner_id},
        at,
    )
    held = board._HELD
    assert await store.db.read(lambda c: held(c, {"runner_id": runner_id}).scalar_one()) == 3
    plan = await store.db.read(
        lambda c: reads.explain(c, held.statement.params(runner_id=runner_id))  # type: ignore[arg-type]
    )
    text = "\n".join(plan)
    assert "ix_jobs_runner_id_state" in text, text
    if store.db.dialect == "sqlite":
        assert "(runner_id=? AND state=?)" in text, text
    else:  # the index holds the active jobs only (migration 0029): no state filter
        assert not [line for line in plan if "Filter" in line and "state" in line], text


async def test_a_lease_counts_its_runner_s_active_jobs_when_the_statistics_are_old(
    store: Store,
) -> None:
    """The count of the jobs a runner holds reads its active ones only, also
    when they and the runner's 5,000 finished jobs came after PostgreSQL's
    last ANALYZE (of 3,000 finished jobs of no runner). Over (runner_id,
    state) with the runner unknown to the statistics, PostgreSQL 15 kept the
    state list as a filter (a list on the index's second column costs one
    descent per item) and walked every job the runner ever ran; the index is
    partial there, over the active jobs."""
    at = datetime.now(UTC) - timedelta(days=1)
    await _stored(store, 3000, lambda i: {}, at)
    runner = await store.runners.register(
        name="r", key_id="k", hostname=None, providers=["shell"], labels=[], slots=60
    )
    await _stored(
        store,
        5050,
        lambda i: {"state": "running" if i < 50 else "done", "runner_id": runner.id},
        at,
        analyze=False,
    )
    held = board._HELD
    params = {"runner_id": runner.id, "now": datetime.now(UTC)}
    assert await store.db.read(lambda c: held(c, params).scalar_one()) == 50
    for stmt in (held, board._LEASE_FACTS):
        plan = await store.db.read(lambda c: stmt.explain(c, params))  # noqa: B023
        text = "\n".join(plan)
        assert "ix_jobs_runner_id_state" in text, text
        assert not [line for line in plan if "Filter" in line and "state" in line], text
        if store.db.is_sqlite:
            assert "(runner_id=? AND state=?)" in text, text
    assert set(re.findall(r"'(\w+)'", ACTIVE_PREDICATE)) == set(ACTIVE_STATES)


async def test_a_lease_walks_only_the_queue_of_the_provider_it_takes(store: Store) -> None:
    """Jobs queued for a provider the runner does not take are not walked:
    a lease reads its provider's queue from the index over (state, behind,
    provider, priority, created_at, id), in the index's order, and stops at its room
    (with one index over every provider, a lease behind 5,000 jobs queued for
    another one took 10-14 ms on SQLite instead of ~0.6; issue #18)."""
    at = datetime.now(UTC) - timedelta(days=1)
    # 2,000 jobs queued for a provider the runner does not take, all older.
    await _stored(
        store,
        2000,
        lambda i: {
            "state": "queued",
            "provider": "elsewhere",
            "created_at": at + timedelta(seconds=i),
        },
        at,
    )
    mine, _ = await store.jobs.create(JobCreate(command="true"))
    runner = await store.runners.register(
        name="r", key_id="k", hostname=None, providers=["shell"], labels=[], slots=4
    )

    text = "\n".join(await _lease_plan(store, runner, 4))
    assert "ix_jobs_state_behind_later_provider_priority_created_at_id" in text, text
    if store.db.dialect == "sqlite":
        assert "(state=? AND behind=? AND later=? AND provider=?)" in text, text
    assert "TEMP B-TREE" not in text and "Sort" not in text, text
    assert [lease.job.id for lease in await store.jobs.lease(runner, 4, ttl=30)] == [mine.id]


async def test_a_lease_behind_thousands_of_jobs_is_not_compiled(store: Store) -> None:
    """PostgreSQL compiles (JIT) a statement estimated above
    ``jit_above_cost`` at every execution: a version of the lease's walk
    tried in issue #18 (the turn lock as subqueries per row), behind 5,000
    jobs scheduled for tomorrow, was estimated at 125,000 and spent 58 ms
    compiling to run for 3 ms. corral's connections turn JIT off, whatever
    a statement's estimate."""
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    await _stored(
        store,
        5000,
        lambda i: {"state": "queued", "run_at": tomorrow, "available_at": tomorrow},
        datetime.now(UTC) - timedelta(hours=1),
    )
    mine, _ = await store.jobs.create(JobCreate(command="true"))
    runner = await store.runners.register(
        name="r", key_id="k", hostname=None, providers=["shell"], labels=[], slots=16
    )

    text = "\n".join(await _lease_plan(store, runner, 16))
    assert "JIT" not in text, text
    if store.db.dialect == "postgresql":  # on every connection, whatever the estimate
        assert await store.db.read(lambda c: c.exec_driver_sql("SHOW jit").scalar()) == "off"
        shown = await store.db.write(lambda tx: tx.conn.exec_driver_sql("SHOW jit").scalar())
        assert shown == "off"
    assert [lease.job.id for lease in await store.jobs.lease(runner, 16, ttl=30)] == [mine.id]


async def test_a_lease_walks_its_queue_in_order_when_the_statistics_are_old(store: Store) -> None:
    """The queue grows faster than PostgreSQL's statistics follow (ANALYZE
    ran when nothing was queued): the lease still walks the queue's index in
    order and stops at its room. A version of the turn lock tried in issue
    #18 (subqueries per row instead of ``NOT EXISTS``) failed this: estimated
    to pass almost no row, PostgreSQL scanned every queued job through a
    bitmap and sorted them (35-50 ms a lease behind 1,000 queued during the
    burst on 100,000 stored), or searched the earlier turn among every
    queued job instead of the session's."""
    at = datetime.now(UTC) - timedelta(days=1)
    await _stored(store, 3000, lambda i: {"created_at": at + timedelta(seconds=i)}, at)
    queued = {"state": "queued", "provider": "shell"}
    rows = await _stored(
        store,
        1000,
        lambda i: queued | {"created_at": at + timedelta(hours=2, seconds=i)},
        at,
        analyze=False,
    )
    runner = await store.runners.register(
        name="r", key_id="k", hostname=None, providers=["shell"], labels=[], slots=16
    )

    text = "\n".join(await _lease_plan(store, runner, 16))
    assert "ix_jobs_state_behind_later_provider_priority_created_at_id" in text, text
    assert "Sort" not in text and "Bitmap" not in text and "TEMP B-TREE" not in text, text
    leased = await store.jobs.lease(runner, 16, ttl=30)
    assert [lease.job.id for lease in leased] == [r["id"] for r in rows[:16]]
