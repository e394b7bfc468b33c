"""Agent daemons in the database, on SQLite and PostgreSQL: configuration
sync, operator actions, which runner hosts what (claims, take-over), reports
(states, lines kept and pruned, message counts)."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from corral.config import DaemonSettings
from corral.protocol import topics
from corral.store import Store
from corral.store.agents import KEEP_LINES, AgentNotFound
from corral.store.db import Tx
from corral.store.jobs import now_utc
from corral.store.schema import runners


def daemon(command: str = "sleep 60", **kw: object) -> DaemonSettings:
    return DaemonSettings.model_validate({"command": command, **kw})


async def register(store: Store, name: str) -> None:
    await store.runners.register(
        name=name, key_id="k", hostname=None, providers=["shell"], labels=[], slots=1
    )


def line(agent: str, offset: int, text: str = "x") -> dict[str, object]:
    return {"agent": agent, "offset": offset, "at": time.time(), "stream": "stdout", "line": text}


async def test_configure_adds_changes_moves_and_removes(store: Store) -> None:
    first = {"a": daemon(), "b": daemon(autostart=False), "c": daemon(runner="box")}
    assert await store.agents.configure(first) == {
        "added": ["a", "b", "c"],
        "removed": [],
        "changed": [],
    }
    assert await store.agents.configure(first) == {"added": [], "removed": [], "changed": []}
    recs = {r.name: r for r in await store.agents.list()}
    assert [recs["a"].wanted, recs["b"].wanted] == [True, False]
    assert recs["c"].runner == "box" and recs["a"].runner == "embedded"
    assert all(r.status == "stopped" and not r.connected for r in recs.values())

    await register(store, "emb")
    await store.agents.desired("emb", ["embedded"])  # claims a and b
    second = {"a": daemon("sleep 61"), "b": daemon(autostart=False, runner="box")}
    assert await store.agents.configure(second) == {
        "added": [],
        "removed": ["c"],
        "changed": ["a", "b"],
    }
    a, b = await store.agents.get("a"), await store.agents.get("b")
    assert a.config["command"] == ["sleep", "61"] and a.host == "emb"
    assert b.runner == "box" and b.host is None  # moved: the old host lets go
    with pytest.raises(AgentNotFound, match="configured: a, b"):
        await store.agents.get("c")


async def test_actions_are_numbered_and_wanted_follows(store: Store) -> None:
    await store.agents.configure({"a": daemon()})
    rec = await store.agents.act("a", "stop")
    assert (rec.seq, rec.action, rec.wanted) == (1, "stop", False)
    rec = await store.agents.act("a", "restart")
    assert (rec.seq, rec.action, rec.wanted, rec.view()["pending"]) == (2, "restart", True, True)
    with pytest.raises(AgentNotFound):
        await store.agents.act("nope", "start")


async def test_named_runner_hosts_and_embedded_is_claimed_once(store: Store) -> None:
    await store.agents.configure({"e": daemon(), "boxed": daemon(runner="box")})
    for name in ("emb1", "emb2", "box"):
        await register(store, name)
    assert [a["name"] for a in await store.agents.desired("emb1", ["embedded"])] == ["e"]
    # Another embedded runner does not take a connected one's agent.
    assert await store.agents.desired("emb2", ["embedded"]) == []
    boxed = await store.agents.desired("box", [])
    assert [(a["name"], a["wanted"], a["seq"], a["log_offset"]) for a in boxed] == [
        ("boxed", True, 0, 0)
    ]
    assert (await store.agents.get("e")).connected

    # emb1 goes quiet: emb2 takes its agent over.
    def quiet(tx: Tx) -> None:
        tx.conn.execute(
            sa.update(runners)
            .where(runners.c.name == "emb1")
            .values(last_seen_at=now_utc() - timedelta(minutes=5))
        )

    await store.db.write(quiet)
    assert not (await store.agents.get("e")).connected
    assert [a["name"] for a in await store.agents.desired("emb2", ["embedded"])] == ["e"]
    assert (await store.agents.get("e")).host == "emb2"


async def test_reports_store_states_lines_and_messages(store: Store) -> None:
    await store.agents.configure({"a": daemon(), "b": daemon(runner="other")})
    await register(store, "emb")
    await store.agents.desired("emb", ["embedded"])
    with store.bus.subscribe(topics.AGENTS, topics.agent_log("a"), maxsize=100) as sub:
        state = {
            "status": "running",
            "pid": 4242,
            "started_at": time.time() - 5,
            "restarts": 1,
            "last_exit_code": 3,
            "message": None,
            "applied_seq": 0,
        }
        change = {
            "agent_id": "a",
            "old_status": "starting",
            "new_status": "running",
            "pid": 4242,
            "exit_code": None,
            "at": time.time(),
        }
        minute = int(time.time() // 60)
        not_hosted, hosted = await store.agents.report(
            "emb",
            {"a": state, "b": state},
            [change],
            [line("a", 1, "one"), line("a", 2, "two"), line("b", 1)],
            {"a": {minute: 2, minute - 1: 1, minute - 2 * 24 * 60: 50}},
        )
        seen = await sub.get(timeout=1)
    assert not_hosted == ["b"] and hosted == {"a"}
    a = await store.agents.get("a")
    assert (a.status, a.pid, a.restarts, a.last_exit_code, a.log_offset) == (
        "running",
        4242,
        1,
        3,
        2,
    )
    assert 4 < a.view()["uptime"] < 60
    assert a.messages_24h == 3  # the one two days old does not count
    assert (await store.agents.get("b")).messages_24h is None
    assert (await store.agents.get("b")).status == "stopped"  # not its host's to say
    assert [x["line"] for x in await store.agents.lines("a")] == ["one", "two"]
    messages = [json.loads(str(m)) for m in seen]
    changes = [m for m in messages if "agent_id" in m]
    assert [(c["agent_id"], c["new_status"]) for c in changes] == [("a", "running")]
    assert [[x["line"] for x in m["lines"]] for m in messages if "lines" in m] == [["one", "two"]]


async def test_lines_are_pruned_resent_batches_replace(store: Store) -> None:
    await store.agents.configure({"a": daemon()})
    await register(store, "emb")
    await store.agents.desired("emb", ["embedded"])
    await store.agents.report("emb", {}, [], [line("a", i) for i in range(1, 11)], {})
    # A batch sent again (the answer to the first try was lost) replaces its lines.
    await store.agents.report("emb", {}, [], [line("a", i, "again") for i in range(9, 13)], {})
    got = await store.agents.lines("a", 5)
    assert [(x["offset"], x["line"]) for x in got] == [
        (8, "x"),
        (9, "again"),
        (10, "again"),
        (11, "again"),
        (12, "again"),
    ]
    total = KEEP_LINES + 500
    for start in range(13, total + 1, 1000):
        batch = [line("a", i) for i in range(start, min(start + 1000, total + 1))]
        await store.agents.report("emb", {}, [], batch, {})
    kept = await store.agents.lines("a", KEEP_LINES + 100)
    assert len(kept) == KEEP_LINES and kept[-1]["offset"] == total
    assert [x["offset"] for x in await store.agents.lines("a", after=total - 3)] == [
        total - 2,
        total - 1,
        total,
    ]
    assert (await store.agents.get("a")).log_offset == total


async def test_a_restarted_runner_resets_what_it_no_longer_runs(store: Store) -> None:
    await store.agents.configure({"a": daemon(), "b": daemon()})
    await register(store, "emb")
    await store.agents.desired("emb", ["embedded"])
    running = {"status": "running", "pid": 1, "restarts": 0, "applied_seq": 0}
    await store.agents.report("emb", {"a": running, "b": running}, [], [], {})
    with store.bus.subscribe(topics.AGENTS, maxsize=10) as sub:
        await store.agents.desired("emb", ["embedded"], hosting=["b"])
        changes = [json.loads(str(m)) for m in await sub.get(timeout=1)]
    assert [(c["agent_id"], c["old_status"], c["new_status"]) for c in changes] == [
        ("a", "running", "stopped")
    ]
    assert (await store.agents.get("a")).pid is None
    assert (await store.agents.get("b")).status == "running"


async def test_a_stopping_runner_releases_its_agents(store: Store) -> None:
    await store.agents.configure({"e": daemon(), "boxed": daemon(runner="box")})
    for name in ("emb1", "emb2", "box"):
        await register(store, name)
    await store.agents.desired("emb1", ["embedded"])
    await store.agents.desired("box", [])
    stopped = {"status": "stopped", "restarts": 0, "applied_seq": 0}
    await store.agents.report("emb1", {"e": stopped}, [], [], {}, release=True)
    assert (await store.agents.get("e")).host is None
    # A poll of the stopped runner still in flight claims nothing again ...
    assert await store.agents.desired("emb1", ["embedded"]) == []
    assert [r.name for r in await store.runners.list()] == ["box", "emb2"]
    # ... and another embedded runner takes the agent at once.
    assert [a["name"] for a in await store.agents.desired("emb2", ["embedded"])] == ["e"]
    await store.agents.report("box", {}, [], [], {}, release=True)
    boxed = await store.agents.get("boxed")
    assert boxed.host is None and not boxed.connected and boxed.runner == "box"
