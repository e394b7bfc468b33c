"""A worker's event batch goes into the log in one insert, deduplicated in SQL
(``store/events.py``): what it stores, skips and announces, on both databases."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from corral import redact
from corral.auth import WorkerClaims
from corral.errors import SessionNotFound
from corral.models import JobCreate, NewEvent, Outcome, Runner
from corral.protocol import topics
from corral.store import Store, migrate
from corral.store import events as events_module
from corral.store.jobs import now_utc
from corral.store.schema import events as event_rows
from corral.store.schema import jobs, sessions
from corral.testing import job_row, session_row
from corral.testing import worker_claims as claims


async def _running(store: Store, runner: Runner) -> Any:
    await store.jobs.create(JobCreate(prompt="x"))
    [lease] = await store.jobs.lease(runner, 1, ttl=30)
    c = claims(lease, runner)
    await store.jobs.start(c)
    return c


async def test_a_batch_skips_known_ids_and_its_own_repeats_and_leaves_no_gap(
    store: Store, runner: Runner
) -> None:
    c = await _running(store, runner)
    first, dups = await store.jobs.append_events(
        c, [NewEvent(event_id=f"a{i}", type="output", payload={"i": i}) for i in range(3)]
    )
    assert dups == [] and [e.event_id for e in first] == ["a0", "a1", "a2"]
    base = first[0].seq
    assert [e.seq for e in first] == [base, base + 1, base + 2]

    with store.bus.subscribe(topics.session(c.session_id)) as sub:
        stored, dups = await store.jobs.append_events(
            c,
            [
                NewEvent(event_id="a1", type="output", payload={"i": "again"}),  # stored before
                NewEvent(event_id="b1", type="output", payload={"n": 1}),
                NewEvent(event_id="live", type="delta", payload={"t": "x"}, ephemeral=True),
                NewEvent(event_id="b1", type="output", payload={"n": "second"}),  # repeat
                NewEvent(event_id="b2", type="output", payload={"n": 2}, internal=True),
                NewEvent(event_id="a2", type="output"),  # stored before
            ],
        )
        [published] = await sub.get(1)
    assert dups == ["a1", "b1", "a2"]
    assert [(e.event_id, e.seq, e.payload, e.internal) for e in stored] == [
        ("b1", base + 3, {"n": 1}, False),
        ("b2", base + 4, {"n": 2}, True),
    ]
    # Subscribers hear the stored ones and the live one, in batch order.
    assert isinstance(published, list)
    assert [(e.event_id, e.seq) for e in published] == [
        ("b1", base + 3),
        ("live", None),
        ("b2", base + 4),
    ]
    log = await store.events.list(c.session_id, internal=True)
    assert [e.seq for e in log] == list(range(1, base + 5))
    assert [e.payload for e in log if e.event_id in ("a1", "b1")] == [{"i": 1}, {"n": 1}]

    # Nothing new: the seqs given out for the batch are given back.
    stored, dups = await store.jobs.append_events(
        c, [NewEvent(event_id="b2", type="output"), NewEvent(event_id="a0", type="output")]
    )
    assert stored == [] and dups == ["b2", "a0"]
    after, _ = await store.jobs.append_events(c, [NewEvent(event_id="c1", type="output")])
    assert [e.seq for e in after] == [base + 5]
    assert (await store.sessions.get(c.session_id)).last_seq == base + 5


async def test_payloads_are_stored_exactly(store: Store, runner: Runner) -> None:
    """The batch's payloads go in as their JSON text: floats keep every digit,
    big integers stay integers, text is not re-encoded."""
    c = await _running(store, runner)
    payloads: list[dict[str, Any]] = [
        {"t": 1764768307.1234567, "small": 5e-324, "neg": -0.0},
        {"big": 2**62 + 1, "nested": {"list": [1, "two", None, True, {"x": []}]}},
        {"text": 'quote " backslash \\ newline \n tab \t é 中 🐎', "": ""},
        {},
    ]
    stored, _ = await store.jobs.append_events(
        c, [NewEvent(type="output", payload=p) for p in payloads]
    )
    log = await store.events.list(c.session_id, since=stored[0].seq - 1)
    assert [e.payload for e in log] == payloads
    assert [e.created_at for e in log] == [e.created_at for e in stored]


async def test_a_batch_of_one_thousand(store: Store, runner: Runner) -> None:
    """The largest batch the protocol takes is one statement too."""
    c = await _running(store, runner)
    items = [NewEvent(type="output", payload={"i": i}) for i in range(1000)]
    stored, dups = await store.jobs.append_events(c, items)
    assert dups == [] and len(stored) == 1000
    log = await store.events.list(c.session_id, since=stored[0].seq - 1, limit=1000)
    assert [e.payload["i"] for e in log] == list(range(1000))


async def test_a_fresh_batch_is_one_insert_and_a_resend_takes_the_renumbering_path(
    store: Store, runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The statements a batch runs: a batch of new ids is stored by the seq
    allocation and one insert whose row count says all went in (on
    PostgreSQL one statement does both); only a batch with a known id undoes
    that insert and stores what is new at gapless seqs.
    (A row count the driver does not report, as Python's sqlite3 gives none
    to a statement starting with ``WITH``, sends every batch down the slow path.)"""
    sqlite = store.db.is_sqlite
    c = await _running(store, runner)
    ran: list[str] = []
    driver = events_module.driver

    def recording(conn: Any, sql: str, params: Any = ()) -> Any:
        ran.append(sql.split(" ", 1)[0] + (" RETURNING" if "RETURNING seq" in sql else ""))
        return driver(conn, sql, params)

    monkeypatch.setattr(events_module, "driver", recording)
    first, _ = await store.jobs.append_events(
        c, [NewEvent(event_id=f"f{i}", type="output", payload={"i": i}) for i in range(5)]
    )
    assert ran == (["UPDATE", "INSERT"] if sqlite else ["WITH RETURNING"])
    ran.clear()
    again, dups = await store.jobs.append_events(
        c,
        [
            NewEvent(event_id="f1", type="output"),
            NewEvent(event_id="g1", type="output", payload={"g": 1}),
        ],
    )
    slow = ["DELETE", "INSERT RETURNING", "UPDATE"]
    assert ran == (["UPDATE", "INSERT", *slow] if sqlite else ["WITH RETURNING", "SELECT", *slow])
    assert dups == ["f1"] and [e.seq for e in again] == [first[-1].seq + 1]
    log = await store.events.list(c.session_id, since=first[0].seq - 1)
    assert log[: len(first)] == first  # every field, as read back
    assert [(e.event_id, e.seq) for e in log] == [
        *((e.event_id, e.seq) for e in first),
        ("g1", first[-1].seq + 1),
    ]
    # Every id known: nothing stored, the whole allocation given back.
    _, dups = await store.jobs.append_events(
        c, [NewEvent(event_id="f2", type="output"), NewEvent(event_id="g1", type="output")]
    )
    after, _ = await store.jobs.append_events(c, [NewEvent(event_id="h1", type="output")])
    assert dups == ["f2", "g1"] and [e.seq for e in after] == [first[-1].seq + 2]


