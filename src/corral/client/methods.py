"""The client's methods: each named once, here, for both faces. ``Client``
returns what the declaration reads, ``AsyncClient`` a coroutine of it;
``stream`` methods are iterators and async iterators."""

from __future__ import annotations

from . import calls, flows
from .base import endpoint, stream


class Methods:
    # jobs
    submit = endpoint(calls.submit)
    run = endpoint(flows.run)
    get = endpoint(calls.get)
    list = endpoint(calls.list_jobs)
    wait = endpoint(flows.wait)
    cancel = endpoint(calls.cancel)
    retry = endpoint(calls.retry)
    answer = endpoint(calls.answer)
    route = endpoint(calls.route)
    artifacts = endpoint(calls.artifacts)
    artifact = endpoint(calls.artifact)
    job_event_list = endpoint(flows.job_event_list)
    job_events = stream(flows.job_events)
    # sessions
    create_session = endpoint(calls.create_session)
    session = endpoint(calls.session)
    turn = endpoint(calls.turn)
    session_events = endpoint(flows.session_events)
    events = stream(flows.events)
    # spend
    usage = endpoint(calls.usage)
    stats = endpoint(calls.stats)
    budgets = endpoint(calls.budgets)
    # webhooks
    deliveries = endpoint(calls.deliveries)
    all_deliveries = endpoint(calls.all_deliveries)
    redeliver = endpoint(calls.redeliver)
    webhook_secret = endpoint(calls.webhook_secret)
    # issue trackers
    trackers = endpoint(calls.trackers)
    tracker = endpoint(calls.tracker)
    tracker_action = endpoint(calls.tracker_action)
    # runners
    runners = endpoint(calls.runners)
    forget_runner = endpoint(calls.forget_runner)
    # the kill switch and status
    pause = endpoint(calls.pause)
    resume = endpoint(calls.resume)
    resume_provider = endpoint(calls.resume_provider)
    status = endpoint(calls.status)
    whoami = endpoint(calls.whoami)
    # agent daemons
    agents = endpoint(calls.agents)
    agent = endpoint(calls.agent)
    agent_action = endpoint(calls.agent_action)
    reload_agents = endpoint(calls.reload_agents)
    agent_logs = endpoint(calls.agent_logs)
    follow_agent_logs = stream(flows.follow_agent_logs)
    # schedules
    schedules = endpoint(calls.schedules)
    schedule = endpoint(calls.schedule)
    run_schedule = endpoint(calls.run_schedule)
    enable_schedule = endpoint(calls.enable_schedule)
    disable_schedule = endpoint(calls.disable_schedule)
    # the Ollama-compatible endpoints
    tags = endpoint(calls.tags)
    embed = endpoint(calls.embed)
    chat = endpoint(calls.chat)
