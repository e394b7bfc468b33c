"""queued jobs by provider: a lease walks the queued jobs of each provider it
takes, in order, instead of walking past every job queued for the providers
it does not take (issue #18)

Revision ID: 0026
Revises: 0025
"""

from collections.abc import Sequence

from corral.store.migrations import online

revision: str = "0026"
down_revision: str | None = "0025"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # CREATE/DROP INDEX, concurrently on PostgreSQL (``online``); no batch
    # copy of the table on SQLite (it would drop the triggers of 0019 and 0023).
    online.create_index(
        "ix_jobs_state_provider_priority_created_at_id",
        "jobs",
        ["state", "provider", "priority", "created_at", "id"],
    )
    online.drop_index("ix_jobs_state_priority_created_at_id", "jobs")


def downgrade() -> None:
    online.create_index(
        "ix_jobs_state_priority_created_at_id", "jobs", ["state", "priority", "created_at", "id"]
    )
    online.drop_index("ix_jobs_state_provider_priority_created_at_id", "jobs")
