"""The loops a control plane runs beside its routes, and how they are named.

A loop is ``async def fn(services) -> None`` that runs until cancelled. A
``leader`` loop runs on one replica at a time (``store.leader``); an
``intake`` loop takes new work in, so it is the first thing stopped."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from corral.chat import TelegramChannel
from corral.errors import CorralError
from corral.intake.folder import FolderIntake
from corral.intake.schedules import Scheduler
from corral.intake.telegram import TelegramIntake
from corral.intake.tracker import intake_for
from corral.protocol import topics
from corral.services import Services
from corral.sinks.chat import ChatSender
from corral.sinks.tracker import TrackerSink
from corral.sinks.webhook import Sender

log = logging.getLogger(__name__)

LoopFn = Callable[[Services], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class Loop:
    name: str
    fn: LoopFn
    leader: bool = False
    intake: bool = False


async def watchdog(svc: Services) -> None:
    """Re-queue the jobs whose runner stopped heartbeating (see ``/watchdog/status``).

    A replica that just started gives runners one ``lease_ttl`` to heartbeat
    again before it expires anything: leases that ran out while no control
    plane answered (a restart, a failover) belong to runners that may be alive
    and were only cut off — as Nomad resets its heartbeat TTLs after a leader
    election. A runner that is really gone is released a ``lease_ttl`` later."""
    svc.watchdog.grace_until = time.time() + svc.settings.lease_ttl
    heads_due = 0.0
    while True:
        await asyncio.sleep(svc.settings.watchdog_interval)
        try:
            # Not held back by the grace: until folded, /status sums every
            # +1/-1 row (PostgreSQL; 100k after a bulk load).
            await svc.store.jobs.compact_counts()
        except CorralError as exc:
            log.warning("folding the job counts failed: %s", exc.message)
        if time.monotonic() >= heads_due:
            heads_due = time.monotonic() + HEADS_EVERY
            await _free_heads(svc)
        if time.time() < svc.watchdog.grace_until:
            continue
        try:
            lost = await svc.store.jobs.expire()
            svc.watchdog.last_error = None
        except CorralError as exc:
            svc.watchdog.last_error = exc.message
            log.warning("watchdog sweep failed: %s", exc.message)
            continue
        svc.watchdog.sweeps += 1
        svc.watchdog.last_sweep_at = time.time()
        svc.watchdog.expired += len(lost)
        for job in lost:
            log.warning(
                "job %s lost its runner; now %s",
                job.id,
                job.state.value,
                extra={"job_id": job.id, "session_id": job.session_id},
            )


# How often the watchdog looks for a turn left waiting behind one that ended
# (store/jobs/turns.py): a rare race on PostgreSQL.
HEADS_EVERY = 30.0


async def _free_heads(svc: Services) -> None:
    try:
        freed = await svc.store.jobs.free_heads()
    except CorralError as exc:
        log.warning("freeing waiting turns failed: %s", exc.message)
        return
    for job_id, session_id, turn in freed:
        log.warning(
            "job %s (turn %d) was left waiting behind an ended turn of its session; freed",
            job_id,
            turn,
            extra={"job_id": job_id, "session_id": session_id},
        )


async def webhooks(svc: Services) -> None:
    """Send what the webhook outbox holds (``sinks/webhook.py``)."""
    settings = svc.settings
    sender = Sender(
        svc.store,
        default_secret=svc.webhook_secret,
        timeout=settings.webhook_timeout,
        horizon=settings.webhook_retry_horizon,
        concurrency=settings.webhook_concurrency,
        allow_private=settings.webhooks_may_reach_private,
        trusted=frozenset(h.url for h in settings.webhooks),
    )
    await sender.run()


async def trackers(svc: Services) -> None:
    """Poll the ``[[trackers]]`` (each every ``poll_interval``, or at once when
    ``POST /trackers/NAME/sync`` asks); their webhooks come through the API."""
    intakes = [intake_for(svc, t.name) for t in svc.settings.trackers]
    due = {i.name: 0.0 for i in intakes}
    with svc.store.bus.subscribe(topics.TRACKERS, maxsize=1000) as asked:
        while True:
            for i in intakes:
                if due[i.name] <= time.monotonic():
                    due[i.name] = time.monotonic() + await i.poll()
            wait = min(due.values()) - time.monotonic()
            for message in await asked.get(timeout=max(0.05, wait)):
                # "tracker:NAME:sync=..." or "tracker:NAME:enabled=...": poll NAME now.
                if isinstance(message, str) and message.startswith("tracker:"):
                    name = message.split(":", 2)[1]
                    if name in due:
                        due[name] = 0.0


async def tracker_sink(svc: Services) -> None:
    """Write tracker jobs' labels, comments and pull requests back (``sinks/tracker.py``)."""
    sink = TrackerSink(svc, {t.name: intake_for(svc, t.name).forge for t in svc.settings.trackers})
    await sink.run()


async def queue_folder(svc: Services) -> None:
    """Every ``*.md`` file dropped in the queue folder becomes a job."""
    await FolderIntake(svc.settings.queue_dir, svc).run()


async def chat_replies(svc: Services) -> None:
    """Send what the chat outbox owes to the channels (``sinks/chat.py``)."""
    settings = svc.settings
    sender = ChatSender(
        svc.store,
        settings.channels,
        timeout=settings.webhook_timeout,
        horizon=settings.webhook_retry_horizon,
    )
    await sender.run()


def telegram(channel: TelegramChannel) -> LoopFn:
    """The long poll of one Telegram bot (``intake/telegram.py``)."""

    async def poll(svc: Services) -> None:
        await TelegramIntake(svc, channel).run()

    return poll


async def schedules(svc: Services) -> None:
    """Each due slot of the ``[[schedules]]`` tables becomes one job."""
    await Scheduler(svc).run()
