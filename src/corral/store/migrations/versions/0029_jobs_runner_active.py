"""jobs by runner, the active ones only (PostgreSQL): the count of the jobs a
runner holds, made at every lease, read every job the runner ever ran when
PostgreSQL's statistics had not seen the runner (the state list became a
filter over the index of 0025)

Revision ID: 0029
Revises: 0028
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0029"
down_revision: str | None = "0028"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # SQLite keeps the full index: it already searches both columns, and a
    # partial index would not serve the lease's list of bound parameters.
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_jobs_runner_id_state", table_name="jobs")
    op.create_index(
        "ix_jobs_runner_id_state",
        "jobs",
        ["runner_id", "state"],
        postgresql_where=sa.text("state IN ('assigned', 'running')"),
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_jobs_runner_id_state", table_name="jobs")
    op.create_index("ix_jobs_runner_id_state", "jobs", ["runner_id", "state"])
