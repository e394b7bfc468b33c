"""The webhook outbox on SQLite and PostgreSQL: deliveries written with each
state change, due in order per job and URL, attempts recorded, redelivery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from corral.models import JobCreate, NewEvent, Outcome, WebhookSpec
from corral.store import Store, outbox
from corral.store.jobs import reads
from corral.testing import worker_claims as claims
from corral.webhooks import Endpoint, Rules


async def test_state_changes_and_events_fill_the_outbox(store: Store) -> None:
    store.db.webhooks = Rules((Endpoint("http://global/hook", states=frozenset({"done"})),))
    runner = await store.runners.register(
        name="r", key_id="k", hostname=None, providers=["shell"], labels=[], slots=2
    )
    hook = WebhookSpec(url="http://a/hook", secret="0123456789abcdef", events=["agent.result"])
    job, _ = await store.jobs.create(JobCreate(prompt="x", webhook=hook))
    plain, _ = await store.jobs.create(JobCreate(prompt="y"))
    leases = await store.jobs.lease(runner, 2, ttl=30)
    for lease in leases:
        c = claims(lease, runner)
        await store.jobs.start(c)
        await store.jobs.append_events(
            c, [NewEvent(type="agent.result", payload={"ok": True}), NewEvent(type="output")]
        )
        await store.jobs.complete(c, Outcome(status="done", result="fine"))

    mine = list(reversed(await store.outbox.list(job_id=job.id)))
    assert [(d["url"], d["event"], d["body"]["state"]) for d in mine] == [
        ("http://a/hook", "job.state", "queued"),
        ("http://a/hook", "job.state", "assigned"),
        ("http://a/hook", "job.state", "running"),
        ("http://a/hook", "agent.result", "running"),
        ("http://a/hook", "job.state", "done"),
        ("http://global/hook", "job.state", "done"),
    ]
    assert mine[3]["body"]["event"]["payload"] == {"ok": True}
    assert mine[4]["body"]["result"] == "fine"
    assert all(d["body"]["delivery_id"] == d["id"] for d in mine)
    # The job without a webhook only reaches the global endpoint, for "done".
    other = await store.outbox.list(job_id=plain.id)
    assert [(d["url"], d["body"]["state"]) for d in other] == [("http://global/hook", "done")]


async def test_due_in_order_per_job_and_url_with_attempts(store: Store) -> None:
    job, _ = await store.jobs.create(JobCreate(prompt="x", webhook="http://a/hook"))
    other, _ = await store.jobs.create(JobCreate(prompt="y", webhook="http://a/hook"))
    now = datetime.now(UTC) + timedelta(seconds=1)
    due = await store.outbox.due(now, limit=10)
    # One per job and URL: the later ones wait for the earlier.
    assert sorted(d.job_id for d in due) == sorted([job.id, other.id])
    first = next(d for d in due if d.job_id == job.id)
    assert first.secret is None and first.body["state"] == "queued"

    await store.jobs.cancel(job.id)  # a second delivery of the same job
    await store.outbox.record(
        first.seq,
        at=now,
        status=500,
        latency_ms=3.5,
        error="HTTP 500",
        outcome="retry",
        retry_in=60,
    )
    due = await store.outbox.due(now, limit=10)
    assert [d.job_id for d in due] == [other.id]  # job's next one waits behind the retry
    later = await store.outbox.due(now + timedelta(seconds=61), limit=10)
    assert first.seq in [d.seq for d in later]

    await store.outbox.record(
        first.seq, at=now, status=200, latency_ms=2.0, error=None, outcome="delivered"
    )
    due = await store.outbox.due(now, limit=10)
    assert {d.body["state"] for d in due if d.job_id == job.id} == {"cancelled"}
    [row] = [
        d for d in await store.outbox.list(job_id=job.id, attempts=True) if d["id"] == first.id
    ]
    assert row["state"] == "delivered" and row["attempts"] == 2
    assert [a["status"] for a in row["attempt_log"]] == [500, 200]

    again = await store.outbox.redeliver(first.id, now)
    assert again["state"] == "pending"
    assert await store.outbox.list(state="failed") == []


async def test_a_job_webhook_announces_only_its_states(store: Store) -> None:
    runner = await store.runners.register(
        name="r", key_id="k", hostname=None, providers=["shell"], labels=[], slots=1
    )
    hook = WebhookSpec(url="http://a/hook", states=["queued", "done"])
    job, _ = await store.jobs.create(JobCreate(prompt="x", webhook=hook))
    (lease,) = await store.jobs.lease(runner, 1, ttl=30)
    c = claims(lease, runner)
    await store.jobs.start(c)
    await store.jobs.complete(c, Outcome(status="done", result="fine"))
    sent = [d["body"]["state"] for d in reversed(await store.outbox.list(job_id=job.id))]
    assert sent == ["queued", "done"]
    assert (await store.jobs.get(job.id)).webhook_states == ["queued", "done"]


async def test_due_finds_each_destination_s_first_pending_delivery_once(store: Store) -> None:
    """2,000 deliveries pending to one job's URL (a job's output, its
    receiver down): only the first is due, and each destination's first
    pending delivery is found once a call, not by a check per row.
    PostgreSQL ran the in-order check (``NOT EXISTS``) as a hash anti join
    comparing every pending delivery of the job and URL with every other:
    1.7 s a call behind 5,000 (issue #18)."""
    runner = await store.runners.register(
        name="r", key_id="k", hostname=None, providers=["shell"], labels=[], slots=2
    )
    hook = WebhookSpec(url="http://a/hook", events=["output"])
    job, _ = await store.jobs.create(JobCreate(command="true", webhook=hook))
    [lease] = await store.jobs.lease(runner, 1, ttl=30)
    c = claims(lease, runner)
    await store.jobs.start(c)
    lines = [NewEvent(type="output", payload={"line": f"{i}"}) for i in range(2000)]
    await store.jobs.append_events(c, lines)
    other, _ = await store.jobs.create(JobCreate(command="true", webhook="http://b/hook"))

    def plan(tx: Any) -> list[str]:
        if tx.conn.dialect.name == "postgresql":
            tx.conn.execute(sa.text("ANALYZE webhook_deliveries"))  # as autovacuum would
        stmt = outbox._DUE.params(now=datetime.now(UTC), limit=50)
        return reads.explain(tx.conn, stmt)

    text = "\n".join(await store.db.write(plan))
    # Each destination's first pending row, found once (no check per row).
    assert "CORRELATED" not in text and "SubPlan" not in text, text
    assert "Anti Join" not in text, text
    due = await store.outbox.due(datetime.now(UTC) + timedelta(seconds=1), limit=50)
    assert [(d.job_id, d.body["state"]) for d in due] == [(job.id, "queued"), (other.id, "queued")]
