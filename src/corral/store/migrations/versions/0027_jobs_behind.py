"""queued turns behind an earlier turn: a flag the lease's index walks past,
so a lease no longer visits every queued turn of a session whose turn lock
holds them (issue #18)

Revision ID: 0027
Revises: 0026
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from corral.store.migrations import online

revision: str = "0027"
down_revision: str | None = "0026"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A constant default: no rewrite of the table on either database. Every
    # job starts unflagged, which is always correct (the turn lock's own
    # condition still holds a waiting turn); turns queued from now on are
    # flagged as they are created. Online on PostgreSQL (``online``); no batch
    # copy of the table on SQLite (it would drop the triggers of 0019 and 0023).
    online.add_column(
        "jobs", sa.Column("behind", sa.Boolean, nullable=False, server_default=sa.false())
    )
    online.create_index(
        "ix_jobs_state_behind_provider_priority_created_at_id",
        "jobs",
        ["state", "behind", "provider", "priority", "created_at", "id"],
    )
    online.drop_index("ix_jobs_state_provider_priority_created_at_id", "jobs")


def downgrade() -> None:
    online.create_index(
        "ix_jobs_state_provider_priority_created_at_id",
        "jobs",
        ["state", "provider", "priority", "created_at", "id"],
    )
    online.drop_index("ix_jobs_state_behind_provider_priority_created_at_id", "jobs")
    op.drop_column("jobs", "behind")
