"""job_children: a job submitted by another job's MCP gateway names its parent;
a job may narrow its provider's gateway allowlist

Revision ID: 0013
Revises: 0012
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("parent_job_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("mcp_tools", JSON, nullable=True))
        batch.create_index(batch.f("ix_jobs_parent_job_id"), ["parent_job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index(batch.f("ix_jobs_parent_job_id"))
        batch.drop_column("mcp_tools")
        batch.drop_column("parent_job_id")
