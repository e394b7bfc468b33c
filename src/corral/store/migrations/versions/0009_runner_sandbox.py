"""runners: the sandbox a runner runs local jobs in

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runners", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sandbox", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runners", schema=None) as batch_op:
        batch_op.drop_column("sandbox")
