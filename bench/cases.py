"""The four measurements. Each returns ``Result`` rows; ``run.py`` starts the
servers and databases, prints the table and writes the JSON.

Clock: every latency is wall-clock (``time.time()`` here, ``datetime.now()`` in
the server) on the same host, so the two sides compare directly."""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from corral.auth import WorkerClaims
from corral.models import JobCreate, NewEvent, event_id
from corral.store import Store
from corral.testing import ServerProcess

TERMINAL = ("done", "failed", "cancelled")
SSE_HEADERS = {"Accept": "text/event-stream"}
# The environment of every server the benchmarks start (run.py --sandbox adds to it).
SERVER_ENV: dict[str, str] = {"CORRAL_LOG_LEVEL": "WARNING"}
# Runner slots of the servers that run (b), its burst and (e).
THROUGHPUT_SLOTS = 16
THROUGHPUT_ENV = {"CORRAL_RUNNER__SLOTS": str(THROUGHPUT_SLOTS)}


@dataclass
class Result:
    metric: str
    value: float | None
    unit: str
    target: float | None = None  # None: informational row
    higher_is_better: bool = False
    samples: int = 0
    note: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "skipped"
        if self.target is None:
            return "-"
        ok = self.value >= self.target if self.higher_is_better else self.value <= self.target
        return "pass" if ok else "miss"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}


