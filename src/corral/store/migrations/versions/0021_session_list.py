"""session list: an index for GET /sessions (newest first, keyset pages)

Revision ID: 0021
Revises: 0020
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        op.f("ix_sessions_created_at_id"), "sessions", ["created_at", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_sessions_created_at_id"), table_name="sessions")
