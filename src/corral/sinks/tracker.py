"""The tracker sink: what a tracker job did goes back to its issue.

- Labels follow the job: ``corral:queued``, ``corral:running``, then
  ``corral:done`` or ``corral:failed`` (names from ``state_labels``), one at a
  time.
- When a turn ends: if the agent changed files, its branch ``corral/<job-id>``
  is pushed to the repository's remote and a pull request is opened (title
  from the issue, the summary and ``Closes #N`` in its body; once per
  session: later turns update the branch); then one comment with the result
  and the same footer as a queue file's (``queue_file.footer``: provider,
  model, cost, duration, attempts, job id), or why it failed.

The branch is rebuilt here from the job's artifacts (``diff.patch`` against
the base in ``changes.json``), in a bare clone under the data dir: the runner
that ran the job may be on another host. Every write-back is at-least-once
and keyed, so a crash repeats it without a duplicate: ``tracker_items`` says
which turn was reported (items not reported are taken again at start and
every ``SWEEP_SECONDS``, which also moves the label of a turn that started);
before commenting, the issue's comments are searched for the job's marker
(``<!-- corral:result {"job_id": ...} -->``), and before opening a pull
request, the open ones for the branch. Failures are retried with backoff; a
rate limit is waited out."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path

from corral import queue_file
from corral.config import TrackerSettings
from corral.errors import ArtifactNotFound, CorralError
from corral.forges import Forge, ForgeError, RateLimited
from corral.jobs import TERMINAL, JobState
from corral.models import Job
from corral.protocol import topics
from corral.services import Services
from corral.store.trackers import TrackerItem
from corral.tracker import STATE_LABELS

log = logging.getLogger(__name__)

SWEEP_SECONDS = 5.0  # labels of running turns lag at most this (only ends are announced)
RETRY_BASE = 2.0
RETRY_CAP = 600.0
GIT_TIMEOUT = 300.0
ERROR_LINES = 20  # of a failed job's error, in its comment: the cause, not a trace


class TrackerSink:
    def __init__(self, services: Services, forges: dict[str, Forge]) -> None:
        self.services = services
        self.store = services.store
        self.forges = forges
        self.settings: dict[str, TrackerSettings] = {
            t.name: t for t in services.settings.trackers if t.name in forges
        }
        self.repos_dir = services.settings.data_dir / "trackers"
        self._retry_at: dict[tuple[str, str, int], tuple[float, int]] = {}
        self.comments_posted = 0

    async def run(self) -> None:
        with self.store.bus.subscribe(topics.JOBS, maxsize=100_000) as changed:
            await self.sweep()
            next_sweep = time.monotonic() + SWEEP_SECONDS
            while True:
                messages = await changed.get(timeout=max(0.1, next_sweep - time.monotonic()))
                if changed.overflowed or time.monotonic() >= next_sweep:
                    changed.overflowed = False
                    await self.sweep()
                    next_sweep = time.monotonic() + SWEEP_SECONDS
                for job_id in messages:
                    if isinstance(job_id, str):
                        await self.job_changed(job_id)

    async def sweep(self) -> None:
        """Items whose latest turn was not reported (after a restart, a failure)."""
        try:
            items = await self.store.trackers.unreported()
        except CorralError as exc:
            log.warning("tracker sink: cannot read the items: %s", exc.message)
            return
        for item in items:
            await self.sync(item)

    async def job_changed(self, job_id: str) -> None:
        try:
            job = await self.store.jobs.get(job_id)
            if job.source != "tracker":
                return
            item = await self.store.trackers.by_session(job.session_id)
        except CorralError as exc:
            log.warning("tracker sink: %s (the next sweep retries)", exc.message)
            return
        if item is not None and item.job_id == job.id:
            await self.sync(item)

    async def sync(self, item: TrackerItem) -> None:
        """Bring the issue up to date with its latest turn; errors wait for a retry."""
        key = (item.tracker, item.repo, item.number)
        retry = self._retry_at.get(key)
        if retry is not None and retry[0] > time.monotonic():
            return
        forge, settings = self.forges.get(item.tracker), self.settings.get(item.tracker)
        if forge is None or settings is None:
            return  # a tracker no longer configured
        try:
            await self._sync(forge, settings, item)
            self._retry_at.pop(key, None)
        except (ForgeError, CorralError, OSError) as exc:
            attempts = (retry[1] if retry else 0) + 1
            wait = min(RETRY_CAP, RETRY_BASE * 2 ** (attempts - 1))
            if isinstance(exc, RateLimited):
                wait = max(wait, exc.until - time.time())
            self._retry_at[key] = (time.monotonic() + wait, attempts)
            message = getattr(exc, "message", None) or str(exc)
            log.warning(
                "tracker %s: writing back to %s#%d failed (%s); retry in %.0f s",
                item.tracker,
                item.repo,
                item.number,
                message,
                wait,
            )

    async def _sync(self, forge: Forge, settings: TrackerSettings, item: TrackerItem) -> None:
        job = await self.store.jobs.get(item.job_id)
        label = getattr(settings.state_labels, STATE_LABELS[job.state])
        if item.label != label:
            await forge.add_labels(item.repo, item.number, [label])
            if item.label:
                await forge.remove_label(item.repo, item.number, item.label)
            await self.store.trackers.update(item, label=label)
        if job.state not in TERMINAL or item.reported_job_id == job.id:
            return
        pull_url = item.pull_url
        if job.state is JobState.DONE and settings.pull_requests:
            pull_url = await self._pull(forge, settings, item, job) or pull_url
            if pull_url != item.pull_url:
                await self.store.trackers.update(item, pull_url=pull_url)
        await self._comment(forge, item, job, pull_url)
        await self.store.trackers.update(item, reported_job_id=job.id)

    async def _comment(self, forge: Forge, item: TrackerItem, job: Job, pull: str | None) -> None:
        marker = f'"job_id": "{job.id}"'
        for comment in await forge.issue_comments(item.repo, item.number):
            if queue_file.MARK in comment.body and marker in comment.body:
                return  # posted before a crash: not again
        await forge.comment(item.repo, item.number, comment_body(job, pull))
        self.comments_posted += 1
        log.info(
            "tracker %s: result of job %s posted on %s#%d",
            item.tracker,
            job.id,
            item.repo,
            item.number,
            extra={"job_id": job.id},
        )

    async def _pull(
        self, forge: Forge, settings: TrackerSettings, item: TrackerItem, job: Job
    ) -> str | None:
        """Push the session's branch with the job's changes; open its pull
        request once. None when the job changed nothing."""
        try:
            _, raw = await self.store.jobs.artifact(job.id, "changes.json")
            _, patch = await self.store.jobs.artifact(job.id, "diff.patch")
        except ArtifactNotFound:
            return None
        changes = json.loads(raw)
        if not changes.get("files") or not patch.strip():
            return None
        branch, base = str(changes["branch"]), str(changes["base"])
        repo_data = await forge.repository(item.repo)
        clone_url, default = str(repo_data["clone_url"]), str(repo_data["default_branch"])
        token = await settings.credential()
        message = f"{item.title} (#{item.number})\n\ncorral job {job.id}"
        await asyncio.to_thread(
            push_patch, self.repos_dir, clone_url, token, base, patch, branch, message
        )
        if item.pull_url:
            return item.pull_url  # the branch moved on: its pull request shows it
        existing = await forge.find_pull(item.repo, branch)
        if existing:
            return existing
        body = "\n".join(
            [
                f"corral's work on #{item.number} (job `{job.id}`).",
                "",
                summary(job),
                "",
                f"Closes #{item.number}",
            ]
        )
        return await forge.open_pull(
            item.repo,
            branch=branch,
            base=default,
            title=item.title,
            body=body,
            draft=settings.draft,
        )

    async def aclose(self) -> None:
        for forge in self.forges.values():
            await forge.aclose()


def summary(job: Job, limit: int = 2000) -> str:
    text = (job.result or "").strip()
    return text if len(text) <= limit else text[:limit] + " [...]"


def comment_body(job: Job, pull_url: str | None) -> str:
    """The comment a finished turn leaves: what happened, the pull request,
    the queue folder's footer (the machine-readable marker included)."""
    if job.state is JobState.DONE:
        head = "corral finished this."
    elif job.state is JobState.CANCELLED:
        head = "corral's job was cancelled."
    else:
        kind = job.failure or "error"
        head = f"corral's job failed ({kind})."
    lines = [head]
    if pull_url:
        lines += ["", f"Pull request: {pull_url}"]
    shown = job
    if job.error:
        error = "\n".join(job.error.strip().splitlines()[:ERROR_LINES])
        shown = job.model_copy(update={"error": error})
    return "\n".join(lines) + "\n" + queue_file.footer(shown)


