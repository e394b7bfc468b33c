"""queued jobs whose time has not come: a flag the lease's index walks past,
so a lease no longer visits every job scheduled for later or waiting out a
retry's backoff (issue #18)

Revision ID: 0028
Revises: 0027
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from corral.store.migrations import online

revision: str = "0028"
down_revision: str | None = "0027"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # As 0027: a constant default (no rewrite of the table), online on
    # PostgreSQL. Jobs queued before stay unflagged, which is always
    # correct (the lease's own available_at condition still holds them back);
    # jobs queued from now on are flagged as they are queued.
    online.add_column(
        "jobs", sa.Column("later", sa.Boolean, nullable=False, server_default=sa.false())
    )
    online.create_index(
        "ix_jobs_state_behind_later_provider_priority_created_at_id",
        "jobs",
        ["state", "behind", "later", "provider", "priority", "created_at", "id"],
    )
    online.drop_index("ix_jobs_state_behind_provider_priority_created_at_id", "jobs")
    online.create_index(
        "ix_jobs_later_available_at",
        "jobs",
        ["available_at"],
        sqlite_where=sa.text("later = 1"),  # as SQLAlchemy writes the test (a match)
        postgresql_where=sa.text("later"),
    )


def downgrade() -> None:
    online.drop_index("ix_jobs_later_available_at", "jobs")
    online.create_index(
        "ix_jobs_state_behind_provider_priority_created_at_id",
        "jobs",
        ["state", "behind", "provider", "priority", "created_at", "id"],
    )
    online.drop_index("ix_jobs_state_behind_later_provider_priority_created_at_id", "jobs")
    op.drop_column("jobs", "later")
