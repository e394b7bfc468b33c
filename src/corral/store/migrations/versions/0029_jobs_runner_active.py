"""jobs by runner, the active ones only (PostgreSQL): the count of the jobs a
runner holds, made at every lease, read every job the runner ever ran when
PostgreSQL's statistics had not seen the runner (the state list became a
filter over the index of 0025)

Built CONCURRENTLY, outside the migration's transaction: the jobs table
keeps taking reads and writes while the index builds (a plain DROP INDEX
would hold every statement on it until the new index was built). Each step
can run again after a crash between two of them.

Revision ID: 0029
Revises: 0028
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from corral.store.migrations import online

revision: str = "0029"
down_revision: str | None = "0028"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEX = "ix_jobs_runner_id_state"
_BUILDING = "ix_jobs_runner_id_state_new"


def _rebuild(where: str | None) -> None:
    """``_INDEX`` made anew as ``(runner_id, state)`` + ``where``, concurrently
    (``online``: a leftover ``_BUILDING``, invalid or whole, is built again)."""
    condition = sa.text(where) if where else None
    online.create_index(_BUILDING, "jobs", ["runner_id", "state"], postgresql_where=condition)
    online.drop_index(_INDEX, "jobs")
    with op.get_context().autocommit_block():
        op.execute(f"ALTER INDEX {_BUILDING} RENAME TO {_INDEX}")


def upgrade() -> None:
    # SQLite keeps the full index: it already searches both columns, and a
    # partial index would not serve the lease's list of bound parameters.
    if op.get_bind().dialect.name == "postgresql":
        _rebuild("state IN ('assigned', 'running')")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _rebuild(None)
