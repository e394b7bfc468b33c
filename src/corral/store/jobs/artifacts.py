"""Artifacts: named files a job's worker stores (a diff, changed files, ...)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from corral.auth import WorkerClaims
from corral.models import Artifact
from corral.store.db import Tx, dicts
from corral.store.jobs.state import Row, owned
from corral.store.schema import artifacts

_LISTED = (
    sa.select(
        artifacts.c.job_id,
        artifacts.c.name,
        artifacts.c.media_type,
        artifacts.c.size,
        artifacts.c.created_at,
    )
    .where(artifacts.c.job_id == sa.bindparam("job_id"))
    .order_by(artifacts.c.name)
)


def put(
    tx: Tx, claims: WorkerClaims, name: str, media_type: str, data: bytes, *, now: datetime
) -> Artifact:
    """Store (or replace) an artifact of the job the worker holds."""
    owned(tx, claims)
    key = (artifacts.c.job_id == claims.job_id) & (artifacts.c.name == name)
    tx.conn.execute(sa.delete(artifacts).where(key))
    tx.conn.execute(
        sa.insert(artifacts).values(
            job_id=claims.job_id,
            name=name,
            media_type=media_type,
            size=len(data),
            data=data,
            created_at=now,
        )
    )
    return Artifact(
        job_id=claims.job_id, name=name, media_type=media_type, size=len(data), created_at=now
    )


def listed(conn: sa.Connection, job_id: str) -> list[Artifact]:
    return [Artifact.model_validate(d) for d in dicts(conn.execute(_LISTED, {"job_id": job_id}))]


def one(conn: sa.Connection, job_id: str, name: str) -> Row | None:
    return conn.execute(
        sa.select(artifacts).where(artifacts.c.job_id == job_id, artifacts.c.name == name)
    ).one_or_none()
