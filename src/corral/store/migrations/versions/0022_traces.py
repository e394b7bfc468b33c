"""traces: each job's W3C trace context, and its webhook deliveries'

Revision ID: 0022
Revises: 0021
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN (no batch copy of the table on SQLite: it would drop
    # the triggers of 0019).
    op.add_column("jobs", sa.Column("traceparent", sa.String(length=64), nullable=True))
    op.add_column(
        "webhook_deliveries", sa.Column("traceparent", sa.String(length=64), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("webhook_deliveries", "traceparent")
    op.drop_column("jobs", "traceparent")
