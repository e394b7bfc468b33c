"""Chat channels in the store, on SQLite and PostgreSQL: a conversation is a
session (a /new starts the next one, once per message), a chat turn that
ends owes its reply in the same transaction, the outbox is due in order per
conversation and never owes one thing twice."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from corral.models import JobCreate, Outcome
from corral.store import Store, chat
from corral.store.chat import Target
from corral.store.jobs import reads
from corral.store.schema import chat_outbox
from corral.testing import worker_claims as claims

ALICE = Target("tg", "42/u/7", "42", "7")
BOB = Target("tg", "42/u/8", "42", "8")


def now() -> datetime:
    return datetime.now(UTC)


async def test_a_conversation_is_one_session_until_new(store: Store) -> None:
    first, created = await store.chat.session(ALICE, title="tg: 42", now=now())
    assert created
    assert await store.chat.session(ALICE, title="tg: 42", now=now()) == (first, False)
    assert (await store.chat.session(BOB, title="tg: 42", now=now()))[0] != first
    assert await store.chat.current("tg", ALICE.conversation) == first
    assert await store.chat.target(first) == ALICE

    fresh, created = await store.chat.session(ALICE, title="tg: 42", now=now(), started_by="m9")
    assert created and fresh != first
    # The same /new delivered again starts nothing more.
    assert await store.chat.session(ALICE, title="x", now=now(), started_by="m9") == (fresh, False)
    assert await store.chat.current("tg", ALICE.conversation) == fresh


async def test_concurrent_first_messages_share_one_session(store: Store) -> None:
    got = await asyncio.gather(*(store.chat.session(BOB, title="t", now=now()) for _ in range(8)))
    assert len({session for session, _ in got}) == 1
    assert sum(created for _, created in got) == 1


async def test_a_chat_turn_owes_its_reply_when_it_ends(store: Store) -> None:
    session, _ = await store.chat.session(ALICE, title="t", now=now())
    runner = await store.runners.register(
        name="r", key_id="k", hostname=None, providers=["shell"], labels=[], slots=2
    )
    job, _ = await store.jobs.create(
        JobCreate(prompt="hi", session_id=session, source="chat", source_ref="100")
    )
    other, _ = await store.jobs.create(JobCreate(prompt="not from a chat", session_id=session))
    assert await store.chat.list() == []
    for lease in await store.jobs.lease(runner, 2, ttl=30):
        c = claims(lease, runner)
        await store.jobs.start(c)
        await store.jobs.complete(c, Outcome(status="done", result="hello back"))
    rows = await store.chat.list()
    assert [(r["job_id"], r["kind"], r["state"]) for r in rows] == [(job.id, "reply", "pending")]
    assert rows[0]["body"] == {
        "id": rows[0]["id"],
        "channel_id": "42",
        "user_id": "7",
        "thread_id": None,
        "text": "hello back",
        "job_id": job.id,
        "kind": "reply",
    }
    assert other.id not in {r["job_id"] for r in rows}


async def test_due_in_order_per_conversation_with_retries(store: Store) -> None:
    t0 = now()
    for i in range(2):
        assert await store.chat.enqueue(ALICE, key=f"a{i}", kind="reply", text=f"a{i}", now=t0)
    assert await store.chat.enqueue(BOB, key="b0", kind="reply", text="b0", now=t0)
    assert not await store.chat.enqueue(BOB, key="b0", kind="reply", text="again", now=t0)

    due = await store.chat.due(t0, limit=10)
    assert [d.body["text"] for d in due] == ["a0", "b0"]  # a1 waits for a0
    a0, b0 = due
    await store.chat.record(a0.seq, at=t0, outcome="retry", error="HTTP 503", retry_in=60)
    await store.chat.record(b0.seq, at=t0, outcome="delivered")
    assert await store.chat.due(t0, limit=10) == []  # a0 backs off; a1 still behind it
    later = t0 + timedelta(seconds=61)
    again = await store.chat.due(later, limit=10)
    assert [(d.body["text"], d.attempts) for d in again] == [("a0", 1)]
    await store.chat.record(again[0].seq, at=later, outcome="failed", error="HTTP 400")
    assert [d.body["text"] for d in await store.chat.due(later, limit=10)] == ["a1"]
    states = {r["body"]["text"]: r["state"] for r in await store.chat.list()}
    assert states == {"a0": "failed", "a1": "pending", "b0": "delivered"}


async def test_due_finds_each_conversation_s_first_pending_message_once(store: Store) -> None:
    """2,000 messages pending to one conversation: only the first is due,
    each conversation's first found once a call (see the webhook outbox's
    test)."""
    t0 = now()
    rows = [
        {
            "id": f"m{i}",
            "key": f"k{i}",
            "channel": ALICE.channel,
            "conversation": ALICE.conversation,
            "kind": "message",
            "body": {"text": f"{i}"},
            "state": "pending",
            "attempts": 0,
            "parts_sent": 0,
            "next_attempt_at": t0,
            "created_at": t0,
        }
        for i in range(2000)
    ]

    def fill(tx: Any) -> list[str]:
        tx.conn.execute(sa.insert(chat_outbox), rows)
        if tx.conn.dialect.name == "postgresql":
            tx.conn.execute(sa.text("ANALYZE chat_outbox"))  # as autovacuum would
        return reads.explain(tx.conn, chat._DUE.params(now=t0, limit=50))

    text = "\n".join(await store.db.write(fill))
    # Each destination's first pending row, found once (no check per row).
    assert "CORRELATED" not in text and "SubPlan" not in text, text
    assert "Anti Join" not in text, text
    assert await store.chat.enqueue(BOB, key="b0", kind="reply", text="b0", now=t0)
    due = await store.chat.due(t0, limit=50)
    assert [(d.conversation, d.body["text"]) for d in due] == [
        (ALICE.conversation, "0"),
        (BOB.conversation, "b0"),
    ]
