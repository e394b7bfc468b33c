"""chat jobs: messages, tools, options, think, and the assistant message

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("messages", JSON, nullable=True))
        batch_op.add_column(sa.Column("tools", JSON, nullable=True))
        batch_op.add_column(sa.Column("options", JSON, nullable=True))
        batch_op.add_column(sa.Column("think", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("message", JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for name in ("message", "think", "options", "tools", "messages"):
            batch_op.drop_column(name)