async def test_the_log_loses_its_session_key_and_keeps_its_events(empty_db_url: str) -> None:
    """Migration 0024 drops the log's foreign key to sessions (SQLite copies the
    table to do so): the events stored before it stay, in order, and the log
    takes batches after it."""
    store = Store(empty_db_url)
    try:
        await migrate.upgrade(store.db, "0023")
        runner = await store.runners.register(
            name="r1", key_id="k1", hostname="h", providers=["shell"], labels=[], slots=1
        )
        # A running job and its first events, written as the tables stood at
        # 0023 (today's job path writes columns added since).
        at, sid = now_utc(), uuid.uuid4().hex
        job = job_row(sid, at, state="running", runner_id=runner.id, started_at=at)
        del job["behind"], job["later"]  # migrations 0027, 0028
        before = [uuid.uuid4().hex for _ in range(3)]
        logged = [
            {
                "session_id": sid,
                "seq": i + 1,
                "event_id": event_id,
                "job_id": job["id"],
                "type": "output",
                "epoch": 1,
                "payload": {"i": i},
                "internal": False,
                "created_at": at,
            }
            for i, event_id in enumerate(before)
        ]

        def seed(tx: Any) -> None:
            tx.conn.execute(sa.insert(sessions), [session_row(sid, at, last_seq=3)])
            tx.conn.execute(sa.insert(jobs), [job])
            tx.conn.execute(sa.insert(event_rows), logged)

        await store.db.write(seed)
        c = WorkerClaims(job["id"], sid, 1, runner.id)

        def keys(conn: Any) -> list[str]:
            return [fk["referred_table"] for fk in sa.inspect(conn).get_foreign_keys("events")]

        assert await store.db.read(keys) == ["sessions"]
        await store.migrate()
        assert await store.db.read(keys) == []
        after, _ = await store.jobs.append_events(c, [NewEvent(type="output", payload={"i": 3})])
        log = await store.events.list(c.session_id, internal=True)
        assert [e.seq for e in log] == list(range(1, after[0].seq + 1))
        assert [e.payload for e in log if e.type == "output"] == [{"i": i} for i in range(4)]
        assert [e.event_id for e in log][-4:-1] == before
    finally:
        await store.close()


