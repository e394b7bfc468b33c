"""list indexes and job counts: an index per GET /jobs filter ending in
(created_at, id), job labels in rows of their own, and job counts by state
and provider kept by triggers (no COUNT(*) over the table per /status)

Revision ID: 0019
Revises: 0018
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from corral.store.schema import UTCDateTime

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A label longer than the column is kept by its head; GET /jobs re-checks the
# job's own labels, and its filter takes at most 200 characters anyway.
_SQLITE = [
    """CREATE TRIGGER jobs_counted_insert AFTER INSERT ON jobs BEGIN
        INSERT INTO job_counts (state, provider, n)
            SELECT NEW.state, NEW.provider, 0 WHERE NOT EXISTS (
                SELECT 1 FROM job_counts WHERE state = NEW.state AND provider = NEW.provider);
        UPDATE job_counts SET n = n + 1 WHERE state = NEW.state AND provider = NEW.provider;
        INSERT OR IGNORE INTO job_labels (job_id, label, created_at)
            SELECT NEW.id, substr(value, 1, 200), NEW.created_at
            FROM json_each(NEW.labels) WHERE type = 'text';
    END""",
    """CREATE TRIGGER jobs_counted_update AFTER UPDATE OF state, provider ON jobs
    WHEN OLD.state IS NOT NEW.state OR OLD.provider IS NOT NEW.provider BEGIN
        UPDATE job_counts SET n = n - 1 WHERE state = OLD.state AND provider = OLD.provider;
        INSERT INTO job_counts (state, provider, n)
            SELECT NEW.state, NEW.provider, 0 WHERE NOT EXISTS (
                SELECT 1 FROM job_counts WHERE state = NEW.state AND provider = NEW.provider);
        UPDATE job_counts SET n = n + 1 WHERE state = NEW.state AND provider = NEW.provider;
    END""",
    """CREATE TRIGGER jobs_labelled_update AFTER UPDATE OF labels, created_at ON jobs BEGIN
        DELETE FROM job_labels WHERE job_id = OLD.id;
        INSERT OR IGNORE INTO job_labels (job_id, label, created_at)
            SELECT NEW.id, substr(value, 1, 200), NEW.created_at
            FROM json_each(NEW.labels) WHERE type = 'text';
    END""",
    """CREATE TRIGGER jobs_counted_delete AFTER DELETE ON jobs BEGIN
        UPDATE job_counts SET n = n - 1 WHERE state = OLD.state AND provider = OLD.provider;
        DELETE FROM job_labels WHERE job_id = OLD.id;
    END""",
]

# PostgreSQL: +1/-1 rows instead of one row per key, so concurrent state
# changes never wait on (or deadlock over) a shared counter row.
_POSTGRES = [
    """CREATE FUNCTION corral_jobs_counted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND OLD.state = NEW.state AND OLD.provider = NEW.provider THEN
            RETURN NULL;
        END IF;
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            INSERT INTO job_counts (state, provider, n) VALUES (OLD.state, OLD.provider, -1);
        END IF;
        IF TG_OP IN ('UPDATE', 'INSERT') THEN
            INSERT INTO job_counts (state, provider, n) VALUES (NEW.state, NEW.provider, 1);
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER jobs_counted AFTER INSERT OR DELETE OR UPDATE OF state, provider ON jobs
    FOR EACH ROW EXECUTE FUNCTION corral_jobs_counted()""",
    """CREATE FUNCTION corral_jobs_labelled() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            DELETE FROM job_labels WHERE job_id = OLD.id;
        END IF;
        IF TG_OP IN ('UPDATE', 'INSERT') AND jsonb_typeof(NEW.labels) = 'array' THEN
            INSERT INTO job_labels (job_id, label, created_at)
            SELECT NEW.id, left(l, 200), NEW.created_at
            FROM jsonb_array_elements_text(NEW.labels) AS l
            ON CONFLICT DO NOTHING;
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER jobs_labelled AFTER INSERT OR DELETE OR UPDATE OF labels, created_at
    ON jobs FOR EACH ROW EXECUTE FUNCTION corral_jobs_labelled()""",
]


def upgrade() -> None:
    op.create_table(
        "job_labels",
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "label", name=op.f("pk_job_labels")),
    )
    op.create_index(
        op.f("ix_job_labels_label_created_at_job_id"),
        "job_labels",
        ["label", "created_at", "job_id"],
    )
    op.create_table(
        "job_counts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_counts")),
    )
    op.drop_index(op.f("ix_jobs_created_at"), table_name="jobs")
    for columns in (
        ["created_at", "id"],
        ["state", "created_at", "id"],
        ["provider", "created_at", "id"],
        ["provider", "state", "created_at", "id"],
        ["source", "created_at", "id"],
    ):
        op.create_index(op.f(f"ix_jobs_{'_'.join(columns)}"), "jobs", columns)
    sqlite = op.get_bind().dialect.name == "sqlite"
    for ddl in _SQLITE if sqlite else _POSTGRES:
        op.execute(ddl)
    # What is there already, counted once.
    op.execute(
        "INSERT INTO job_counts (state, provider, n) "
        "SELECT state, provider, COUNT(*) FROM jobs GROUP BY state, provider"
    )
    if sqlite:
        op.execute(
            "INSERT OR IGNORE INTO job_labels (job_id, label, created_at) "
            "SELECT jobs.id, substr(j.value, 1, 200), jobs.created_at "
            "FROM jobs, json_each(jobs.labels) AS j WHERE j.type = 'text'"
        )
    else:
        op.execute(
            "INSERT INTO job_labels (job_id, label, created_at) "
            "SELECT jobs.id, left(l, 200), jobs.created_at "
            "FROM jobs, jsonb_array_elements_text(jobs.labels) AS l "
            "WHERE jsonb_typeof(jobs.labels) = 'array' ON CONFLICT DO NOTHING"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in (
            "jobs_counted_insert",
            "jobs_counted_update",
            "jobs_labelled_update",
            "jobs_counted_delete",
        ):
            op.execute(f"DROP TRIGGER {name}")
    else:
        op.execute("DROP TRIGGER jobs_counted ON jobs")
        op.execute("DROP TRIGGER jobs_labelled ON jobs")
        op.execute("DROP FUNCTION corral_jobs_counted()")
        op.execute("DROP FUNCTION corral_jobs_labelled()")
    for columns in (
        ["created_at", "id"],
        ["state", "created_at", "id"],
        ["provider", "created_at", "id"],
        ["provider", "state", "created_at", "id"],
        ["source", "created_at", "id"],
    ):
        op.drop_index(op.f(f"ix_jobs_{'_'.join(columns)}"), table_name="jobs")
    op.create_index(op.f("ix_jobs_created_at"), "jobs", ["created_at"])
    op.drop_table("job_counts")
    op.drop_index(op.f("ix_job_labels_label_created_at_job_id"), table_name="job_labels")
    op.drop_table("job_labels")