def skipped(
    metric: str, unit: str, reason: str, target: float | None = None, higher_is_better: bool = False
) -> Result:
    return Result(metric, None, unit, target, higher_is_better, note=reason)


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (field 3 on)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return stat[stat.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (Linux /proc)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuAccount:
    """Where a machine's CPU went (Linux /proc): all CPUs busy and idle, a
    process's own CPU, the CPU of the children it reaped (a server's job
    processes: bwrap, the shell) and the time its threads waited runnable
    for a CPU (schedstat). ``since`` gives the differences."""

    busy: float
    idle: float
    own: float
    children: float
    runnable_wait: float

    @classmethod
    def now(cls, pid: int) -> CpuAccount:
        tick = os.sysconf("SC_CLK_TCK")
        with open("/proc/stat") as f:
            cpu = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal
        busy = sum(cpu[i] for i in (0, 1, 2, 5, 6, 7) if i < len(cpu)) / tick
        idle = (cpu[3] + cpu[4]) / tick
        fields = _stat_fields(pid)
        own = (int(fields[11]) + int(fields[12])) / tick
        children = (int(fields[13]) + int(fields[14])) / tick
        waited = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    waited += int(f.read().split()[1])
            except (OSError, IndexError, ValueError):  # a thread that ended meanwhile
                continue
        return cls(busy, idle, own, children, waited / 1e9)

    def since(self, before: CpuAccount) -> CpuAccount:
        return CpuAccount(
            *(getattr(self, f) - getattr(before, f) for f in self.__dataclass_fields__)
        )


def admin_http(srv: ServerProcess, *, connections: int = 20) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=srv.url,
        headers={"Authorization": f"Bearer {srv.admin_key}"},
        timeout=httpx.Timeout(30.0, read=60.0),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


def check(resp: httpx.Response) -> Any:
    if resp.status_code >= 300:
        raise RuntimeError(
            f"{resp.request.method} {resp.request.url.path}: "
            f"HTTP {resp.status_code} {resp.text[:300]}"
        )
    return resp.json()


def check_stream(resp: httpx.Response) -> None:
    if resp.status_code != 200:
        raise RuntimeError(f"stream refused: HTTP {resp.status_code}")


# --- (a) submit -> process started ------------------------------------------------------


async def one_submit(http: httpx.AsyncClient, command: str = "true") -> dict[str, Any]:
    """Submit ``command`` into a fresh session whose stream is already open, wait
    for the job's terminal state on that stream, return the job and the submit time.
    Watching the stream (not polling) keeps the server otherwise idle."""
    session = check(await http.post("/sessions", json={}))
    path = f"/sessions/{session['id']}/stream"
    async with aconnect_sse(http, "GET", path, headers=SSE_HEADERS) as source:
        check_stream(source.response)
        submitted = time.time()
        body = {"command": command, "session_id": session["id"]}
        job = check(await http.post("/jobs", json=body))
        async for sse in source.aiter_sse():
            ev = json.loads(sse.data)
            if ev["type"] == "job.state" and ev["payload"].get("to") in TERMINAL:
                break
    data: dict[str, Any] = check(await http.get(f"/jobs/{job['job_id']}"))
    data["_submitted"] = submitted
    return data


async def submit_latency(
    srv: ServerProcess, samples: int, warmup: int, seconds: float
) -> list[Result]:
    lat: list[float] = []
    phases: dict[str, list[float]] = {"created": [], "assigned": [], "started": [], "finished": []}
    failed = 0
    deadline = time.monotonic() + seconds
    async with admin_http(srv) as http:
        for i in range(warmup + samples):
            if time.monotonic() > deadline:
                break
            job = await one_submit(http)
            if i < warmup:
                continue
            if job["state"] != "done" or not job["started_at"]:
                failed += 1
                continue
            t0 = job["_submitted"]
            lat.append(ts(job["started_at"]) - t0)
            for name in phases:
                phases[name].append(ts(job[f"{name}_at"]) - t0)
    if not lat:
        return [skipped("(a) submit→started p99", "ms", "no job completed")]
    note = "sequential `true` jobs, default 4 slots"
    if len(lat) < samples:
        note += f"; time limit hit after {len(lat)} samples"
    if failed:
        note += f"; {failed} jobs did not finish done"
    detail = {f"{name}_at_p50_ms": ms(pct(v, 50)) for name, v in phases.items()}
    detail |= {f"{name}_at_p99_ms": ms(pct(v, 99)) for name, v in phases.items()}
    return [
        Result(
            "(a) submit→started p50",
            ms(pct(lat, 50)),
            "ms",
            samples=len(lat),
            note=note,
            detail=detail,
        ),
        Result(
            "(a) submit→started p99",
            ms(pct(lat, 99)),
            "ms",
            10.0,
            samples=len(lat),
            detail={"max_ms": ms(max(lat))},
        ),
    ]


# --- (b) throughput ---------------------------------------------------------------------


async def _submit_and_wait(http: httpx.AsyncClient) -> str:
    job = check(await http.post("/jobs", json={"command": "true"}))
    path = f"/jobs/{job['job_id']}/events"
    state = "?"
    async with aconnect_sse(http, "GET", path, headers=SSE_HEADERS) as source:
        check_stream(source.response)
        async for sse in source.aiter_sse():  # the stream ends with the job
            ev = json.loads(sse.data)
            if ev["type"] == "job.state":
                state = ev["payload"]["to"]
    return state


async def throughput(
    srv: ServerProcess, jobs: int, clients: int, slots: int, seconds: float
) -> Result:
    async with admin_http(srv, connections=clients * 3) as http:
        await asyncio.gather(*(_submit_and_wait(http) for _ in range(clients)))  # warm-up
        remaining = jobs
        states: dict[str, int] = {}
        deadline = time.monotonic() + seconds

        async def client() -> None:
            nonlocal remaining
            while remaining > 0 and time.monotonic() < deadline:
                remaining -= 1
                state = await _submit_and_wait(http)
                states[state] = states.get(state, 0) + 1

        account = CpuAccount.now(srv.proc.pid)
        own_cpu = time.process_time()
        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - t0
        account = CpuAccount.now(srv.proc.pid).since(account)
        server_cpu = account.own
        own_cpu = time.process_time() - own_cpu
        phases = await _phases(http, limit=jobs)
    done = sum(states.values())
    note = f"{clients} clients, `true` jobs, CORRAL_RUNNER__SLOTS={slots}"
    if done < jobs:
        note += f"; time limit hit after {done} jobs"
    if set(states) != {"done"}:
        note += f"; end states {states}"
    return Result(
        "(b) submit→done throughput",
        round(done / wall, 1),
        "jobs/s",
        500.0,
        True,
        samples=done,
        note=note,
        detail={
            "wall_s": round(wall, 3),
            "server_cpu_s": round(server_cpu, 3),
            "server_cpu_ms_per_job": ms(server_cpu / done),
            "bench_client_cpu_s": round(own_cpu, 3),
            "cpus": os.cpu_count(),
            # The whole machine's CPU per job and its busy share: with every
            # CPU busy, jobs/s is CPUs ÷ machine CPU per job, whatever waits.
            "machine_cpu_ms_per_job": ms(account.busy / done),
            "machine_busy": round(account.busy / max(1e-9, account.busy + account.idle), 3),
            # The jobs' own processes (bwrap, /bin/sh), reaped by the server.
            "job_processes_cpu_ms_per_job": ms(account.children / done),
            # Time the server's threads were ready to run but had no CPU.
            "server_runnable_wait_ms_per_job": ms(account.runnable_wait / done),
            **phases,
        },
    )


async def _done(http: httpx.AsyncClient) -> int:
    """Jobs done so far, from ``GET /status`` (counts kept by the store, no scan)."""
    return int(check(await http.get("/status"))["jobs"].get("done", 0))


async def throughput_burst(
    srv: ServerProcess, jobs: int, connections: int, slots: int, seconds: float
) -> Result:
    """Submit→done as the peer kit measures its queues: one client submits
    ``jobs`` trivial jobs as fast as it can (over ``connections`` keep-alive
    connections) while the runner works, and counts the done ones every
    20 ms from a count the system keeps (Celery's bench: ``apply_async`` in a
    loop, then ``MGET`` of the results). No stream per job: the (b) row above
    has one per job and 8 clients, which is what a person following jobs
    costs; this row is the like-for-like figure for the peers' ratio."""
    async with admin_http(srv, connections=connections + 2) as http:
        # Done before the warm-up: the database may hold finished jobs ((n)).
        before = await _done(http)
        warm = [check(await http.post("/jobs", json={"command": "true"})) for _ in range(8)]
        base = before + len(warm)
        deadline = time.monotonic() + seconds
        while await _done(http) < base and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        base = await _done(http)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(jobs):
            queue.put_nowait(i)

        async def submitter() -> None:
            while not queue.empty():
                queue.get_nowait()
                check(await http.post("/jobs", json={"command": "true"}))

        account = CpuAccount.now(srv.proc.pid)
        own_cpu = time.process_time()
        t0 = time.perf_counter()
        await asyncio.gather(*(submitter() for _ in range(connections)))
        submitted = time.perf_counter() - t0
        done = await _done(http) - base
        while done < jobs and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            done = await _done(http) - base
        wall = time.perf_counter() - t0
        account = CpuAccount.now(srv.proc.pid).since(account)
        own_cpu = time.process_time() - own_cpu
    note = f"{jobs} `true` jobs submitted over {connections} connections, done counted from /status"
    if done < jobs:
        note += f"; time limit hit after {done} jobs"
    return Result(
        "(b) burst submit→done, as the peer kit",
        round(done / wall, 1),
        "jobs/s",
        None,
        True,
        samples=done,
        note=note + f", CORRAL_RUNNER__SLOTS={slots}",
        detail={
            "wall_s": round(wall, 3),
            "submit_per_s": round(jobs / submitted, 1),
            "server_cpu_ms_per_job": ms(account.own / max(1, done)),
            "bench_client_cpu_ms_per_job": ms(own_cpu / max(1, done)),
            "machine_cpu_ms_per_job": ms(account.busy / max(1, done)),
            "machine_busy": round(account.busy / max(1e-9, account.busy + account.idle), 3),
            "job_processes_cpu_ms_per_job": ms(account.children / max(1, done)),
        },
    )


async def _phases(http: httpx.AsyncClient, limit: int) -> dict[str, float]:
    """p50 of each step of the newest ``limit`` jobs, from their timestamps."""
    jobs: list[dict[str, Any]] = []
    before: str | None = None
    while len(jobs) < limit:
        params: dict[str, Any] = {"limit": min(500, limit - len(jobs))}
        if before:
            params["before"] = before
        page = check(await http.get("/jobs", params=params))
        jobs += page["jobs"]
        before = page["next"]
        if not before:
            break
    steps = {
        "queued": ("created_at", "assigned_at"),
        "assigned": ("assigned_at", "started_at"),
        "running": ("started_at", "finished_at"),
        "total": ("created_at", "finished_at"),
    }
    out: dict[str, float] = {}
    for name, (a, b) in steps.items():
        spans = [ts(j[b]) - ts(j[a]) for j in jobs if j[a] and j[b]]
        if spans:
            out[f"{name}_p50_ms"] = ms(pct(spans, 50))
    return out


# --- (c) event ingest -------------------------------------------------------------------


def event_dicts(count: int, size: int) -> list[list[dict[str, Any]]]:
    """Output events as a runner's channel sends them: writer-minted ids, an 80-char line."""
    line = "x" * 80
    return [
        [
            {
                "event_id": event_id(),
                "type": "output",
                "payload": {"stream": "stdout", "line": line},
            }
            for _ in range(size)
        ]
        for _ in range(count)
    ]


def event_batches(count: int, size: int) -> list[list[NewEvent]]:
    return [[NewEvent(**e) for e in batch] for batch in event_dicts(count, size)]


async def store_ingest(
    url: str, label: str, batches: int, size: int, seconds: float, target: float | None
) -> Result:
    """``store.jobs.append_events`` in a loop, one writer, no HTTP."""
    store = await Store.open(url)
    try:
        await store.jobs.create(JobCreate(command="true"))
        runner = await store.runners.register(
            name="bench", key_id="bench", hostname=None, providers=["shell"], labels=[], slots=1
        )
        [lease] = await store.jobs.lease(runner, 1, ttl=3600)
        claims = WorkerClaims(lease.job.id, lease.session.id, lease.job.epoch, runner.id)
        await store.jobs.start(claims)
        for batch in event_batches(5, size):  # warm-up
            await store.jobs.append_events(claims, batch)
        per_batch: list[float] = []
        deadline = time.monotonic() + seconds
        for batch in event_batches(batches, size):
            b0 = time.perf_counter()
            await store.jobs.append_events(claims, batch)
            per_batch.append(time.perf_counter() - b0)
            if time.monotonic() > deadline:
                break
    finally:
        await store.close()
    events = len(per_batch) * size
    wall = sum(per_batch)
    return Result(
        f"(c) ingest, store, {label}",
        round(events / wall),
        "events/s",
        target,
        True,
        samples=events,
        note=f"append_events, batches of {size}, one writer",
        detail={"batch_p50_ms": ms(pct(per_batch, 50)), "batch_p99_ms": ms(pct(per_batch, 99))},
    )


@dataclass
class Worker:
    """A job leased by hand over HTTP: its worker JWT and ids."""

    token: str
    job_id: str
    session_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def register_runner(http: httpx.AsyncClient) -> str:
    body = {"name": "bench", "providers": ["shell"], "slots": 64}
    runner_id: str = check(await http.post("/runners/register", json=body))["runner_id"]
    return runner_id


async def lease_worker(http: httpx.AsyncClient, runner_id: str) -> Worker:
    """Submit a job, lease it to our runner (the server has no embedded runner),
    mark it running. Returns its worker credentials."""
    job = check(await http.post("/jobs", json={"command": "true", "title": "bench"}))
    lease = check(await http.post(f"/runners/{runner_id}/lease", json={"max_jobs": 1, "wait": 5}))
    if not lease["jobs"] or lease["jobs"][0]["job"]["id"] != job["job_id"]:
        raise RuntimeError(f"lease did not return job {job['job_id']}: {lease}")
    w = Worker(lease["jobs"][0]["token"], job["job_id"], job["session_id"])
    check(await http.put("/worker/state", json={"state": "running"}, headers=w.headers))
    return w


async def finish_worker(http: httpx.AsyncClient, w: Worker) -> None:
    check(
        await http.post("/worker/complete", json={"outcome": {"status": "done"}}, headers=w.headers)
    )


async def http_ingest(
    srv: ServerProcess,
    runner_id: str,
    label: str,
    batches: int,
    size: int,
    seconds: float,
    target: float | None,
) -> Result:
    """POST /worker/events in a loop from one worker, as a runner's channel does
    (one request in flight)."""
    async with admin_http(srv) as http:
        w = await lease_worker(http, runner_id)
        bodies = [{"events": batch} for batch in event_dicts(batches + 5, size)]
        for body in bodies[:5]:  # warm-up
            check(await http.post("/worker/events", json=body, headers=w.headers))
        # What a request costs before its events: a GET /health round trip,
        # and an empty batch (the same route, auth and write transaction).
        health, empty = [], []
        for _ in range(100):
            h0 = time.perf_counter()
            check(await http.get("/health"))
            e0 = time.perf_counter()
            check(await http.post("/worker/events", json={"events": []}, headers=w.headers))
            health.append(e0 - h0)
            empty.append(time.perf_counter() - e0)
        per_batch: list[float] = []
        server_cpu = 0.0
        deadline = time.monotonic() + seconds
        for body in bodies[5:]:
            cpu0, b0 = cpu_seconds(srv.proc.pid), time.perf_counter()
            check(await http.post("/worker/events", json=body, headers=w.headers))
            per_batch.append(time.perf_counter() - b0)
            server_cpu += cpu_seconds(srv.proc.pid) - cpu0
            if time.monotonic() > deadline:
                break
        await finish_worker(http, w)
    events = len(per_batch) * size
    wall = sum(per_batch)
    return Result(
        f"(c) ingest, HTTP, {label}",
        round(events / wall),
        "events/s",
        target,
        True,
        samples=events,
        note=f"POST /worker/events, batches of {size}, one worker",
        detail={
            "batch_p50_ms": ms(pct(per_batch, 50)),
            "batch_p99_ms": ms(pct(per_batch, 99)),
            "server_cpu_us_per_event": round(server_cpu / events * 1e6, 2),
            "health_p50_ms": ms(pct(health, 50)),
            "empty_batch_p50_ms": ms(pct(empty, 50)),
        },
    )


# --- (d) SSE delivery latency -----------------------------------------------------------


Deliver = Callable[[dict[str, Any], float], bool]  # (event, received at) -> keep going?


async def httpx_subscriber(
    srv: ServerProcess, http: httpx.AsyncClient, path: str, deliver: Deliver, hold: asyncio.Event
) -> None:
    """An SSE client as users write one: httpx + httpx-sse. Once ``deliver``
    says it has all, it waits for ``hold`` before it disconnects."""
    async with aconnect_sse(http, "GET", path, headers=SSE_HEADERS) as source:
        check_stream(source.response)
        async for sse in source.aiter_sse():
            if not deliver(json.loads(sse.data), time.time()):
                await hold.wait()
                return


class _SseLines(asyncio.Protocol):
    """Splits what arrives into lines and hands each ``data:`` line on at once."""

    def __init__(self, deliver: Deliver, head: asyncio.Future[bytes]) -> None:
        self.deliver = deliver
        self.head = head
        self.rest = b""
        self.done: asyncio.Future[None] = head.get_loop().create_future()

    def data_received(self, data: bytes) -> None:
        now = time.time()
        lines = (self.rest + data).split(b"\n")
        self.rest = lines.pop()
        for line in lines:
            if not self.head.done():
                if line.startswith(b"HTTP/"):
                    self.head.set_result(line)
                continue
            if line.startswith(b"data: ") and not self.deliver(json.loads(line[6:]), now):
                if not self.done.done():
                    self.done.set_result(None)
                return

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            self.head.set_result(b"")
        if not self.done.done():
            self.done.set_result(None)


async def socket_subscriber(
    srv: ServerProcess, http: httpx.AsyncClient, path: str, deliver: Deliver, hold: asyncio.Event
) -> None:
    """The cheapest SSE client: a socket and a line splitter in the event
    loop's read callback (no stream reader, no task wake-up per event). It
    ignores the chunked framing: chunk sizes are lines of their own and SSE
    frames are never split across chunks. Shows what the server does when the
    client costs next to nothing."""
    loop = asyncio.get_running_loop()
    head: asyncio.Future[bytes] = loop.create_future()
    transport, proto = await loop.create_connection(
        lambda: _SseLines(deliver, head), "127.0.0.1", srv.port
    )
    try:
        transport.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
            f"Authorization: Bearer {srv.admin_key}\r\n\r\n".encode()
        )
        status = await head
        if not status.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"stream refused: {status[:40]!r}")
        await proto.done
        await hold.wait()
    finally:
        transport.close()


