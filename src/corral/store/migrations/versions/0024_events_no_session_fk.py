"""events without a foreign key to sessions: the seq allocation that precedes
every insert into the log updates the session's row in the same transaction,
which is the check; on PostgreSQL the key's per-row trigger was a third of a
100-event batch's time (issue #18)

Revision ID: 0024
Revises: 0023
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0024"
down_revision: str | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite's key has no name: batch mode names it by this convention to drop it.
_NAMING = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}
_PG_NAME = "events_session_id_fkey"  # PostgreSQL's name for 0001's key


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "sqlite":
        # A copy of the table (SQLite cannot drop a constraint); events has no
        # triggers for the copy to lose.
        with op.batch_alter_table("events", naming_convention=_NAMING) as batch:
            batch.drop_constraint("fk_events_session_id_sessions", type_="foreignkey")
        return
    for fk in sa.inspect(conn).get_foreign_keys("events"):
        if fk["referred_table"] == "sessions" and fk["name"]:
            op.drop_constraint(fk["name"], "events", type_="foreignkey")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("events", naming_convention=_NAMING) as batch:
            batch.create_foreign_key(
                "fk_events_session_id_sessions", "sessions", ["session_id"], ["id"]
            )
        return
    op.create_foreign_key(_PG_NAME, "events", "sessions", ["session_id"], ["id"])
