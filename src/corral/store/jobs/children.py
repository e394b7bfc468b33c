"""Sub-jobs: what a running job's MCP gateway may do to the jobs it submitted
(``parent_job_id``). Every body first checks that the worker still holds its
job (``owned``): a fenced worker reads and changes nothing."""

from __future__ import annotations

from datetime import datetime

from corral.auth import WorkerClaims
from corral.errors import Forbidden, JobNotFound
from corral.models import Job
from corral.store.db import Tx
from corral.store.jobs import lifecycle
from corral.store.jobs.reads import by_id
from corral.store.jobs.state import Row, owned, to_job


def _child(tx: Tx, claims: WorkerClaims, job_id: str) -> Row:
    owned(tx, claims)
    row = by_id(tx.conn, job_id)
    if row is None:
        raise JobNotFound(f"no job {job_id}")
    if row.parent_job_id != claims.job_id:
        raise Forbidden(f"job {job_id} is not a sub-job of job {claims.job_id}")
    return row


def child(tx: Tx, claims: WorkerClaims, job_id: str) -> Job:
    return to_job(_child(tx, claims, job_id))


def cancel(tx: Tx, claims: WorkerClaims, job_id: str, *, now: datetime) -> Job:
    _child(tx, claims, job_id)
    return lifecycle.cancel(tx, job_id, by=f"job {claims.job_id}", now=now)
