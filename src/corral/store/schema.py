"""Table definitions (SQLAlchemy Core). Alembic migrations must match these;
tests/integration/test_migrations.py checks that they do."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes on both backends (SQLite keeps naive text)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
# The active jobs (corral.jobs.ACTIVE) as an index's predicate (migration 0029).
ACTIVE_PREDICATE = "state IN ('assigned', 'running')"

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("title", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("last_seq", sa.Integer, nullable=False),
    sa.Column("turns", sa.Integer, nullable=False),
    sa.Column("active_job_id", sa.String(64)),
    sa.Column("handle", sa.Text),
    # The runner holding its workspace and CLI conversation (local providers).
    sa.Column("host", sa.String(200)),
    sa.Index(None, "created_at", "id"),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("session_id", sa.String(64), sa.ForeignKey("sessions.id"), nullable=False),
    sa.Column("turn", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("provider", sa.String(64), nullable=False),
    sa.Column("model", sa.String(200)),
    sa.Column("preferred_ai", sa.String(64)),
    sa.Column("needs_local_agent", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("allow_delegation", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("complexity_hint", sa.String(16)),
    sa.Column("route_rule", sa.Integer),
    sa.Column("route_reason", sa.Text),
    sa.Column("title", sa.Text),
    sa.Column("prompt", sa.Text),
    sa.Column("command", sa.Text),
    sa.Column("repo", sa.Text),
    sa.Column("base", sa.String(200)),
    sa.Column("webhook_url", sa.Text),
    sa.Column("webhook_secret", sa.Text),  # an HMAC key: needed in clear to sign
    sa.Column("webhook_events", JSON),
    sa.Column("webhook_states", JSON),
    sa.Column("messages", JSON),
    sa.Column("tools", JSON),
    sa.Column("options", JSON),
    sa.Column("think", sa.Boolean),
    sa.Column("message", JSON),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("timeout", sa.Float),
    sa.Column("labels", JSON, nullable=False),
    sa.Column("idempotency_key", sa.String(200), unique=True),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("source_ref", sa.Text),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("runner_id", sa.String(64)),
    sa.Column("result", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("reason", sa.String(64)),
    sa.Column("failure", sa.String(16)),
    sa.Column("infra_retries", sa.Integer, nullable=False, server_default="0"),
    sa.Column("exit_code", sa.Integer),
    sa.Column("usage", JSON),
    sa.Column("cost", sa.Float),
    # reported | configured | estimated | unknown (corral.pricing); null until it ends.
    sa.Column("cost_source", sa.String(16)),
    # Token counts in one shape (corral.pricing.tokens), for GET /usage.
    sa.Column("input_tokens", sa.BigInteger),
    sa.Column("output_tokens", sa.BigInteger),
    # USD a run may spend (the runner stops it past this: failure class budget).
    sa.Column("max_cost", sa.Float),
    # The outcome came from a runner's journal: {from_runner, finished_at, reason}.
    sa.Column("recovered", JSON),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("assigned_at", UTCDateTime),
    sa.Column("started_at", UTCDateTime),
    sa.Column("finished_at", UTCDateTime),
    # Not leased before this (a scheduled job); available_at starts here.
    sa.Column("run_at", UTCDateTime),
    sa.Column("available_at", UTCDateTime, nullable=False),
    sa.Column("lease_expires_at", UTCDateTime),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # The job whose MCP gateway submitted it (``submit_job``), and the tool
    # rules the job narrows its provider's allowlist to.
    sa.Column("parent_job_id", sa.String(64)),
    sa.Column("mcp_tools", JSON),
    # W3C trace context of its submit span (corral.tracing): its spans' parent.
    sa.Column("traceparent", sa.String(64)),
    # A queued turn behind an earlier live turn of its session (the turn
    # lock holds it): set when it is created behind one, cleared when it
    # becomes its session's first live turn (store/jobs/turns.py).
    sa.Column("behind", sa.Boolean, nullable=False, server_default=sa.false()),
    # A queued job not available yet (its available_at, a run_at or a retry's
    # backoff, was ahead when it was queued): set then, cleared once that
    # time has come (store/jobs/later.py).
    sa.Column("later", sa.Boolean, nullable=False, server_default=sa.false()),
    # The lease's walk, one provider at a time, past no turn held behind
    # another and no job whose time has not come (store/jobs/dispatch.py;
    # migrations 0027, 0028).
    sa.Index(None, "state", "behind", "later", "provider", "priority", "created_at", "id"),
    # The jobs that run later, by their time: those due, found without the rest.
    sa.Index(
        "ix_jobs_later_available_at",
        "available_at",
        sqlite_where=sa.text("later = 1"),  # as SQLAlchemy writes the test (a match)
        postgresql_where=sa.text("later"),
    ),
    sa.Index(None, "session_id", "turn"),
    # A lease counts the jobs its runner holds (board._HELD): with the state in
    # the index that reads the active ones, not every job the runner ever ran
    # (migration 0025; issue #18). On PostgreSQL the index holds the active
    # jobs only (migration 0029): with statistics that had not seen the
    # runner, PostgreSQL 15 read the state list as a filter over every job of
    # the runner. SQLite uses both columns, and a partial index there would
    # not serve a list of bound parameters.
    sa.Index(None, "runner_id", "state", postgresql_where=sa.text(ACTIVE_PREDICATE)),
    sa.Index(None, "parent_job_id"),
    # One per filter of GET /jobs, each ending in its order (created_at, id):
    # a page walks its index and stops after ``limit`` rows, nothing is sorted.
    sa.Index(None, "created_at", "id"),
    sa.Index(None, "state", "created_at", "id"),
    sa.Index(None, "provider", "created_at", "id"),
    sa.Index(None, "provider", "state", "created_at", "id"),
    sa.Index(None, "source", "created_at", "id"),
    # GET /usage and budgets: jobs ended in a time range, by provider.
    sa.Index(None, "finished_at", "provider"),
)

# The labels of each job, one row each, kept by triggers on ``jobs`` (migration
# 0019): the label filter of GET /jobs walks (label, created_at, job_id).
job_labels = sa.Table(
    "job_labels",
    metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("label", sa.String(200), primary_key=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index(None, "label", "created_at", "job_id"),
)

# Jobs by state and provider, kept by triggers on ``jobs`` in the transaction
# of every insert and state change (migration 0019), so /status and /metrics
# read a few rows instead of counting the table. The count of a (state,
# provider) is SUM(n) over its rows: on SQLite the triggers update one row per
# key; on PostgreSQL they append +1/-1 rows (no hot row that every state
# change would lock) and ``compact_counts`` folds them from time to time.
job_counts = sa.Table(
    "job_counts",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("provider", sa.String(64), nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
)


def _usage_key() -> list[sa.Column[Any]]:
    """The key columns both rollup tables start with (new objects: a Column
    belongs to one table)."""
    return [
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("hour", UTCDateTime, nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("model", sa.Text),
        sa.Column("source", sa.String(16), nullable=False),
    ]


def _usage_figures() -> list[sa.Column[Any]]:
    """The figures both rollup tables sum, and the fold's ``fresh`` mark."""
    return [
        sa.Column("jobs", sa.Integer, nullable=False),
        sa.Column("cost", sa.Float, nullable=False),
        sa.Column("priced", sa.Integer, nullable=False),
        sa.Column("input_tokens", sa.BigInteger, nullable=False),
        sa.Column("output_tokens", sa.BigInteger, nullable=False),
        sa.Column("run_time", sa.Float, nullable=False),
        sa.Column("fresh", sa.Integer, nullable=False),
    ]


