"""``Server(settings)``: the one composition root of ``corral serve``.

It opens the store, builds the services and the app, runs the loops beside
the routes (watchdog, webhook sender, queue folder and whatever else is
registered with ``loop()``), the embedded runner once HTTP answers, and owns
the order things stop in. On SIGTERM or SIGINT:

1. the intake loops stop: no new work is taken in;
2. the embedded runner stops while HTTP still answers, so the jobs and agent
   daemons it stopped are reported (and its agents released to another
   replica's runner);
3. uvicorn stops listening, and the long-polls waiting here (leases, agent
   polls) answer at once, on connections that close: their runners go to
   another replica instead of being cut after the graceful timeout;
4. uvicorn finishes the requests in flight; then the other loops stop, the
   store closes and ``server.json`` is removed.

A second signal ends the process at once.

``corral serve`` calls ``run()``; ``uvicorn --factory corral.server:factory``
gets the same process (the app's lifespan does the same, and the running
uvicorn is found through its signal handler); the tests use ``async with
Server(settings)`` (services and loops, without HTTP or the runner)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI

from corral import discovery
from corral.api.app import create_app
from corral.auth import Role, key_id_of
from corral.config import Settings, is_loopback
from corral.errors import ConfigError
from corral.intake.folder import prepare as prepare_queue
from corral.server import build
from corral.server.loops import (
    Loop,
    LoopFn,
    chat_replies,
    queue_folder,
    schedules,
    telegram,
    tracker_sink,
    trackers,
    watchdog,
    webhooks,
)
from corral.services import Services
from corral.store import Store
from corral.store.leader import run_as_leader

if TYPE_CHECKING:
    from corral.executors.sandbox import Sandbox

log = logging.getLogger(__name__)

# How long uvicorn lets requests in flight finish once it stops listening.
GRACEFUL_SECONDS = 3
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Server:
    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        announce: Callable[[Server], None] | None = None,
    ) -> None:
        """``store``: one the caller opened and closes (else the configured
        database is opened at start). ``announce``: told once HTTP answers
        (``url``, ``sandbox`` are set then); by default it logs."""
        self.settings = settings
        self.app: FastAPI = create_app(settings, lifespan=self._lifespan)
        self.announce = announce or _log_listening
        self.loops: list[Loop] = []
        self.url: str | None = None
        self.sandbox: Sandbox | None = None
        self._given_store = store
        self._services: Services | None = None
        self._runner_key: str | None = None
        self._uvicorn: uvicorn.Server | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._runner: asyncio.Task[None] | None = None
        self._draining: asyncio.Task[None] | None = None
        self._drained = False
        self._settling: _Settling | None = None
        self._stopped = False
        self._signals: list[int] = []
        self._reloads: set[asyncio.Task[dict[str, list[str]]]] = set()
        self.loop("watchdog", watchdog)
        self.loop("mcp-sessions", self._mcp_sessions)
        self.loop("webhooks", webhooks, leader=True)
        if settings.trackers:
            # One replica polls (and writes back); any replica takes webhooks.
            self.loop("trackers", trackers, leader=True, intake=True)
            self.loop("tracker-sink", tracker_sink, leader=True)
        if settings.queue_enabled:
            # One replica watches a shared folder: the others stand by.
            self.loop("queue-folder", queue_folder, leader=True, intake=True)
        if settings.channels:
            self.loop("chat-replies", chat_replies, leader=True)
        for channel in settings.channels:
            if channel.kind == "telegram" and channel.enabled:
                self.loop(f"telegram-{channel.name}", telegram(channel), leader=True, intake=True)
        if settings.schedules:
            # One replica fires the slots; each slot's idempotency key keeps
            # a moment of two leaders from firing one twice.
            self.loop("schedules", schedules, leader=True, intake=True)

    def loop(self, name: str, fn: LoopFn, *, leader: bool = False, intake: bool = False) -> None:
        """Run ``fn(services)`` while the server runs (register before ``start``).
        ``leader``: on one replica at a time. ``intake``: it takes work in;
        it starts once HTTP answers and is the first thing stopped."""
        if any(lp.name == name for lp in self.loops):
            raise ValueError(f"a loop named {name!r} is registered already")
        self.loops.append(Loop(name, fn, leader=leader, intake=intake))

    async def _mcp_sessions(self, svc: Services) -> None:
        """The operator MCP server's sessions (``/mcp``) live while this runs."""
        async with self.app.state.mcp.running():
            await asyncio.Event().wait()

    @property
    def services(self) -> Services:
        if self._services is None:
            raise RuntimeError("the server has not started")
        return self._services

    @property
    def store(self) -> Store:
        return self.services.store

    # -- start ----------------------------------------------------------------------

    async def start(self) -> Services:
        """Open the store, build the services, start the loops that are not
        intake. Idempotent."""
        if self._services is not None:
            return self._services
        store = self._given_store or await build.open_store(self.settings)
        try:
            svc = await build.services(self.settings, store)
        except BaseException:
            if self._given_store is None:
                await store.close()
            raise
        self._services = svc
        self.app.state.services = svc
        for lp in self.loops:
            if not lp.intake:
                self._start_loop(lp)
        return svc

    async def _prepare_to_listen(self, host: str) -> None:
        """The local keys of a server listening on ``host``, and the embedded
        runner's sandbox (a `sandbox = "bwrap"` without bwrap stops here)."""
        settings, store = self.settings, self.store
        if settings.queue_enabled:
            prepare_queue(settings.queue_dir)  # there before the server says it is up
        if is_loopback(host):
            await build.local_key(
                store, settings.admin_key_file, name="local admin", role=Role.ADMIN
            )
        elif await store.keys.count_active() == 0:
            raise ConfigError(
                f"refusing to listen on {host} with no API keys: create one with "
                "`corral keys create --role admin` and keep it safe, then start again"
            )
        if settings.runner.embedded:
            from corral.executors.sandbox import make as make_sandbox
            from corral.store.agents import EMBEDDED_KEY

            self._runner_key = await build.local_key(
                store, settings.data_dir / "runner.key", name=EMBEDDED_KEY, role=Role.RUNNER
            )
            # The embedded runner's name is this server's own: no other key
            # may register under it (a new runner.key takes it back).
            await store.runners.claim(
                build.embedded_runner_name(settings), key_id_of(self._runner_key)
            )
            self.sandbox = await asyncio.to_thread(
                make_sandbox,
                settings.runner.sandbox,
                hidden=settings.sandbox_hidden(),
                state_dir=settings.data_dir / "runner",
            )

    def _start_loop(self, lp: Loop) -> None:
        svc = self.services

        def body() -> Any:
            return lp.fn(svc)

        def leading(now: bool) -> None:
            svc.liveness.leading[lp.name] = now

        if lp.leader:
            svc.liveness.leading[lp.name] = False
            work = run_as_leader(svc.store, lp.name, body, leading=leading)
        else:
            work = body()
        task = asyncio.create_task(work, name=f"corral-{lp.name}")
        task.add_done_callback(_log_crash)
        self._tasks[lp.name] = svc.liveness.tasks[lp.name] = task

    async def _when_listening(self, uv: uvicorn.Server) -> None:
        """``_listening`` once a uvicorn we did not start listens."""
        while not uv.started:
            if uv.should_exit:
                return
            await asyncio.sleep(0.01)
        self._listening(uv)

    def _listening(self, uv: uvicorn.Server) -> None:
        """Now that uvicorn listens: record the URL, start the embedded runner
        and the intake loops."""
        if self._drained:
            return
        address = uv.servers[0].sockets[0].getsockname()
        if not isinstance(address, tuple):  # a unix socket: no URL a runner could use
            log.warning("listening on %s: the embedded runner needs a TCP port", address)
            return
        self.url = self.settings.model_copy(
            update={"host": uv.config.host, "port": address[1]}
        ).local_url()
        # What start-up made lives as long as the process: out of the
        # collector's sight, full collections stay short (latency tails).
        gc.freeze()
        if self._settling is None:
            self._settling = _Settling(asyncio.get_running_loop())
        # The watchdog's grace after a start (one lease_ttl for runners to
        # heartbeat again) counts from now, when runners can reach this
        # replica: counted from the store's opening, a start that took
        # seconds on a busy machine left them less, and a live runner's job
        # was expired and re-queued (test_a_server_restart_leaves_a_live_runner_its_jobs).
        watchdog = self.services.watchdog
        watchdog.grace_until = max(
            watchdog.grace_until or 0.0, time.time() + self.settings.lease_ttl
        )
        discovery.record(self.settings.data_dir, self.url)  # the CLI finds us by the data dir
        self.announce(self)
        if self._runner_key is not None and self.sandbox is not None:
            self._start_runner(self.url, self._runner_key, self.sandbox)
        for lp in self.loops:
            if lp.intake:
                self._start_loop(lp)

    def _start_runner(self, url: str, key: str, sandbox: Sandbox) -> None:
        from corral.api.local import LocalLink
        from corral.runner import Runner
        from corral.store.agents import EMBEDDED

        settings = self.settings
        runner = Runner(
            url,
            key,
            workdir=settings.data_dir,
            name=build.embedded_runner_name(settings),
            slots=settings.runner.slots,
            providers=settings.runner_providers(settings.embedded_providers()),
            lease_wait=settings.runner.lease_wait,
            kill_grace=settings.runner.kill_grace,
            agent_aliases=[EMBEDDED],
            sandbox=sandbox,
            mcp_servers=settings.mcp.servers,
            in_process=partial(LocalLink, self.services, key),
        )
        self._runner = asyncio.create_task(runner.run(), name="corral-embedded-runner")
        self._runner.add_done_callback(_log_crash)
        self.services.liveness.tasks["embedded-runner"] = self._runner

    # -- run ------------------------------------------------------------------------

    async def run(self) -> None:
        """``corral serve``: serve HTTP on the configured host and port until
        SIGTERM or SIGINT, then stop in order (see the module docstring)."""
        await self.start()
        try:
            await self._prepare_to_listen(self.settings.host)
            config = uvicorn.Config(
                self.app,
                host=self.settings.host,
                port=self.settings.port,
                log_config=None,
                access_log=False,
                lifespan="on",
                timeout_graceful_shutdown=GRACEFUL_SECONDS,
                loop="asyncio",
            )
            self._uvicorn = uv = _Uvicorn(config, on_started=self._listening)
            await uv.serve()
            if not uv.started:
                raise ConfigError(f"could not listen on {self.settings.host}:{self.settings.port}")
        finally:
            await self.stop()

    @asynccontextmanager
    async def _lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        uv = self._uvicorn or _running_uvicorn()
        await self.start()
        try:
            if uv is not None:
                if self._uvicorn is None:  # uvicorn --factory: it listens, not us
                    await self._prepare_to_listen(uv.config.host)
                    self._uvicorn = uv
                self._catch_signals()
                if not isinstance(uv, _Uvicorn):
                    self._tasks["listening"] = asyncio.create_task(
                        self._when_listening(uv), name="corral-listening"
                    )
            else:
                log.warning(
                    "not served by uvicorn: the embedded runner and the intake loops do not start"
                )
            yield
        finally:
            await self.stop()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- stop -----------------------------------------------------------------------

    def _catch_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
            self._signals.append(sig)
        # SIGHUP: apply [agents.*] changes from the configuration file.
        loop.add_signal_handler(signal.SIGHUP, self._reload_agents)
        self._signals.append(signal.SIGHUP)

    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self._draining is None:
            log.info("%s: stopping (send it again to exit at once)", name)
            self._draining = asyncio.create_task(self.drain(sig), name="corral-drain")
            self._draining.add_done_callback(_log_crash)
            return
        log.warning("%s again: exiting at once", name)
        asyncio.get_running_loop().remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_DFL)
        signal.raise_signal(sig)

    async def drain(self, sig: int = signal.SIGTERM) -> None:
        """Steps 1 to 3 of stopping: intake, the embedded runner, then HTTP
        stops listening and the long-polls answer."""
        if self._drained:
            return
        self._drained = True
        discovery.forget(self.settings.data_dir)
        await self._stop_tasks([lp.name for lp in self.loops if lp.intake])
        runner, self._runner = self._runner, None
        if runner is not None and not runner.done():
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        uv = self._uvicorn
        if uv is not None and not uv.should_exit:
            uv.handle_exit(sig, None)
            # Once it stopped accepting, a long-poll's answer is its last on
            # this connection: the runner's next poll goes to another replica.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(GRACEFUL_SECONDS):
                    while uv.started and any(s.is_serving() for s in uv.servers):
                        await asyncio.sleep(0.01)
        if self._services is not None:
            self._services.end_polls()

    async def stop(self) -> None:
        """Stop everything, in order; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        draining = self._draining
        if draining is not None and draining is not asyncio.current_task():
            await asyncio.gather(draining, return_exceptions=True)
        await self.drain()
        loop = asyncio.get_running_loop()
        for sig in self._signals:
            loop.remove_signal_handler(sig)
        self._signals.clear()
        await self._stop_tasks(list(self._tasks))
        if self._settling is not None:
            self._settling.close()
        for task in list(self._reloads):
            task.cancel()
        if self._services is not None and self._given_store is None:
            await self._services.store.close()
        discovery.forget(self.settings.data_dir)
        log.info("corral stopped")

    async def _stop_tasks(self, names: list[str]) -> None:
        tasks = [t for n in names if (t := self._tasks.pop(n, None)) is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _reload_agents(self) -> None:
        if self._services is None:
            return
        task = asyncio.create_task(self._services.reload_agents())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)
        task.add_done_callback(_log_reload)


def factory() -> FastAPI:
    """For ``uvicorn --factory corral.server:factory``: the same process as
    ``corral serve`` (settings from the environment and corral.toml; host and
    port are uvicorn's)."""
    from corral.config import load_settings

    return Server(load_settings()).app


class _Uvicorn(uvicorn.Server):
    """uvicorn, with the signals left to ``Server`` (the stock one re-raises
    a caught signal once it stopped, which ended the process before the
    store was closed), telling ``on_started`` as soon as it listens: before
    it answers any request."""

    def __init__(self, config: uvicorn.Config, *, on_started: Callable[[uvicorn.Server], None]):
        super().__init__(config)
        self.on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.on_started(self)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _running_uvicorn() -> uvicorn.Server | None:
    """The uvicorn server this process runs, if uvicorn's CLI (or
    ``uvicorn.run``) started it: its signal handler is a method of it."""
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return server if isinstance(server, uvicorn.Server) else None


def _log_listening(server: Server) -> None:
    log.info("corral %s listening on %s", server.store.db.dialect, server.url)


def _log_crash(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s stopped: %r", task.get_name(), task.exception(), exc_info=task.exception())


def _log_reload(task: asyncio.Task[dict[str, list[str]]]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("agents reload failed: %s", exc)
    else:
        log.info("agents reloaded: %s", task.result())


# How many full collections after start-up also freeze what they leave.
SETTLING_FREEZES = 3


class _Settling:
    """More of the program loads as it is first used after start-up (the MCP
    gateway, HTTP clients, the first job's modules): ~38,000 objects that
    every full collection walked again, a 12-15 ms pause every few seconds
    under load (issue #18). What the first few full collections after
    start-up leave alive is frozen too (right after one, nothing the
    collector tracks is garbage). A frozen object is never collected, even
    if it later ends up in a reference cycle: hence only a few."""

    def __init__(self, loop: asyncio.AbstractEventLoop, times: int = SETTLING_FREEZES) -> None:
        self._loop = loop
        self.left = times
        gc.callbacks.append(self._collected)

    def _collected(self, phase: str, info: dict[str, int]) -> None:
        # The collector runs in whichever thread allocated when it was due,
        # in the middle of that thread's work: the freeze runs on the loop.
        if phase != "stop" or info["generation"] != 2 or self.left <= 0:
            return
        self.left -= 1
        with contextlib.suppress(RuntimeError):  # the loop is closed
            self._loop.call_soon_threadsafe(gc.freeze)

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._collected)