async def test_a_known_secret_is_redacted_in_what_is_stored_and_announced(
    store: Store, runner: Runner
) -> None:
    """Only payloads whose JSON text may hold a secret are walked (a secret
    JSON escapes is found too); what is stored, returned and announced is
    redacted, and the log's JSON is that of the redacted payload."""
    secret = 'sk-"quoted"-' + uuid.uuid4().hex
    redact.add(secret)
    c = await _running(store, runner)
    with store.bus.subscribe(topics.session(c.session_id)) as sub:
        stored, _ = await store.jobs.append_events(
            c,
            [
                NewEvent(type="output", payload={"line": "clean"}),
                NewEvent(type="output", payload={"nested": [{"line": f"key={secret}!"}]}),
            ],
        )
        [published] = await sub.get(1)
    want = [{"line": "clean"}, {"nested": [{"line": "key=[redacted]!"}]}]
    assert [e.payload for e in stored] == want
    assert isinstance(published, list) and [e.payload for e in published] == want
    log = await store.events.list(c.session_id, since=stored[0].seq - 1)
    assert [e.payload for e in log] == want
    # The last events a completion carries go the same way.
    await store.jobs.complete(
        c, Outcome(status="done"), [NewEvent(type="output", payload={"line": secret})]
    )
    last = await store.events.list(c.session_id, since=log[-1].seq)
    assert [e.payload for e in last if e.type == "output"] == [{"line": "[redacted]"}]


async def test_a_batch_of_live_events_only_needs_its_session(store: Store, runner: Runner) -> None:
    """Live events (a chat job's streamed pieces) are announced, not stored,
    and only while their session exists."""
    c = await _running(store, runner)
    piece = NewEvent(type="chat.delta", payload={"text": "he"}, ephemeral=True)
    with store.bus.subscribe(topics.session(c.session_id)) as sub:
        stored, dups = await store.jobs.append_events(c, [piece])
        [published] = await sub.get(1)
    assert stored == [] and dups == []
    assert isinstance(published, list)
    assert [(e.event_id, e.seq, e.payload) for e in published] == [
        (piece.event_id, None, {"text": "he"})
    ]

    def nowhere(tx: Any) -> Any:
        return events_module.append(
            tx, "no-such-session", [piece], job_id=None, epoch=0, now=datetime.now(UTC)
        )

    with pytest.raises(SessionNotFound):
        await store.db.write(nowhere)


async def test_events_for_a_session_that_does_not_exist_are_refused(store: Store) -> None:
    """Stored events need their session: the seq allocation finds no row
    (on PostgreSQL inside the insert's own statement) and nothing is stored."""

    def nowhere(tx: Any) -> Any:
        return events_module.append(
            tx,
            "no-such-session",
            [NewEvent(type="output", payload={"i": i}) for i in range(3)],
            job_id=None,
            epoch=0,
            now=datetime.now(UTC),
        )

    with pytest.raises(SessionNotFound):
        await store.db.write(nowhere)

    def count(conn: sa.Connection) -> int:
        stmt = sa.text("SELECT count(*) FROM events WHERE session_id = 'no-such-session'")
        return int(conn.execute(stmt).scalar_one())

    assert await store.db.read(count) == 0


