"""cost: where each job's price came from, its token counts and max_cost; an
index for GET /usage; budget periods

Revision ID: 0020
Revises: 0019
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from corral.store.schema import UTCDateTime

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN (no batch copy of the table on SQLite: it would drop
    # the triggers of 0019).
    op.add_column("jobs", sa.Column("cost_source", sa.String(length=16), nullable=True))
    op.add_column("jobs", sa.Column("input_tokens", sa.BigInteger(), nullable=True))
    op.add_column("jobs", sa.Column("output_tokens", sa.BigInteger(), nullable=True))
    op.add_column("jobs", sa.Column("max_cost", sa.Float(), nullable=True))
    op.create_index(
        op.f("ix_jobs_finished_at_provider"), "jobs", ["finished_at", "provider"], unique=False
    )
    op.create_table(
        "budgets",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("period_start", UTCDateTime(timezone=True), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("spent", sa.Float(), nullable=False),
        sa.Column("paused_until", UTCDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_budgets")),
    )


def downgrade() -> None:
    op.drop_table("budgets")
    op.drop_index(op.f("ix_jobs_finished_at_provider"), table_name="jobs")
    for column in ("max_cost", "output_tokens", "input_tokens", "cost_source"):
        op.drop_column("jobs", column)
