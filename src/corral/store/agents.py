"""Agent daemons in the database: what is declared and asked for, what the
hosting runner reports.

The control plane writes the desired side: each ``[agents.NAME]`` table of the
configuration (``configure``), whether it should run (``wanted``) and the
operator's actions, numbered (``seq``, ``action``: start, stop, restart). The
runner hosting an agent reads that (``desired``), applies it with its
supervisor, and writes back the reported side (``report``): status, pid,
restarts, the sequence number it has applied, its log lines (the last
``KEEP_LINES`` are kept here, the host keeps the full rotated file) and the
messages it counted. Both sides announce changes on the bus (protocol/topics.py):
``AGENTS`` (status changes, for SSE), ``agent_log(NAME)`` (new lines),
``agent_state(NAME)`` (each report: operators' actions wait on it) and
``AGENTS_DESIRED`` (hosts long-polling for work). Times reported
(``started_at``, line ``at``) are the host's clock."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel

from corral.errors import Conflict, NotFound
from corral.models import new_id
from corral.protocol import topics
from corral.store.db import Database, Tx
from corral.store.jobs import now_utc
from corral.store.schema import agent_inbox, agent_lines, agent_messages, agents, runners

KEEP_LINES = 1000  # per agent, in the database
CONNECTED_WITHIN = 15.0  # seconds since a host's last lease: still connected
EMBEDDED = "embedded"  # `runner` of agents any embedded runner may host
# The name of the key `corral serve` makes for its embedded runner: only such
# keys may claim `embedded` agents (their env may hold the servers' secrets).
EMBEDDED_KEY = "embedded runner"
_INLINE_MAX = 6000  # bytes of lines carried in a bus message (PostgreSQL: 8000)
INBOX_BATCH = 100  # messages handed to a host per poll answer


class AgentNotFound(NotFound):
    """No such agent daemon."""

    code = "agent_not_found"


@dataclass(frozen=True)
class AgentRecord:
    name: str
    runner: str
    host: str | None
    config: dict[str, Any]
    wanted: bool
    seq: int
    action: str | None
    applied_seq: int
    status: str
    pid: int | None
    started_at: float | None
    restarts: int
    last_exit_code: int | None
    message: str | None
    log_offset: int
    connected: bool  # its host leased within CONNECTED_WITHIN seconds
    messages_24h: int | None  # None: the agent never reported any

    def view(self, now: float | None = None) -> dict[str, Any]:
        now = now or time.time()
        up = self.started_at if self.status == "running" else None
        return {
            "id": self.name,
            "name": self.name,
            "status": self.status,
            "pid": self.pid,
            "uptime": None if up is None else round(now - up, 3),
            "restarts": self.restarts,
            "last_exit_code": self.last_exit_code,
            "runner": self.runner,
            "host": self.host,
            "connected": self.connected,
            "wanted": self.wanted,
            "pending": self.applied_seq < self.seq,
            "message": self.message,
            "messages_24h": self.messages_24h,
        }


class Agents:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- the desired side (control plane) ---------------------------------------

    async def configure(self, declared: Mapping[str, BaseModel]) -> dict[str, list[str]]:
        """Make the table match the configuration (its ``[agents.NAME]``
        tables, DaemonSettings): new agents are added (wanted if
        ``autostart``), removed ones deleted (their host stops them), changed
        ones updated (their host restarts them; moved to another runner: the
        old host stops it, the new one starts it)."""
        wanted_config = {n: s.model_dump(mode="json") for n, s in declared.items()}
        now = now_utc()

        def body(tx: Tx) -> dict[str, list[str]]:
            have = {r.name: r for r in tx.conn.execute(sa.select(agents.c.name, agents.c.config))}
            added = sorted(set(wanted_config) - set(have))
            removed = sorted(set(have) - set(wanted_config))
            changed = sorted(
                n for n in set(have) & set(wanted_config) if have[n].config != wanted_config[n]
            )
            if removed:
                tx.conn.execute(sa.delete(agents).where(agents.c.name.in_(removed)))
                tx.conn.execute(sa.delete(agent_lines).where(agent_lines.c.agent.in_(removed)))
                tx.conn.execute(
                    sa.delete(agent_messages).where(agent_messages.c.agent.in_(removed))
                )
                tx.conn.execute(sa.delete(agent_inbox).where(agent_inbox.c.agent.in_(removed)))
            for name in added:
                config = wanted_config[name]
                tx.conn.execute(
                    sa.insert(agents).values(
                        name=name,
                        runner=config["runner"],
                        config=config,
                        wanted=bool(config["autostart"]),
                        seq=0,
                        applied_seq=0,
                        status="stopped",
                        restarts=0,
                        log_offset=0,
                        updated_at=now,
                    )
                )
            for name in changed:
                config = wanted_config[name]
                moved = config["runner"] != have[name].config["runner"]
                values: dict[str, Any] = {"config": config, "runner": config["runner"]}
                if moved:
                    values.update(host=None, status="stopped", pid=None, started_at=None)
                tx.conn.execute(sa.update(agents).where(agents.c.name == name).values(**values))
            if added or removed or changed:
                tx.notify(topics.AGENTS_DESIRED, "changed")
            return {"added": added, "removed": removed, "changed": changed}

        return await self.db.write(body)

    async def act(self, name: str, action: str) -> AgentRecord:
        """Record an operator's start, stop or restart for the host to apply."""
        assert action in ("start", "stop", "restart")

        def body(tx: Tx) -> None:
            done = tx.conn.execute(
                sa.update(agents)
                .where(agents.c.name == name)
                .values(seq=agents.c.seq + 1, action=action, wanted=action != "stop")
            ).rowcount
            if not done:
                raise self._not_found(tx.conn, name)
            tx.notify(topics.AGENTS_DESIRED, "changed")

        await self.db.write(body)
        return await self.get(name)

    async def send(self, name: str, text: str) -> dict[str, Any]:
        """Queue a message for the agent's stdin (it must be configured with
        ``stdin = "messages"``); its host writes it once the daemon runs."""
        now = now_utc()

        def body(tx: Tx) -> dict[str, Any]:
            row = tx.conn.execute(
                sa.select(agents.c.config).where(agents.c.name == name)
            ).one_or_none()
            if row is None:
                raise self._not_found(tx.conn, name)
            if row.config.get("stdin") != "messages":
                raise Conflict(
                    f'agent {name!r} does not take messages: set stdin = "messages" in '
                    f"[agents.{name}] (it then reads them as JSON lines on its stdin)"
                )
            message_id = new_id()
            seq = tx.conn.execute(
                sa.insert(agent_inbox)
                .values(id=message_id, agent=name, text=text, created_at=now)
                .returning(agent_inbox.c.seq)
            ).scalar_one()
            tx.notify(topics.AGENTS_DESIRED, "message")
            return {"id": message_id, "agent": name, "seq": seq}

        return await self.db.write(body)

    # -- reading ------------------------------------------------------------------

    async def get(self, name: str) -> AgentRecord:
        def body(conn: sa.Connection) -> AgentRecord:
            found = self._records(conn, name)
            if not found:
                raise self._not_found(conn, name)
            return found[0]

        return await self.db.read(body)

    async def lines(
        self, name: str, n: int = 200, after: int | None = None
    ) -> list[dict[str, Any]]:
        """The last ``n`` lines, or every kept line after offset ``after``."""

        def body(conn: sa.Connection) -> list[dict[str, Any]]:
            if conn.execute(sa.select(agents.c.name).where(agents.c.name == name)).first() is None:
                raise self._not_found(conn, name)
            stmt = sa.select(agent_lines).where(agent_lines.c.agent == name)
            if after is not None:
                stmt = stmt.where(agent_lines.c.offset > after).order_by(agent_lines.c.offset)
                rows = list(conn.execute(stmt.limit(KEEP_LINES)))
            else:
                stmt = stmt.order_by(agent_lines.c.offset.desc()).limit(n)
                rows = list(conn.execute(stmt))[::-1]
            return [
                {"offset": r.offset, "at": r.at, "stream": r.stream, "line": r.line} for r in rows
            ]

        return await self.db.read(body)

    def _records(self, conn: sa.Connection, name: str | None) -> list[AgentRecord]:
        seen_after = now_utc() - timedelta(seconds=CONNECTED_WITHIN)
        live = (
            sa.select(runners.c.name)
            .where(runners.c.status == "active", runners.c.last_seen_at >= seen_after)
            .scalar_subquery()
        )
        stmt = sa.select(agents, agents.c.host.in_(live).label("connected")).order_by(agents.c.name)
        if name is not None:
            stmt = stmt.where(agents.c.name == name)
        rows = list(conn.execute(stmt))
        # Per agent that ever reported messages: the sum over the last 24 h.
        recent = agent_messages.c.minute > int(time.time() // 60) - 24 * 60
        counts_stmt = sa.select(
            agent_messages.c.agent,
            sa.func.sum(sa.case((recent, agent_messages.c.count), else_=0)),
        ).group_by(agent_messages.c.agent)
        if name is not None:
            counts_stmt = counts_stmt.where(agent_messages.c.agent == name)
        counts = {a: int(c) for a, c in conn.execute(counts_stmt)}
        return [
            AgentRecord(
                name=r.name,
                runner=r.runner,
                host=r.host,
                config=r.config,
                wanted=r.wanted,
                seq=r.seq,
                action=r.action,
                applied_seq=r.applied_seq,
                status=r.status,
                pid=r.pid,
                started_at=r.started_at,
                restarts=r.restarts,
                last_exit_code=r.last_exit_code,
                message=r.message,
                log_offset=r.log_offset,
                connected=bool(r.connected),
                messages_24h=counts.get(r.name),
            )
            for r in rows
        ]

    @staticmethod
    def _not_found(conn: sa.Connection, name: str) -> AgentNotFound:
        names = list(conn.execute(sa.select(agents.c.name).order_by(agents.c.name)).scalars())
        return AgentNotFound(f"no agent {name!r} (configured: {', '.join(names) or 'none'})")

    # -- the hosting side (runners) -------------------------------------------------

    async def desired(
        self, runner: str, aliases: list[str], hosting: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """The agents runner ``runner`` hosts: those configured for it by name,
        and those configured for one of its ``aliases`` (``embedded``) that no
        connected runner hosts yet: it claims them. ``hosting``: the agents it
        supervises now; any other of its agents reported as active is not (the
        runner restarted): it becomes ``stopped`` until the runner reports."""
        hosts = [runner, *aliases]
        now = now_utc()
        seen_after = now - timedelta(seconds=CONNECTED_WITHIN)

        def body(tx: Tx) -> list[dict[str, Any]]:
            conn = tx.conn
            active = conn.execute(
                sa.select(runners.c.id).where(
                    runners.c.name == runner, runners.c.status == "active"
                )
            ).first()
            if active is None:
                return []  # stopped (or replaced) meanwhile: it claims nothing
            live = set(
                conn.execute(
                    sa.select(runners.c.name).where(
                        runners.c.status == "active", runners.c.last_seen_at >= seen_after
                    )
                ).scalars()
            )
            rows = list(
                conn.execute(sa.select(agents).where(agents.c.runner.in_(hosts)).with_for_update())
            )
            mine = []
            for r in rows:
                if r.host != runner:
                    if r.runner != runner and r.host is not None and r.host in live:
                        continue  # another connected runner hosts it
                    conn.execute(
                        sa.update(agents).where(agents.c.name == r.name).values(host=runner)
                    )
                if hosting is not None and r.name not in hosting and r.status != "stopped":
                    conn.execute(
                        sa.update(agents)
                        .where(agents.c.name == r.name)
                        .values(status="stopped", pid=None, started_at=None, updated_at=now)
                    )
                    change = {
                        "agent_id": r.name,
                        "old_status": r.status,
                        "new_status": "stopped",
                        "pid": None,
                        "exit_code": None,
                        "at": time.time(),
                    }
                    tx.notify(topics.AGENTS, json.dumps(change))
                    tx.notify(topics.agent_state(r.name), "reported")
                mine.append(
                    {
                        "name": r.name,
                        "config": r.config,
                        "wanted": r.wanted,
                        "seq": r.seq,
                        "action": r.action,
                        "log_offset": r.log_offset,
                    }
                )
            inbox: dict[str, list[dict[str, Any]]] = {}
            if mine:
                for m in conn.execute(
                    sa.select(agent_inbox)
                    .where(agent_inbox.c.agent.in_([a["name"] for a in mine]))
                    .order_by(agent_inbox.c.seq)
                ):
                    waiting = inbox.setdefault(m.agent, [])
                    if len(waiting) < INBOX_BATCH:
                        waiting.append({"seq": m.seq, "id": m.id, "text": m.text})
            for a in mine:
                a["messages"] = inbox.get(a["name"], [])
            return sorted(mine, key=lambda a: a["name"])

        return await self.db.write(body)

    async def report(
        self,
        runner: str,
        states: dict[str, dict[str, Any]],
        changes: list[dict[str, Any]],
        lines: list[dict[str, Any]],
        messages: dict[str, dict[int, int]],
        *,
        release: bool = False,
    ) -> tuple[list[str], set[str]]:
        """Store what host ``runner`` reports. Returns the agents it named that
        it does not host (any more), and those it hosts. ``release``: the
        runner is stopping; its agents are free for another to claim."""
        now = now_utc()

        def body(tx: Tx) -> tuple[list[str], set[str]]:
            conn = tx.conn
            named = set(states) | {c["agent_id"] for c in changes} | {x["agent"] for x in lines}
            named |= set(messages)
            hosted = set(
                conn.execute(sa.select(agents.c.name).where(agents.c.host == runner)).scalars()
            )
            by_agent: dict[str, list[dict[str, Any]]] = {}
            for x in lines:
                if x["agent"] in hosted:
                    by_agent.setdefault(x["agent"], []).append(x)
            for name, state in states.items():
                if name not in hosted:
                    continue
                values = {
                    k: state.get(k)
                    for k in ("status", "pid", "started_at", "restarts", "last_exit_code")
                }
                values["message"] = state.get("message")
                values["updated_at"] = now
                stmt = sa.update(agents).where(agents.c.name == name)
                if "applied_seq" in state:
                    higher = sa.func.max if self.db.is_sqlite else sa.func.greatest
                    values["applied_seq"] = higher(agents.c.applied_seq, int(state["applied_seq"]))
                conn.execute(stmt.values(**values))
                if state.get("message_seq"):  # written to its stdin: no longer owed
                    conn.execute(
                        sa.delete(agent_inbox).where(
                            agent_inbox.c.agent == name,
                            agent_inbox.c.seq <= int(state["message_seq"]),
                        )
                    )
                tx.notify(topics.agent_state(name), "reported")
            for name, batch in by_agent.items():
                batch.sort(key=lambda x: x["offset"])
                top = batch[-1]["offset"]
                conn.execute(
                    sa.delete(agent_lines).where(
                        agent_lines.c.agent == name,
                        sa.or_(
                            agent_lines.c.offset <= top - KEEP_LINES,
                            agent_lines.c.offset >= batch[0]["offset"],  # a re-sent batch
                        ),
                    )
                )
                kept = [x for x in batch if x["offset"] > top - KEEP_LINES]
                conn.execute(
                    sa.insert(agent_lines),
                    [
                        {
                            "agent": name,
                            "offset": x["offset"],
                            "at": x["at"],
                            "stream": x["stream"],
                            "line": x["line"],
                        }
                        for x in kept
                    ],
                )
                conn.execute(
                    sa.update(agents)
                    .where(agents.c.name == name, agents.c.log_offset < top)
                    .values(log_offset=top)
                )
                data = json.dumps({"lines": kept})
                tx.notify(
                    topics.agent_log(name),
                    data if len(data) <= _INLINE_MAX else json.dumps({"upto": top}),
                )
            for name, per_minute in messages.items():
                if name in hosted:
                    _add_messages(conn, name, per_minute)
            for change in changes:
                if change["agent_id"] in hosted:
                    tx.notify(topics.AGENTS, json.dumps(change))
            if release:
                # It is going away: no poll of it still in flight claims again.
                conn.execute(
                    sa.update(runners)
                    .where(runners.c.name == runner, runners.c.status == "active")
                    .values(status="stopped")
                )
                if hosted:
                    conn.execute(sa.update(agents).where(agents.c.host == runner).values(host=None))
                    tx.notify(topics.AGENTS_DESIRED, "released")
            return sorted(named - hosted), hosted

        return await self.db.write(body)

    # Last: from here on in the class body, ``list`` names this method, not the builtin.
    async def list(self) -> list[AgentRecord]:
        return await self.db.read(lambda conn: self._records(conn, None))


def _add_messages(conn: sa.Connection, name: str, per_minute: dict[int, int]) -> None:
    oldest = int(time.time() // 60) - 24 * 60
    conn.execute(
        sa.delete(agent_messages).where(
            agent_messages.c.agent == name, agent_messages.c.minute <= oldest
        )
    )
    for minute, n in per_minute.items():
        if int(minute) <= oldest:
            continue
        done = conn.execute(
            sa.update(agent_messages)
            .where(agent_messages.c.agent == name, agent_messages.c.minute == int(minute))
            .values(count=agent_messages.c.count + int(n))
        ).rowcount
        if not done:
            conn.execute(
                sa.insert(agent_messages).values(agent=name, minute=int(minute), count=int(n))
            )