def _git(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    full = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    full.update({"GIT_TERMINAL_PROMPT": "0", **(env or {})})
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=full,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=GIT_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
        raise OSError(f"git {args[0]}: {message}")
    return done.stdout.decode(errors="replace")


def _auth_env(url: str, token: str | None) -> dict[str, str]:
    """The token as an HTTP header for git (in the environment, never in argv)."""
    if not token or not url.startswith("https://"):
        return {}
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    return {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
    }


def push_patch(
    root: Path,
    url: str,
    token: str | None,
    base: str,
    patch: bytes,
    branch: str,
    message: str,
) -> str:
    """Commit ``patch`` on ``base`` (no work tree: a throwaway index) and push
    it as ``branch``; the commit. Blocking: run it in a thread."""
    root.mkdir(parents=True, exist_ok=True)
    clone = root / (hashlib.sha256(url.encode()).hexdigest()[:20] + ".git")
    env = _auth_env(url, token)
    if not (clone / "HEAD").exists():
        _git("init", "--quiet", "--bare", str(clone), cwd=root)
        _git("remote", "add", "origin", url, cwd=clone)
    _git("fetch", "--quiet", "origin", "+refs/heads/*:refs/remotes/origin/*", cwd=clone, env=env)
    identity = {
        "GIT_AUTHOR_NAME": "corral",
        "GIT_AUTHOR_EMAIL": "corral@localhost",
        "GIT_COMMITTER_NAME": "corral",
        "GIT_COMMITTER_EMAIL": "corral@localhost",
    }
    with tempfile.TemporaryDirectory(prefix="corral-push-") as tmp:
        index = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        (Path(tmp) / "patch").write_bytes(patch)
        _git("read-tree", base, cwd=clone, env=index)
        _git("apply", "--cached", str(Path(tmp) / "patch"), cwd=clone, env=index)
        tree = _git("write-tree", cwd=clone, env=index).strip()
    commit = _git("commit-tree", tree, "-p", base, "-m", message, cwd=clone, env=identity).strip()
    _git(
        "push", "--quiet", "--force", "origin", f"{commit}:refs/heads/{branch}", cwd=clone, env=env
    )
    return commit
