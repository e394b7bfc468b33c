"""Messages for agent daemons in the database, on SQLite and PostgreSQL: only
agents that take them, handed to their host in order with the desired state,
no longer owed once the host reports them written, numbers never reused."""

from __future__ import annotations

import pytest

from corral.config import DaemonSettings
from corral.errors import Conflict
from corral.protocol import AgentState
from corral.store import Store
from corral.store.agents import AgentNotFound


def daemon(**kw: object) -> DaemonSettings:
    return DaemonSettings.model_validate({"command": "sleep 60", **kw})


async def test_messages_wait_for_their_host_in_order(store: Store) -> None:
    await store.agents.configure({"echo": daemon(stdin="messages"), "deaf": daemon()})
    await store.runners.register(
        name="r", key_id="k", hostname=None, providers=["shell"], labels=[], slots=1
    )
    with pytest.raises(Conflict, match='stdin = "messages"'):
        await store.agents.send("deaf", "hi")
    with pytest.raises(AgentNotFound):
        await store.agents.send("nobody", "hi")

    first = await store.agents.send("echo", "one")
    second = await store.agents.send("echo", "two")
    assert first["seq"] < second["seq"]
    desired = {a["name"]: a for a in await store.agents.desired("r", ["embedded"])}
    assert [(m["id"], m["text"]) for m in desired["echo"]["messages"]] == [
        (first["id"], "one"),
        (second["id"], "two"),
    ]
    assert desired["deaf"]["messages"] == []

    state = AgentState(status="running", message_seq=first["seq"]).model_dump()
    await store.agents.report("r", {"echo": state}, [], [], {})
    desired = {a["name"]: a for a in await store.agents.desired("r", ["embedded"])}
    assert [m["text"] for m in desired["echo"]["messages"]] == ["two"]

    await store.agents.report("r", {"echo": {**state, "message_seq": second["seq"]}}, [], [], {})
    third = await store.agents.send("echo", "three")
    assert third["seq"] > second["seq"]  # never a number the host has seen
    desired = {a["name"]: a for a in await store.agents.desired("r", ["embedded"])}
    assert [m["text"] for m in desired["echo"]["messages"]] == ["three"]
