"""jobs by runner and state: the count of the jobs a runner holds, made at
every lease, reads the active ones only instead of every job the runner ever
ran (issue #18)

Revision ID: 0025
Revises: 0024
"""

from collections.abc import Sequence

from corral.store.migrations import online

revision: str = "0025"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # CREATE/DROP INDEX, concurrently on PostgreSQL (``online``); no batch
    # copy of the table on SQLite (it would drop the triggers of 0019 and 0023).
    online.create_index("ix_jobs_runner_id_state", "jobs", ["runner_id", "state"])
    online.drop_index("ix_jobs_runner_id", "jobs")


def downgrade() -> None:
    online.create_index("ix_jobs_runner_id", "jobs", ["runner_id"])
    online.drop_index("ix_jobs_runner_id_state", "jobs")
