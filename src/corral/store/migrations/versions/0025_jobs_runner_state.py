"""jobs by runner and state: the count of the jobs a runner holds, made at
every lease, reads the active ones only instead of every job the runner ever
ran (issue #18)

Revision ID: 0025
Revises: 0024
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0025"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain CREATE/DROP INDEX (no batch copy of the table on SQLite: it would
    # drop the triggers of 0019 and 0023).
    op.create_index("ix_jobs_runner_id_state", "jobs", ["runner_id", "state"])
    op.drop_index("ix_jobs_runner_id", table_name="jobs")


def downgrade() -> None:
    op.create_index("ix_jobs_runner_id", "jobs", ["runner_id"])
    op.drop_index("ix_jobs_runner_id_state", table_name="jobs")
