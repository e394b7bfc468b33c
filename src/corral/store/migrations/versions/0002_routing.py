"""routing fields and decision on jobs

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("preferred_ai", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("needs_local_agent", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(
            sa.Column("allow_delegation", sa.Boolean(), server_default=sa.true(), nullable=False)
        )
        batch_op.add_column(sa.Column("complexity_hint", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("route_rule", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("route_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for name in (
            "route_reason",
            "route_rule",
            "complexity_hint",
            "allow_delegation",
            "needs_local_agent",
            "preferred_ai",
            "model",
        ):
            batch_op.drop_column(name)