# GET /usage's rollup: the figures of finished jobs summed per UTC hour of
# their end and (provider, model, source), kept by triggers on ``jobs``
# (migration 0023) in the transaction of every change to a finished job:
# minus the job's old figures, plus its new ones. On SQLite one row per key,
# changed in place; on PostgreSQL each change appends rows (``fresh`` 1), so
# concurrent writers share no row, and ``usage.fold`` (the watchdog's loop)
# sums a key's rows into one. ``with_label`` null: every job; else the jobs
# carrying that label, each once (the label filter).
usage_hours = sa.Table(
    "usage_hours",
    metadata,
    *_usage_key(),
    sa.Column("with_label", sa.Text),
    *_usage_figures(),
    # with_label first: the rows a query reads (null, or its label) lie together.
    sa.Index("ix_usage_hours_key", "with_label", "hour", "provider", "source", "model"),
    sa.Index(None, "fresh"),
)

# The same per label, for grouping by label: a job counts once under each of
# its labels (under ``label`` null if it has none); ``with_label`` as above.
usage_hour_labels = sa.Table(
    "usage_hour_labels",
    metadata,
    *_usage_key(),
    sa.Column("label", sa.Text),
    sa.Column("with_label", sa.Text),
    *_usage_figures(),
    sa.Index(
        "ix_usage_hour_labels_key", "with_label", "hour", "provider", "source", "model", "label"
    ),
    sa.Index(None, "fresh"),
)

