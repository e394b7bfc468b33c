"""Issue-tracker intake: labelled issues of allowlisted repositories become
jobs, and comments that call the trigger continue their sessions.

One ``TrackerIntake`` per ``[[trackers]]`` table. The leader's loop
(``server/loops.py``) polls every ``poll_interval`` (or at once, told by
``POST /trackers/NAME/sync``); the webhook route (``POST
/hooks/trackers/NAME``) hands a verified delivery's issue or comment to the
same ``take_issue`` / ``take_comment`` on whichever replica it reached. Every
job is submitted through ``intake.submit`` with an idempotency key
(``tracker.job_key``, ``tracker.comment_key``), so polls, webhooks, restarts
and replicas make exactly one job per issue and one turn per comment.

Polling asks each repository for the issues with the label updated since
the last change it saw (the tracker's clock, so no skew) and for the
comments since then; both listings are conditional (ETag), so a cycle where
nothing changed costs 304s only. A rate limit makes the loop sleep until the
tracker's reset; a refused token marks the tracker ``error`` (with the
tracker's message) and is retried with backoff."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from corral import forges, tracker
from corral.config import TrackerSettings
from corral.errors import CorralError
from corral.forges import Comment, Forge, ForgeError, Issue, RateLimited
from corral.intake.submit import submit
from corral.jobs import TERMINAL
from corral.models import JobCreate
from corral.services import Services
from corral.store.trackers import TrackerItem

log = logging.getLogger(__name__)

ENABLED_KEY = "tracker:{name}:enabled"
# A comment written this long before its issue was taken still counts (clocks differ).
CLOCK_SLACK = timedelta(seconds=60)
STATUS_KEY = "tracker:{name}:status"
ERROR_BACKOFF_CAP = 3600.0
SYNC_KEY = "tracker:{name}:sync"  # a poll asked for (POST /trackers/NAME/sync)


@dataclass
class Status:
    """What ``corral trackers show`` and ``GET /trackers`` report; kept in
    the database by the replica that polls, so every replica reads it."""

    state: str = "idle"  # idle | ok | error | rate_limited | disabled
    error: str | None = None
    last_poll_at: float | None = None
    polls: int = 0
    taken: int = 0  # jobs made from issues
    turns: int = 0  # follow-up turns made from comments
    cancelled: int = 0  # jobs cancelled because their issue was closed
    ignored: int = 0  # issues of repositories not on the allowlist
    requests: int = 0
    not_modified: int = 0
    wait_until: float | None = None


@dataclass
class TrackerIntake:
    services: Services
    settings: TrackerSettings
    forge: Forge = field(default=None)  # type: ignore[assignment]
    status: Status = field(default_factory=Status)
    _since: dict[str, str] = field(default_factory=dict)
    _comments_since: dict[str, str] = field(default_factory=dict)
    _clone_urls: dict[str, str] = field(default_factory=dict)
    _ignored: set[str] = field(default_factory=set)
    _failures: int = 0

    def __post_init__(self) -> None:
        if self.forge is None:
            s = self.settings
            self.forge = forges.make(s.kind, s.base_url, s.credential)

    @property
    def name(self) -> str:
        return self.settings.name

    async def enabled(self) -> bool:
        return await enabled(self.services, self.settings)

    # -- polling --------------------------------------------------------------------

    async def poll(self) -> float:
        """One cycle over the allowlist; returns the seconds until the next."""
        if not await self.enabled():
            self.status.state = "disabled"
            await self.save_status()
            return self.settings.poll_interval
        self.status.polls += 1
        self.status.last_poll_at = time.time()
        wait = self.settings.poll_interval
        self.status.error = None
        try:
            for repo in self.settings.repos:
                await self.poll_repo(repo)
            self.status.state, self.status.wait_until = "ok", None
        except RateLimited as exc:
            self.status.state, self.status.wait_until = "rate_limited", exc.until
            self.status.error = exc.message
            wait = max(wait, exc.until - time.time())
            log.warning("tracker %s: %s; next poll in %.0f s", self.name, exc.message, wait)
        except (ForgeError, CorralError) as exc:
            self.status.state, self.status.error = "error", exc.message
            self._failures += 1
            # A refused token or an unreachable tracker: back off, up to an hour.
            wait = min(ERROR_BACKOFF_CAP, wait * 2 ** min(self._failures - 1, 10))
            log.warning("tracker %s: %s; next poll in %.0f s", self.name, exc.message, wait)
        if self.status.state == "ok":
            self._failures = 0
        if self.status.state != "ok":
            self.forge.forget()  # what failed half-way is read again, not answered 304
        self.status.requests = self.forge.stats.requests
        self.status.not_modified = self.forge.stats.not_modified
        await self.save_status()
        return wait

    async def poll_repo(self, repo: str) -> None:
        issues = await self.forge.issues(
            repo, label=self.settings.label, since=self._since.get(repo)
        )
        if not issues.not_modified:
            for issue in issues.items:
                await self._refusable(self.take_issue(issue), f"{repo}#{issue.number}")
            latest = max((i.updated_at for i in issues.items if i.updated_at), default=None)
            if latest:
                self._since[repo] = latest
        comments = await self.forge.comments(repo, since=self._comments_since.get(repo))
        if not comments.not_modified:
            for comment in comments.items:
                await self._refusable(self.take_comment(comment), comment.url)
            latest = max((c.created_at for c in comments.items if c.created_at), default=None)
            if latest:
                self._comments_since[repo] = latest

    async def _refusable(self, work: Awaitable[object], what: str) -> None:
        """Run ``work``; a job corral refuses (4xx: no provider for it, ...) is
        logged and shown in the status, and the poll goes on: retrying the
        same input cannot help. Other errors end the cycle (retried later)."""
        try:
            await work
        except CorralError as exc:
            if not 400 <= exc.status < 500:
                raise
            self.status.error = f"{what}: {exc.message}"
            log.warning("tracker %s: %s refused: %s", self.name, what, exc.message)

    # -- one issue, one comment -----------------------------------------------------

    def allowed(self, repo: str) -> bool:
        if repo in self.settings.repos:
            return True
        self.status.ignored += 1
        if repo not in self._ignored:  # logged once per repository
            self._ignored.add(repo)
            log.warning("tracker %s: %s is not on the allowlist; ignored", self.name, repo)
        return False

    async def take_issue(self, issue: Issue) -> TrackerItem | None:
        """Make the issue's job if it is open, labelled and allowlisted; cancel
        its job if it was closed. Returns its item (None: not ours)."""
        if issue.is_pull or not self.allowed(issue.repo):
            return None
        store = self.services.store
        item = await store.trackers.get(self.name, issue.repo, issue.number)
        if issue.state != "open":
            if item is not None:
                await self._closed(item)
            return item
        if self.settings.label not in issue.labels:
            return item
        if item is not None and item.state == "open":
            return item  # taken already; follow-ups come as comments
        s = self.settings
        spec = JobCreate(
            prompt=tracker.prompt(
                s.preamble,
                title=issue.title,
                body=issue.body,
                url=issue.url,
                repo=issue.repo,
                number=issue.number,
            ),
            repo=await self.clone_url(issue.repo),
            title=f"{issue.repo}#{issue.number}: {issue.title}"[:500],
            priority=tracker.priority_of(issue.labels, s.priorities),
            idempotency_key=tracker.job_key(self.name, issue.repo, issue.number),
            source="tracker",
            source_ref=issue.url[:2000] or None,
            labels=[f"tracker:{self.name}"],
            preferred_ai=s.provider,
            needs_local_agent=s.needs_local_agent,
            model=s.model,
            max_attempts=s.max_attempts,
            timeout=s.timeout,
        )
        job, created = await submit(self.services, spec)
        if created:
            self.status.taken += 1
            log.info(
                "tracker %s: %s#%d -> job %s (priority %d)",
                self.name,
                issue.repo,
                issue.number,
                job.id,
                job.priority,
                extra={"job_id": job.id, "session_id": job.session_id},
            )
        return await store.trackers.record(
            tracker=self.name,
            repo=issue.repo,
            number=issue.number,
            url=issue.url,
            title=issue.title,
            session_id=job.session_id,
            job_id=job.id,
        )

    async def _closed(self, item: TrackerItem) -> None:
        store = self.services.store
        job = await store.jobs.get(item.job_id)
        if job.state not in TERMINAL:
            await store.jobs.cancel(job.id, by=f"tracker:{self.name}")
            self.status.cancelled += 1
            log.info(
                "tracker %s: %s#%d closed; job %s cancelled",
                self.name,
                item.repo,
                item.number,
                job.id,
                extra={"job_id": job.id},
            )
        if item.state != "closed":
            await store.trackers.update(item, state="closed")

    async def take_comment(self, comment: Comment) -> str | None:
        """A follow-up turn for a comment that calls the trigger on a taken,
        open, still labelled issue (or its pull request); its job id."""
        if tracker.by_corral(comment.body) or not self.allowed(comment.repo):
            return None
        text = tracker.follow_up(comment.body, self.settings.trigger)
        if text is None:
            return None
        store = self.services.store
        item = await store.trackers.get(self.name, comment.repo, comment.number)
        if item is None:
            item = await store.trackers.by_pull(self.name, comment.repo, comment.number)
        if item is None or item.state != "open":
            return None
        written = _when(comment.created_at)
        if written is not None and written < item.created_at - CLOCK_SLACK:
            return None  # older than the issue's first turn: it asked nobody
        issue = await self.forge.issue(item.repo, item.number)
        if issue.state != "open" or self.settings.label not in issue.labels:
            return None  # the label was taken off: no new turns
        spec = JobCreate(
            session_id=item.session_id,
            prompt=f"{comment.author or 'Someone'} commented on {comment.url}:\n\n{text}",
            title=f"{item.repo}#{item.number}: {item.title}"[:500],
            priority=tracker.priority_of(issue.labels, self.settings.priorities),
            idempotency_key=tracker.comment_key(
                self.name, comment.repo, comment.number, comment.id
            ),
            source="tracker",
            source_ref=comment.url[:2000] or None,
            labels=[f"tracker:{self.name}"],
            preferred_ai=self.settings.provider,
            needs_local_agent=self.settings.needs_local_agent,
            model=self.settings.model,
            max_attempts=self.settings.max_attempts,
            timeout=self.settings.timeout,
        )
        job, created = await submit(self.services, spec)
        if created:
            self.status.turns += 1
        await store.trackers.record(
            tracker=self.name,
            repo=item.repo,
            number=item.number,
            url=item.url,
            title=item.title,
            session_id=item.session_id,
            job_id=job.id,
        )
        return job.id

    async def clone_url(self, repo: str) -> str:
        url = self._clone_urls.get(repo)
        if url is None:
            data = await self.forge.repository(repo)
            url = str(data.get("clone_url") or "")
            if not url:
                raise ForgeError(f"{repo} has no clone_url")
            self._clone_urls[repo] = url
        return url

    # -- inbound webhooks ---------------------------------------------------------

    async def delivery(self, event: str, payload: dict[str, Any]) -> str:
        """Act on a verified webhook delivery; what was done, for the answer."""
        repo = str((payload.get("repository") or {}).get("full_name") or "")
        if not repo:
            return "ignored: no repository"
        if event == "issues" and isinstance(payload.get("issue"), dict):
            item = await self.take_issue(self.forge.to_issue(repo, payload["issue"]))
            return f"issue: {'job ' + item.job_id if item else 'not taken'}"
        if event == "issue_comment" and isinstance(payload.get("comment"), dict):
            if payload.get("action") not in (None, "created"):
                return "ignored: not a new comment"
            data = dict(payload["comment"])
            issue = payload.get("issue") or {}
            if issue.get("number") is not None:
                data["issue_url"] = f"/issues/{issue['number']}"
            job_id = await self.take_comment(self.forge.to_comment(repo, data))
            return f"comment: {'job ' + job_id if job_id else 'no turn'}"
        return f"ignored: {event}"

    # -- status ----------------------------------------------------------------------

    async def save_status(self) -> None:
        with _suppress_store():
            await self.services.store.settings.set(
                STATUS_KEY.format(name=self.name), json.dumps(asdict(self.status))
            )

    async def aclose(self) -> None:
        await self.forge.aclose()


async def enabled(services: Services, settings: TrackerSettings) -> bool:
    """The switch: `corral trackers enable|disable` (in the database), else the config."""
    stored = await services.store.settings.get(ENABLED_KEY.format(name=settings.name))
    return settings.enabled if stored is None else stored == "true"


def intake_for(services: Services, name: str) -> TrackerIntake:
    """This replica's intake of the tracker ``name`` (made on first use)."""
    found = services.trackers.get(name)
    if found is None:
        settings = services.settings.tracker(name)
        if settings is None:
            raise KeyError(name)
        found = services.trackers[name] = TrackerIntake(services, settings)
    assert isinstance(found, TrackerIntake)
    return found


def _when(value: str) -> datetime | None:
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


async def stored_status(services: Services, name: str) -> Status:
    raw = await services.store.settings.get(STATUS_KEY.format(name=name))
    if raw is None:
        return Status()
    try:
        return Status(**json.loads(raw))
    except (ValueError, TypeError):
        return Status()


class _suppress_store:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: object, tb: object) -> bool:
        if isinstance(exc, CorralError):
            log.warning("tracker status not saved: %s", exc.message)
            return True
        return False
