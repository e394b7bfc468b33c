"""agent_inbox: messages for agent daemons until their host wrote them to stdin

Revision ID: 0016
Revises: 0015
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from corral.store.schema import UTCDateTime

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "agent_inbox",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("agent", sa.String(length=64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_agent_inbox")),
        sa.UniqueConstraint("id", name=op.f("uq_agent_inbox_id")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_agent_inbox_agent_seq"), "agent_inbox", ["agent", "seq"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_agent_inbox_agent_seq"), table_name="agent_inbox")
    op.drop_table("agent_inbox")