# No foreign key to sessions (migration 0024): every insert follows the seq
# allocation's update of its session's row in the same transaction, which finds
# (and locks) the row; sessions are never deleted. On PostgreSQL the key's
# per-row trigger was a third of a 100-event batch's time (issue #18).
events = sa.Table(
    "events",
    metadata,
    sa.Column("session_id", sa.String(64), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("event_id", sa.String(64), nullable=False, unique=True),
    sa.Column("job_id", sa.String(64)),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("payload", JSON, nullable=False),
    sa.Column("internal", sa.Boolean, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index(None, "job_id"),
)

artifacts = sa.Table(
    "artifacts",
    metadata,
    sa.Column("job_id", sa.String(64), sa.ForeignKey("jobs.id"), primary_key=True),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("media_type", sa.String(128), nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

# Questions a worker asked a person (``ask_human``). A question is open while
# its job runs at the epoch that asked it and its timeout has not passed.
questions = sa.Table(
    "questions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("job_id", sa.String(64), sa.ForeignKey("jobs.id"), nullable=False),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("question", sa.Text, nullable=False),
    sa.Column("options", JSON, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # open, answered, expired
    sa.Column("asked_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime),
    sa.Column("answer", sa.Text),
    sa.Column("answered_by", sa.String(200)),
    sa.Column("answered_at", UTCDateTime),
    sa.Index(None, "job_id", "state"),
)

# The webhook outbox: written in the transaction of the change it reports,
# sent by one background sender (the leader), in order per job and URL.
webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("job_id", sa.String(64), sa.ForeignKey("jobs.id"), nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("secret", sa.Text),  # None: the server's default webhook secret
    sa.Column("event", sa.String(64), nullable=False),
    sa.Column("body", JSON, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # pending, delivered, failed
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", UTCDateTime, nullable=False),
    sa.Column("last_status", sa.Integer),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("delivered_at", UTCDateTime),
    sa.Column("traceparent", sa.String(64)),  # the job's (corral.tracing)
    sa.Index(None, "state", "next_attempt_at"),
    sa.Index(None, "job_id", "url", "seq"),
)

webhook_attempts = sa.Table(
    "webhook_attempts",
    metadata,
    sa.Column(
        "delivery_seq", sa.Integer, sa.ForeignKey("webhook_deliveries.seq"), primary_key=True
    ),
    sa.Column("n", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("status", sa.Integer),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("error", sa.Text),
)

# A provider paused by a quota failure: no leases for it until ``until``.
provider_pauses = sa.Table(
    "provider_pauses",
    metadata,
    sa.Column("provider", sa.String(64), primary_key=True),
    sa.Column("until", UTCDateTime, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
)

runners = sa.Table(
    "runners",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("key_id", sa.String(64), nullable=False),
    sa.Column("hostname", sa.String(255)),
    sa.Column("providers", JSON, nullable=False),
    sa.Column("labels", JSON, nullable=False),
    sa.Column("slots", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("version", sa.String(16), nullable=False),
    sa.Column("registered_at", UTCDateTime, nullable=False),
    sa.Column("last_seen_at", UTCDateTime, nullable=False),
    sa.Column("sandbox", sa.String(16)),
    sa.Index(None, "name"),
)

# Which key owns a runner name: the first to register it. Another key's
# registration under that name is refused (409) until an admin forgets it, so
# no key can take over another runner's name (and release its jobs).
runner_names = sa.Table(
    "runner_names",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("key_id", sa.String(64), nullable=False),
    sa.Column("bound_at", UTCDateTime, nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("hash", sa.String(128), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime),
)

settings = sa.Table(
    "settings",
    metadata,
    sa.Column("key", sa.String(128), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

# Cron schedules (store/schedules.py): where each one is. The configuration
# says what it is; this row what the loop has done with it.
schedules = sa.Table(
    "schedules",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    # The cron and zone the loop last planned with: a change starts it afresh.
    sa.Column("cron", sa.String(200), nullable=False),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("enabled", sa.Boolean),  # an operator's word; None: the configuration's
    sa.Column("active", sa.Boolean, nullable=False),  # firing, as of the loop's last look
    sa.Column("last_slot", UTCDateTime),  # the last slot handled: fired or skipped
    sa.Column("last_job_id", sa.String(64)),
    sa.Column("last_fired_at", UTCDateTime),
    sa.Column("fired", sa.Integer, nullable=False),
    sa.Column("skipped", sa.Integer, nullable=False),
    # Its own event log: schedule.fired, schedule.skipped, schedule.enabled...
    sa.Column("session_id", sa.String(64), sa.ForeignKey("sessions.id"), nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# Agent daemons (store/agents.py): what the configuration declares and the
# operators asked for, written by the control plane; what the hosting runner
# reports (status, pid, ...), written by it.
agents = sa.Table(
    "agents",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("runner", sa.String(200), nullable=False),  # configured host (or "embedded")
    sa.Column("host", sa.String(200)),  # the runner hosting it now
    sa.Column("config", JSON, nullable=False),
    sa.Column("wanted", sa.Boolean, nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),  # operator actions so far
    sa.Column("action", sa.String(16)),  # the latest: start, stop, restart
    sa.Column("applied_seq", sa.Integer, nullable=False),  # the host has applied up to
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("pid", sa.Integer),
    sa.Column("started_at", sa.Float),
    sa.Column("restarts", sa.Integer, nullable=False),
    sa.Column("last_exit_code", sa.Integer),
    sa.Column("message", sa.Text),
    sa.Column("log_offset", sa.Integer, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# The last lines of each agent's log (the host keeps the full, rotated file).
agent_lines = sa.Table(
    "agent_lines",
    metadata,
    sa.Column("agent", sa.String(64), primary_key=True),
    sa.Column("offset", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("stream", sa.String(8), nullable=False),
    sa.Column("line", sa.Text, nullable=False),
)

# Messages an agent reported handling, per minute (GET /agents: last 24 h).
agent_messages = sa.Table(
    "agent_messages",
    metadata,
    sa.Column("agent", sa.String(64), primary_key=True),
    sa.Column("minute", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("count", sa.Integer, nullable=False),
)

# Issue-tracker intake (intake/tracker.py, sinks/tracker.py): one row per
# issue taken in; its session and latest turn, and what was written back.
tracker_items = sa.Table(
    "tracker_items",
    metadata,
    sa.Column("tracker", sa.String(64), primary_key=True),
    sa.Column("repo", sa.String(200), primary_key=True),
    sa.Column("number", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("url", sa.String(2000), nullable=False),
    sa.Column("title", sa.String(500), nullable=False),
    sa.Column("session_id", sa.String(64), nullable=False),
    sa.Column("job_id", sa.String(64), nullable=False),  # the latest turn
    sa.Column("state", sa.String(16), nullable=False),  # open | closed (as last seen)
    sa.Column("reported_job_id", sa.String(64)),  # the latest turn whose result was posted
    sa.Column("label", sa.String(64)),  # the state label last put on the issue
    sa.Column("pull_url", sa.String(2000)),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Index(None, "session_id"),
)

# Chat channels (store/chat.py): each conversation of a channel (a chat's
# thread, or one user in it) is a session; /new starts the next generation.
chat_sessions = sa.Table(
    "chat_sessions",
    metadata,
    sa.Column("session_id", sa.String(64), sa.ForeignKey("sessions.id"), primary_key=True),
    sa.Column("channel", sa.String(64), nullable=False),
    sa.Column("conversation", sa.String(700), nullable=False),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("chat_id", sa.String(200), nullable=False),
    sa.Column("user_id", sa.String(200), nullable=False),
    sa.Column("thread_id", sa.String(200)),
    # The message (its idempotency key) whose /new started it.
    sa.Column("started_by", sa.String(200), unique=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("channel", "conversation", "generation"),
)

# The chat outbox: replies and messages for a conversation, written in the
# transaction of what they report, sent by one sender (the leader) in order
# per conversation. ``key`` makes re-delivered inbound commands idempotent.
chat_outbox = sa.Table(
    "chat_outbox",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("key", sa.String(200), nullable=False, unique=True),
    sa.Column("channel", sa.String(64), nullable=False),
    sa.Column("conversation", sa.String(700), nullable=False),
    sa.Column("session_id", sa.String(64)),
    sa.Column("job_id", sa.String(64)),
    sa.Column("kind", sa.String(16), nullable=False),  # reply, message, question
    sa.Column("body", JSON, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # pending, delivered, failed
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("parts_sent", sa.Integer, nullable=False),  # of a reply split in pieces
    sa.Column("next_attempt_at", UTCDateTime, nullable=False),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("delivered_at", UTCDateTime),
    sa.Index(None, "state", "next_attempt_at"),
    sa.Index(None, "channel", "conversation", "seq"),
)

# Messages for agent daemons (POST /agents/{name}/message) until their host
# reports them written to the daemon's stdin (up to ``seq``).
agent_inbox = sa.Table(
    "agent_inbox",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("agent", sa.String(64), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index(None, "agent", "seq"),
    # Numbers are never reused once rows are deleted (hosts compare them).
    sqlite_autoincrement=True,
)

# Where each [[budgets]] entry is in its current period: the highest level
# announced (80, 100) and the pause its crossing set.
budgets = sa.Table(
    "budgets",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("period_start", UTCDateTime, nullable=False),
    sa.Column("level", sa.Integer, nullable=False),
    sa.Column("spent", sa.Float, nullable=False),
    sa.Column("paused_until", UTCDateTime),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)
