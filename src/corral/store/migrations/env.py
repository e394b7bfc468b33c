"""Alembic environment. corral runs migrations itself (``corral migrate`` and
at start), handing over an open connection."""

from alembic import context

from corral.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `corral migrate`")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
# On PostgreSQL the connection comes without a transaction (store/migrate.py),
# so this one is Alembic's own: a migration may end it for an autocommit
# block (an index built CONCURRENTLY) and go on in a new one. SQLite's
# comes inside the writer's one transaction.
with context.begin_transaction():
    context.run_migrations()
