"""chat channels: conversations as sessions, and the chat outbox

Revision ID: 0015
Revises: 0014
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from corral.store.schema import JSON, UTCDateTime

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "chat_sessions",
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("conversation", sa.String(length=700), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("chat_id", sa.String(length=200), nullable=False),
        sa.Column("user_id", sa.String(length=200), nullable=False),
        sa.Column("thread_id", sa.String(length=200), nullable=True),
        sa.Column("started_by", sa.String(length=200), nullable=True),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.id"]),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_chat_sessions")),
        sa.UniqueConstraint("started_by", name=op.f("uq_chat_sessions_started_by")),
        sa.UniqueConstraint(
            "channel",
            "conversation",
            "generation",
            name=op.f("uq_chat_sessions_channel_conversation_generation"),
        ),
    )
    op.create_table(
        "chat_outbox",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("conversation", sa.String(length=700), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=True),
        sa.Column("job_id", sa.String(length=64), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("body", JSON, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("parts_sent", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_chat_outbox")),
        sa.UniqueConstraint("id", name=op.f("uq_chat_outbox_id")),
        sa.UniqueConstraint("key", name=op.f("uq_chat_outbox_key")),
    )
    op.create_index(
        op.f("ix_chat_outbox_state_next_attempt_at"),
        "chat_outbox",
        ["state", "next_attempt_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_chat_outbox_channel_conversation_seq"),
        "chat_outbox",
        ["channel", "conversation", "seq"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_chat_outbox_channel_conversation_seq"), table_name="chat_outbox")
    op.drop_index(op.f("ix_chat_outbox_state_next_attempt_at"), table_name="chat_outbox")
    op.drop_table("chat_outbox")
    op.drop_table("chat_sessions")