def _seed_log(session_id: str, seqs: list[int], job_of: Any, at: datetime) -> Any:
    """A write body: session ``session_id`` with events at ``seqs`` (its
    ``last_seq`` the highest), job ``job_of(seq)``, every third internal."""

    def seed(tx: Any) -> None:
        tx.conn.execute(sa.insert(sessions), [session_row(session_id, at, last_seq=max(seqs))])
        rows = [
            {
                "session_id": session_id,
                "seq": seq,
                "event_id": f"{session_id}-{seq}",
                "job_id": job_of(seq),
                "type": "output",
                "epoch": 1,
                "payload": {"seq": seq},
                "internal": seq % 3 == 0,
                "created_at": at,
            }
            for seq in seqs
        ]
        tx.conn.execute(sa.insert(event_rows), rows)

    return seed


async def test_a_page_is_the_first_events_after_since_across_filters_and_gaps(
    store: Store,
) -> None:
    """``events.list`` reads a page in ranges of seqs (issue #18): whatever
    the filters leave or a gap skips, a page is the first ``limit`` matching
    events after ``since``, in order."""
    at = datetime.now(UTC)
    seqs = [s for s in range(1, 3001) if not 1001 <= s <= 1500]  # a gap of 500

    def job_of(seq: int) -> str:
        return "b" if seq <= 10 or seq > 2900 else "a"

    await store.db.write(_seed_log("s-pages", seqs, job_of, at))
    for since, limit, job, internal in [
        (0, 100, None, True),
        (950, 100, None, True),  # across the gap
        (0, 1000, None, False),
        (2990, 1000, None, True),  # the log's end
        (3000, 10, None, True),  # nothing after the last
        (0, 50, "b", True),  # 10 at the start, the rest 2,890 seqs later
        (5, 20, "b", False),
        (0, 5, "c", True),  # no such job's events
    ]:
        page = await store.events.list(
            "s-pages", since=since, limit=limit, job_id=job, internal=internal
        )
        want = [
            s
            for s in seqs
            if s > since and (job is None or job_of(s) == job) and (internal or s % 3 != 0)
        ][:limit]
        assert [e.seq for e in page] == want, (since, limit, job, internal)
        assert all(e.payload == {"seq": e.seq} and not e.ephemeral for e in page)
    assert await store.events.list("no-such-session") == []


async def test_a_page_reads_a_range_whatever_postgresql_has_seen(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session the statistics have not seen: PostgreSQL planned the
    open-ended query (``seq > since``) as a read and a sort of the session's
    whole tail, 20,000 events for a page of 1,000 (issue #18). Every
    statement of a page reads a range of seqs (``EXPLAIN ANALYZE``): the
    page's own, then, for a page the filters left short, the next ones."""
    store = await Store.open(pg_url)
    try:
        at = datetime.now(UTC)
        for i in range(200):  # what the last ANALYZE saw: sessions of 50 events
            await store.db.write(_seed_log(f"s-{i}", list(range(1, 51)), lambda s: "a", at))
        await store.db.write(lambda tx: tx.conn.execute(sa.text("ANALYZE events")))
        await store.db.write(_seed_log("s-big", list(range(1, 20001)), lambda s: "a", at))

        listing, plans = events_module._listing, []

        def spied(by_job: bool, internal: bool) -> Any:
            stmt = listing(by_job, internal)

            def run(conn: sa.Connection, params: dict[str, Any]) -> Any:
                plans.append("\n".join(stmt.explain(conn, params, analyze=True)))
                return stmt(conn, params)

            return run

        monkeypatch.setattr(events_module, "_listing", spied)
        pages = [
            (0, True, list(range(1, 1001))),
            (30, True, list(range(31, 1031))),
            (19500, True, list(range(19501, 20001))),  # the log ends within the page
            (0, False, [s for s in range(1, 1502) if s % 3][:1000]),  # short: a second range
        ]
        for since, internal, want in pages:
            plans.clear()
            page = await store.events.list("s-big", since=since, limit=1000, internal=internal)
            assert [e.seq for e in page] == want
            assert plans
            for plan in plans:
                read = [int(n) for n in re.findall(r"actual time=\S+ rows=(\d+)", plan)]
                assert read and max(read) <= 1000, plan  # each range here: 1,000 seqs
    finally:
        await store.close()
