"""The folder intake against a real store: a database failure while taking a
file loses nothing; reconcile submits it later, once."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from corral.config import load_settings
from corral.errors import StoreUnavailable
from corral.intake.folder import FolderIntake
from corral.jobs import JobState
from corral.server.build import services
from corral.store import Store


async def test_a_failed_submit_is_recovered_by_reconcile(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await Store.open(db_url)
    try:
        settings = load_settings(data_dir=tmp_path, database_url=db_url)
        intake = FolderIntake(tmp_path / "queue", await services(settings, store))
        intake.prepare()
        (tmp_path / "queue" / "task.md").write_text("---\ncommand: echo hi\n---\n")
        create = store.jobs.create

        async def down(*args: object, **kwargs: object) -> object:
            raise StoreUnavailable("database unreachable: injected")

        monkeypatch.setattr(store.jobs, "create", down)
        old = time.time() - 10  # settled
        os.utime(tmp_path / "queue" / "task.md", (old, old))
        with pytest.raises(StoreUnavailable):
            await intake.scan()
        # The file was taken (running/) but has no job yet: nothing is lost.
        assert (tmp_path / "queue" / "running" / "task.md").exists()
        assert await store.jobs.list() == []
        monkeypatch.setattr(store.jobs, "create", create)
        await intake.reconcile()
        await intake.reconcile()  # idempotent: still one job
        (job,) = await store.jobs.list()
        assert job.state is JobState.QUEUED and job.source == "folder"
        assert job.source_ref == str(tmp_path / "queue" / "running" / "task.md")
    finally:
        await store.close()
