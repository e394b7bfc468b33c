"""runner_names: a runner name belongs to the key that first registered it

Existing names are bound to the key of their latest registration (the one
that works today), so an upgrade disturbs no running runner.

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from corral.store.schema import UTCDateTime

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    table = op.create_table(
        "runner_names",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("bound_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_runner_names")),
    )
    runners = sa.table(
        "runners",
        sa.column("name", sa.String),
        sa.column("key_id", sa.String),
        sa.column("registered_at", UTCDateTime(timezone=True)),
    )
    latest: dict[str, dict[str, object]] = {}
    rows = op.get_bind().execute(
        sa.select(runners.c.name, runners.c.key_id, runners.c.registered_at).order_by(
            runners.c.registered_at
        )
    )
    for name, key_id, at in rows:
        latest[name] = {"name": name, "key_id": key_id, "bound_at": at}
    if latest:
        op.bulk_insert(table, list(latest.values()))


def downgrade() -> None:
    op.drop_table("runner_names")