SUBSCRIBERS = {"httpx-sse": httpx_subscriber, "bare-socket": socket_subscriber}


async def sse_latency(
    srv: ServerProcess,
    runner_id: str,
    subscribers: int,
    events: int,
    interval: float,
    target: float | None,
    client: str = "httpx-sse",
    batch: int = 1,
) -> list[Result]:
    """``subscribers`` SSE clients on one session; the worker posts ``events``
    batches of ``batch`` events ``interval`` apart, each carrying its send time.
    The server's CPU is read from before the first write until every client
    has all (or 10 s passed), before they disconnect."""
    lat: list[float] = []
    to_server: list[float] = []  # send -> event created_at (server side, before commit)
    ready = [asyncio.Event() for _ in range(subscribers)]
    have_all = [asyncio.Event() for _ in range(subscribers)]
    hold = asyncio.Event()
    subscriber = SUBSCRIBERS[client]
    server_cpu = own_cpu = 0.0
    async with admin_http(srv) as http, admin_http(srv, connections=subscribers + 10) as subs:
        w = await lease_worker(http, runner_id)
        path = f"/sessions/{w.session_id}/stream"

        def receiver(i: int) -> Deliver:
            got = 0

            def deliver(ev: dict[str, Any], now: float) -> bool:
                nonlocal got
                if ev["type"] != "bench":
                    ready[i].set()  # back-filled job.state events: subscribed
                    return True
                sent = ev["payload"]["t"]
                lat.append(now - sent)
                if i == 0:
                    to_server.append(ts(ev["created_at"]) - sent)
                got += 1
                if got < events * batch:
                    return True
                have_all[i].set()
                return False

            return deliver

        tasks = [
            asyncio.create_task(subscriber(srv, subs, path, receiver(i), hold))
            for i in range(subscribers)
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 60)
            await asyncio.sleep(0.2)
            server_cpu, own_cpu = cpu_seconds(srv.proc.pid), time.process_time()
            for i in range(events):
                t = time.time()
                body = {
                    "events": [
                        {"type": "bench", "payload": {"i": i * batch + k, "t": t}}
                        for k in range(batch)
                    ]
                }
                check(await http.post("/worker/events", json=body, headers=w.headers))
                await asyncio.sleep(interval)
            waits = [asyncio.create_task(e.wait()) for e in have_all]
            await asyncio.wait(waits, timeout=10)
            server_cpu = cpu_seconds(srv.proc.pid) - server_cpu
            own_cpu = time.process_time() - own_cpu
            for t in waits:
                t.cancel()
            hold.set()
            await asyncio.wait(tasks, timeout=10)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await finish_worker(http, w)
    expected = subscribers * events * batch
    name = f"(d) SSE, {subscribers} subscriber{'s' if subscribers > 1 else ''}"
    if client != "httpx-sse":
        name += f", {client} clients"
    if batch > 1:
        name += f", batches of {batch}"
    writes = f"{events} events" if batch == 1 else f"{events} writes of {batch} events"
    note = f"{writes} {interval * 1000:g} ms apart; {client} clients, all in one process"
    if len(lat) < expected:
        note += f"; {expected - len(lat)} of {expected} deliveries missing"
    if not lat:
        return [skipped(f"{name} p99", "ms", note, target)]
    detail = {
        "send_to_created_at_p50_ms": ms(pct(to_server, 50)),
        "send_to_created_at_p99_ms": ms(pct(to_server, 99)),
        "max_ms": ms(max(lat)),
        "server_cpu_us_per_delivery": round(server_cpu / len(lat) * 1e6, 1),
        "bench_client_cpu_us_per_delivery": round(own_cpu / len(lat) * 1e6, 1),
    }
    return [
        Result(f"{name} p50", ms(pct(lat, 50)), "ms", samples=len(lat), note=note, detail=detail),
        Result(f"{name} p99", ms(pct(lat, 99)), "ms", target, samples=len(lat)),
    ]
