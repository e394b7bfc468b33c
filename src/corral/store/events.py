"""The session event log: append-only, ``seq`` without gaps per session,
writer-minted ``event_id`` for deduplication. Ephemeral events are published
live but never stored (and carry no seq)."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from corral.errors import SessionNotFound
from corral.jsontext import dumps
from corral.models import Event, NewEvent
from corral.protocol import topics
from corral.store.db import Database, Tx
from corral.store.prepared import Prepared, driver
from corral.store.schema import events, sessions


def append(
    tx: Tx,
    session_id: str,
    items: Sequence[NewEvent],
    *,
    job_id: str | None,
    epoch: int,
    now: datetime,
    dedup: bool = True,
    reserved: int | None = None,
    texts: Sequence[str] | None = None,
) -> tuple[list[Event], list[str]]:
    """Append ``items``; returns (stored events, duplicate event ids).

    ``reserved``: the caller's own update of the session row in this
    transaction already advanced ``last_seq`` to this value by the number of
    stored items (a turn's first events, a lease's ``job.state``), sparing
    the allocation's statement. ``texts``: the items' payloads as JSON text
    (``jsontext.dumps``), when the caller has them already.

    An event whose ``event_id`` is already in the log is a duplicate (a
    re-send), skipped; so is the second of two with one id in a batch. The
    session row is locked (by the seq allocation in ``_insert``) before the
    log is read, so two writers re-sending the same id cannot both miss it.
    Every append is deduplicated (an index probe per event inside the one
    insert); ``dedup=False`` (corral's own events, fresh ids) only spares a
    batch of live events the check that the session exists."""
    conn = tx.conn
    fresh: dict[str, int] = {}  # id -> the index of its first stored-kind item
    for i, item in enumerate(items):
        if not item.ephemeral:
            fresh.setdefault(item.event_id, i)
    # Live events only: the session must still exist.
    if not fresh and dedup and _SESSION(conn, {"session_id": session_id}).first() is None:
        raise SessionNotFound(f"no session {session_id}")
    seqs: dict[str, int] = {}
    if fresh:
        first = list(fresh.values())
        seqs = _insert(
            conn,
            session_id,
            [items[i] for i in first],
            [texts[i] for i in first] if texts is not None else None,
            job_id,
            epoch,
            now,
            reserved,
        )
    if len(seqs) == len(items):
        # Every item stored (no live event, no duplicate): the common batch,
        # its events built positionally (keywords cost twice as much).
        stored = [
            Event(
                session_id,
                seqs[item.event_id],
                item.event_id,
                job_id,
                item.type,
                epoch,
                item.payload,
                False,
                item.internal,
                now,
            )
            for item in items
        ]
        if stored:
            tx.notify(topics.session(session_id), stored)
        return stored, []
    published: list[Event] = []
    duplicates: list[str] = []
    for i, item in enumerate(items):
        seq = None
        if not item.ephemeral:
            seq = seqs.get(item.event_id)
            if seq is None or fresh[item.event_id] != i:
                duplicates.append(item.event_id)
                continue
        published.append(
            Event(
                session_id=session_id,
                seq=seq,
                event_id=item.event_id,
                job_id=job_id,
                type=item.type,
                epoch=epoch,
                payload=item.payload,
                ephemeral=item.ephemeral,
                internal=item.internal,
                created_at=now,
            )
        )
    if published:
        tx.notify(topics.session(session_id), published)
    return [e for e in published if e.seq is not None], duplicates


def _insert(
    conn: sa.Connection,
    session_id: str,
    items: list[NewEvent],
    texts: list[str] | None,
    job_id: str | None,
    epoch: int,
    now: datetime,
    reserved: int | None = None,
) -> dict[str, int]:
    """Store ``items`` (distinct ids) that are not in the log yet; their seqs by id.

    Before it, the allocation of the seqs (which also locks the session row
    on PostgreSQL), unless the caller ``reserved`` them; on PostgreSQL the
    allocation is part of the insert (``_allocating``: one round trip
    instead of two, ~0.2 ms; issue #18). Then one statement
    for the whole batch, each event at its allocated seq, an id already in
    the log skipped (``ON CONFLICT (event_id) DO NOTHING``); its row count
    says whether all went in, which is nearly always so. When some did not
    (a re-send), the batch's rows are deleted again and it is stored by the
    statement that skips known ids first and numbers only what is left, and the
    allocation is given back for the rest, so seqs stay gapless.
    Both statements' text is written once per batch size and run on the
    driver's cursor (``prepared.driver``): SQLAlchemy's per-row work (a bind
    processor per column and row) was most of a batch's CPU (issue #18).
    The first has no ``RETURNING`` and no window: half the other's
    time on SQLite (issue #18)."""
    n = len(items)
    dialect = conn.dialect
    at = _created_at(dialect)(now)
    if texts is None:
        texts = [dumps(item.payload) for item in items]
    last = reserved
    if last is None and dialect.name == "postgresql":
        # The allocation inside the insert: one round trip, not two.
        params = [n, at, session_id, *_rows(items, texts, 1), job_id, epoch]
        seqs = driver(conn, _allocating(n), params).all()
        if len(seqs) == n:
            base = min(seq for (seq,) in seqs) - 1
            return {item.event_id: seq for seq, item in enumerate(items, base + 1)}
        # Not all went in (a re-send), or no session: what it allocated.
        last = driver(conn, _LAST_SEQ, (session_id,)).scalar()
        if last is None:
            raise SessionNotFound(f"no session {session_id}")
        base = last - n
        if seqs:
            driver(conn, _UNDO[dialect.name], (session_id, base))
        return _renumbered(conn, session_id, items, texts, base, job_id, epoch, at)
    if last is None:
        last = driver(conn, _ALLOCATE, (n, at, session_id)).scalar()
    if last is None:
        raise SessionNotFound(f"no session {session_id}")
    base = last - n
    params = [*_rows(items, texts, base + 1), session_id, job_id, epoch, at]
    if driver(conn, _statement(dialect.name, n, renumber=False), params).rowcount == n:
        return {item.event_id: seq for seq, item in enumerate(items, base + 1)}
    driver(conn, _UNDO[dialect.name], (session_id, base))
    return _renumbered(conn, session_id, items, texts, base, job_id, epoch, at)


def _renumbered(
    conn: sa.Connection,
    session_id: str,
    items: list[NewEvent],
    texts: Sequence[str],
    base: int,
    job_id: str | None,
    epoch: int,
    at: Any,
) -> dict[str, int]:
    """A batch some of whose ids are in the log already, after ``base`` (its
    allocation, none of it in the log): what is new numbered from ``base``,
    the rest of the allocation given back."""
    n = len(items)
    dialect = conn.dialect
    params = [*_rows(items, texts, 1), session_id, base, job_id, epoch, at]
    rows = driver(conn, _statement(dialect.name, n, renumber=True), params).all()
    stored = {event_id: seq for seq, event_id in rows}
    if len(stored) < n:
        driver(conn, _GIVE_BACK[dialect.name], (base + len(stored), session_id))
    return stored


def _rows(items: Sequence[NewEvent], texts: Sequence[str], first: int) -> list[Any]:
    """The ``VALUES`` rows' parameters of a batch, in order, the first row's
    ``ord`` being ``first``: ord, event id, type, payload's JSON, internal."""
    params: list[Any] = []
    for i, (item, text) in enumerate(zip(items, texts, strict=True), first):
        params += (i, item.event_id, item.type, text, item.internal)
    return params


# A batch of live events only (a chat job's streamed pieces): its session's
# row, by a statement built once (issue #18).
_SESSION = Prepared(sa.select(sessions.c.id).where(sessions.c.id == sa.bindparam("session_id")))

# The seq allocation and its give-back, as plain driver statements: built with
# SQLAlchemy per call they were a tenth of the server's CPU per job (issue #18).
# ``created_at`` and ``updated_at`` share one column type, so one bind processor.
# (On PostgreSQL the allocation is part of the insert: ``_allocating``.)
_ALLOCATE = (
    "UPDATE sessions SET last_seq = last_seq + ?, updated_at = ? WHERE id = ? RETURNING last_seq"
)
_GIVE_BACK = {
    "sqlite": "UPDATE sessions SET last_seq = ? WHERE id = ?",
    "postgresql": "UPDATE sessions SET last_seq = CAST($1 AS integer) WHERE id = CAST($2 AS text)",
}
# PostgreSQL: the seq a batch's statement allocated up to (its row locked by it).
_LAST_SEQ = "SELECT last_seq FROM sessions WHERE id = CAST($1 AS text)"
# A batch's rows, which it stored above the seqs allocated before it.
_UNDO = {
    "sqlite": "DELETE FROM events WHERE session_id = ? AND seq > ?",
    "postgresql": "DELETE FROM events WHERE session_id = CAST($1 AS text) "
    "AND seq > CAST($2 AS integer)",
}


@functools.lru_cache(maxsize=8)
def _created_at(dialect: sa.Dialect) -> Callable[[datetime], Any]:
    """``created_at`` as the column's type binds it on ``dialect``."""
    process = events.c.created_at.type.dialect_impl(dialect).bind_processor(dialect)
    return process or (lambda value: value)


@functools.lru_cache(maxsize=128)
def _statement(dialect: str, n: int, *, renumber: bool) -> str:
    """The batch insert for ``n`` events, in the driver's parameter style:
    ``INSERT ... SELECT`` from a ``VALUES`` list of the batch (its rows'
    first value the seq, or their order when ``renumber``), then the values
    all rows share.

    ``renumber``: ids already stored are skipped before numbering (``NOT
    EXISTS``), seqs counted from a base by ``row_number()`` over what is
    left, ``RETURNING`` what went in."""
    if dialect == "postgresql":
        # Numbered in the order the parameters are given: the rows, then the rest.
        p = _pg_parameters(1)
        values = _pg_values(p, n)
        sid = p("text")
        base = p("integer") if renumber else ""
        job, epoch, at = p("text"), p("integer"), p("timestamptz")
        payload = "CAST(v.payload AS jsonb)"
    else:
        values = ", ".join(["(?, ?, ?, ?, ?)"] * n)
        sid, base, job, epoch, at = "?", "?" if renumber else "", "?", "?", "?"
        payload = "v.payload"
    if renumber:
        seq = f"{base} + row_number() OVER (ORDER BY v.ord)"
        where = "NOT EXISTS (SELECT 1 FROM events e WHERE e.event_id = v.event_id)"
        returning = " RETURNING seq, event_id"
    else:
        seq, where, returning = "v.ord", "true", ""  # WHERE: SQLite's upsert needs one
    # INSERT first, the WITH inside it: Python's sqlite3 counts the rows only
    # of a statement that starts with INSERT (a rowcount of -1 otherwise).
    return (
        "INSERT INTO events "
        "(session_id, seq, event_id, job_id, type, epoch, payload, internal, created_at) "
        f"WITH v(ord, event_id, type, payload, internal) AS (VALUES {values}) "
        f"SELECT {sid}, {seq}, v.event_id, {job}, "
        f"v.type, {epoch}, {payload}, v.internal, {at} FROM v "
        f"WHERE {where} ON CONFLICT (event_id) DO NOTHING{returning}"
    )


def _pg_parameters(first: int) -> Callable[[str], str]:
    """``p(cast)``: PostgreSQL's next positional parameter (``$first`` on), cast."""
    numbers = itertools.count(first)
    return lambda cast: f"CAST(${next(numbers)} AS {cast})"


def _pg_values(p: Callable[[str], str], n: int) -> str:
    """A batch's ``VALUES`` rows on PostgreSQL (the parameters ``_rows`` gives)."""
    return ", ".join(
        f"({p('integer')}, {p('text')}, {p('text')}, {p('text')}, {p('boolean')})" for _ in range(n)
    )


@functools.lru_cache(maxsize=128)
def _allocating(n: int) -> str:
    """PostgreSQL: the seq allocation and the batch insert for ``n`` events
    in one statement (the allocation a data-modifying ``WITH``; no session,
    no rows). Parameters: the count, the time, the session, the rows (their
    first value 1 to ``n``), the job, the epoch. ``RETURNING`` the seqs of
    what went in (an id already in the log is skipped)."""
    p = _pg_parameters(4)  # after the count, the time and the session
    values = _pg_values(p, n)
    job, epoch = p("text"), p("integer")
    return (
        "WITH a AS (UPDATE sessions SET last_seq = last_seq + CAST($1 AS integer), "
        "updated_at = CAST($2 AS timestamptz) WHERE id = CAST($3 AS text) RETURNING last_seq), "
        f"v(ord, event_id, type, payload, internal) AS (VALUES {values}) "
        "INSERT INTO events "
        "(session_id, seq, event_id, job_id, type, epoch, payload, internal, created_at) "
        "SELECT CAST($3 AS text), a.last_seq - CAST($1 AS integer) + v.ord, v.event_id, "
        f"{job}, v.type, {epoch}, CAST(v.payload AS jsonb), v.internal, "
        "CAST($2 AS timestamptz) FROM a, v ON CONFLICT (event_id) DO NOTHING RETURNING seq"
    )


class Events:
    def __init__(self, db: Database) -> None:
        self.db = db

    # Last: from here on in the class body, ``list`` names this method, not the builtin.
    async def list(
        self,
        session_id: str,
        *,
        since: int = 0,
        limit: int = 1000,
        job_id: str | None = None,
        internal: bool = False,
    ) -> list[Event]:
        """The session's first ``limit`` events after seq ``since`` (of job
        ``job_id``; with ``internal``, corral's internal ones too), in order.

        Read in ranges of seqs, never more rows than a range holds whatever
        the plan. PostgreSQL planned the open-ended query (``seq > since``)
        by its statistics: a page whose ``since`` lay among the seqs they
        had seen, of a session they had not, read and sorted every event
        after it (the first page of a 100,000-event session 24-34 ms instead
        of ~6; issue #18). First the ``limit`` seqs after ``since``: a whole
        page unless the log ends there, the filters or a gap left it short.
        Then, for a short page, the session's ``last_seq``, read after it:
        every event up to that is committed (a seq is allocated in the
        transaction that inserts its event), so the page goes on from its
        last event in ranges twice as long each time, up to it."""
        by_job = job_id is not None
        ranged = _listing(by_job, internal)

        def read(conn: sa.Connection) -> list[Event]:
            params: dict[str, Any] = {"session_id": session_id, "job_id": job_id}

            def between(low: int, high: int, most: int) -> list[Event]:
                params.update(since=low, upto=high, limit=most)
                return [Event(ephemeral=False, **row._asdict()) for row in ranged(conn, params)]

            page = between(since, since + limit, limit)
            if len(page) == limit:
                return page
            last = _LAST(conn, {"session_id": session_id}).scalar()
            low, span = (page[-1].seq or since) if page else since, limit
            while last is not None and low < last and len(page) < limit:
                high = min(low + span, last)
                page += between(low, high, limit - len(page))
                low, span = high, span * 2
            return page

        return await self.db.read(read)


_LAST = Prepared(sa.select(sessions.c.last_seq).where(sessions.c.id == sa.bindparam("session_id")))


@functools.cache
def _listing(by_job: bool, internal: bool) -> Prepared:
    """A session's events in a range of seqs, built once per shape (every SSE
    stream back-fills with one; issue #18)."""
    stmt = (
        sa.select(events)
        .where(
            events.c.session_id == sa.bindparam("session_id"),
            events.c.seq > sa.bindparam("since"),
            events.c.seq <= sa.bindparam("upto"),
        )
        .order_by(events.c.seq)
        .limit(sa.bindparam("limit"))
    )
    if by_job:
        stmt = stmt.where(events.c.job_id == sa.bindparam("job_id"))
    if not internal:
        stmt = stmt.where(events.c.internal.is_(False))
    return Prepared(stmt)
