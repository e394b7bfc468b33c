"""corral benchmarks: ``python bench/run.py [--quick]`` (from the repo root).

Starts real ``corral serve`` subprocesses on 127.0.0.1 (SQLite, and
PostgreSQL when one answers), measures, prints a table and writes
bench/results/latest.json. See bench/README.md."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import agent_case
import agents_case
import cases
import chat_case
import client_case
import cost_case
import gateway_case
import peers_case
import queue_case
import reads_case
import sandbox_case
import schedule_case
import ui_case
from cases import Result
from rich.console import Console
from rich.table import Table

from corral.testing import (
    DEFAULT_PG,
    ServerProcess,
    create_pg_database,
    drop_pg_database,
    pg_available,
    start_server,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# A case measured on a running server.
Measure = Callable[[ServerProcess], Awaitable[Result]]
# What (b)'s rows say of the machine, from the details of the case's row.
MACHINE_KEYS = (
    "server_cpu_ms_per_job",
    "job_processes_cpu_ms_per_job",
    "machine_cpu_ms_per_job",
    "machine_busy",
)


def start_case(plan: Plan) -> Callable[[ServerProcess], Awaitable[list[Result]]]:
    """(a): sequential jobs, submit → process started."""
    return lambda srv: cases.submit_latency(
        srv, plan.latency_samples, plan.latency_warmup, plan.seconds
    )


def burst_case(plan: Plan) -> Measure:
    """(b)'s burst, the peer kit's way (the server started with ``THROUGHPUT_ENV``)."""
    return lambda srv: cases.throughput_burst(
        srv, plan.burst_jobs, plan.clients, cases.THROUGHPUT_SLOTS, plan.seconds * 2
    )


CASE_TIMEOUT = 60.0  # seconds; a case that takes longer is reported as failed
IDLE_LOAD = 0.5  # a 1-minute load average above this gets a warning: numbers are noisy
console = Console(width=max(120, Console().width))


SSE_RUNS = (
    (1, 0.02, "httpx-sse", 1),
    (200, 0.1, "httpx-sse", 1),
    (200, 0.1, "bare-socket", 1),
    (1000, 0.3, "bare-socket", 1),
    # A runner posts output in batches: 10 events per write, as one send each.
    (1000, 0.3, "bare-socket", 10),
)


@dataclass(frozen=True)
class Plan:
    latency_samples: int
    latency_warmup: int
    throughput_jobs: int
    burst_jobs: int
    clients: int
    ingest_batches: int
    http_batches: int
    batch_size: int
    sse_events: int
    # (subscribers, seconds between writes, client, events per write): far enough
    # apart that one write's fan-out is done before the next, so the rows
    # measure latency, not a backlog
    sse_runs: tuple[tuple[int, float, str, int], ...]
    seconds: float  # soft time limit per case

    @classmethod
    def of(cls, quick: bool) -> Plan:
        if quick:
            return cls(50, 10, 200, 1000, 8, 50, 30, 100, 30, SSE_RUNS, 12.0)
        return cls(200, 20, 800, 3000, 8, 200, 100, 100, 100, SSE_RUNS, 30.0)


@asynccontextmanager
async def server(
    root: Path, name: str, *, database_url: str | None = None, env: dict[str, str] | None = None
) -> AsyncIterator[ServerProcess]:
    env = {**cases.SERVER_ENV, **(env or {})}
    srv = await asyncio.to_thread(start_server, root / name, database_url=database_url, env=env)
    try:
        yield srv
    finally:
        await asyncio.to_thread(srv.stop)


@asynccontextmanager
async def database(root: Path, name: str, pg_base: str | None) -> AsyncIterator[str]:
    """A fresh SQLite file, or a fresh PostgreSQL database (dropped afterwards)."""
    if pg_base is None:
        yield f"sqlite+aiosqlite:///{root / name}.db"
        return
    url = await create_pg_database(pg_base)
    try:
        yield url
    finally:
        await drop_pg_database(url)


class Runner:
    """Runs cases one after another, each bounded in time; a failing case
    becomes a row saying so instead of ending the run."""

    def __init__(self) -> None:
        self.results: list[Result] = []
        self.last: list[Result] = []  # the rows of the last case

    async def case(
        self,
        metric: str,
        unit: str,
        make: Callable[[], Awaitable[Result | list[Result]]],
        timeout: float = CASE_TIMEOUT,
    ) -> None:
        console.print(f"[dim]running {metric} ...[/]")
        t0 = time.monotonic()
        try:
            out = await asyncio.wait_for(make(), timeout)
        except Exception as exc:  # report, keep going
            traceback.print_exc(file=sys.stderr)
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            out = cases.skipped(metric, unit, f"failed: {reason}")
        rows = out if isinstance(out, list) else [out]
        for row in rows:
            row.detail.setdefault("case_seconds", round(time.monotonic() - t0, 2))
        self.results.extend(rows)
        self.last = rows

    def label_last(self, label: str) -> None:
        """Name the database in the rows of the last case (SQLite's keep their names)."""
        if label != "SQLite":
            for row in self.last:
                row.metric += f", {label}"
                row.target = None  # the targets are SQLite's

    def skip(
        self,
        metric: str,
        unit: str,
        reason: str,
        target: float | None = None,
        higher_is_better: bool = False,
    ) -> None:
        self.results.append(cases.skipped(metric, unit, reason, target, higher_is_better))


async def main(plan: Plan, pg_base: str, only: str) -> list[Result]:
    run = Runner()
    pg_reason = await pg_available(pg_base) if {"a", "b", "c", "d", "n"} & set(only) else None
    if pg_reason:
        console.print(f"[yellow]PostgreSQL rows skipped: {pg_reason}[/]")
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        root = Path(tmp)
        # (a) and (b) on SQLite, then on PostgreSQL (rows named ", PostgreSQL").
        databases = [("SQLite", None)] + ([] if pg_reason else [("PostgreSQL", pg_base)])
        if "a" in only:
            for label, base in databases:
                async with (
                    database(root, "a", base) as url,
                    server(root, f"a-{label}", database_url=url) as srv,
                ):
                    await run.case("(a) submit→started p99", "ms", partial(start_case(plan), srv))
                run.label_last(label)
        if "b" in only:
            env = cases.THROUGHPUT_ENV
            # 8 clients following their jobs, then the peer kit's way (a burst).
            throughputs: tuple[tuple[str, str, Measure], ...] = (
                (
                    "b",
                    "(b) submit→done throughput",
                    lambda srv: cases.throughput(
                        srv,
                        plan.throughput_jobs,
                        plan.clients,
                        cases.THROUGHPUT_SLOTS,
                        plan.seconds,
                    ),
                ),
                ("b-burst", "(b) burst submit→done, as the peer kit", burst_case(plan)),
            )
            for label, base in databases:
                for name, metric, measure in throughputs:
                    async with (
                        database(root, name, base) as url,
                        server(root, f"{name}-{label}", database_url=url, env=env) as srv,
                    ):
                        await run.case(metric, "jobs/s", partial(measure, srv))
                    run.label_last(label)
        if "c" in only:
            # Issue #18's targets: SQLite 100k events/s at the store and 60k
            # over HTTP, PostgreSQL 30k over HTTP.
            await ingest(run, plan, root, "SQLite", None, (100_000.0, 60_000.0))
            if pg_reason:
                for layer in ("store", "HTTP"):
                    run.skip(f"(c) ingest, {layer}, PostgreSQL", "events/s", pg_reason)
            else:
                await ingest(run, plan, root, "PostgreSQL", pg_base, (None, 30_000.0))
        if "e" in only:
            e_jobs = 200 if plan.throughput_jobs < 800 else 1000
            await run.case(
                "(e) queue folder",
                "ms",
                lambda: queue_case.queue_folder(root, 50, e_jobs, cases.THROUGHPUT_SLOTS),
            )
        if "f" in only:
            await run.case(
                "(f) agent executor overhead",
                "ms",
                lambda: agent_case.agent_overhead(root, 8 if plan.throughput_jobs < 800 else 20, 4),
                timeout=180,
            )
        if "g" in only:
            await run.case(
                "(g) run() round trip",
                "ms",
                lambda: client_case.run_round_trip(root, 30 if plan.throughput_jobs < 800 else 100),
                timeout=180,
            )
        if "h" in only:
            await run.case(
                "(h) chat jobs",
                "ms",
                lambda: chat_case.chat_jobs(
                    root, 30 if plan.throughput_jobs < 800 else 100, 32, plan.seconds / 2
                ),
                timeout=180,
            )
        if "i" in only:
            await run.case(
                "(i) agent daemons",
                "ms",
                lambda: agents_case.agents_figures(
                    root, 100 if plan.throughput_jobs < 800 else 500
                ),
                timeout=180,
            )
        if "j" in only:
            await run.case(
                "(j) sandbox cost",
                "ms",
                lambda: sandbox_case.sandbox_cost(
                    root, plan.latency_samples, plan.latency_warmup, plan.seconds * 2
                ),
                timeout=180,
            )
        if "k" in only:
            await run.case(
                "(k) MCP gateway",
                "ms",
                lambda: gateway_case.gateway_figures(
                    root, 100 if plan.throughput_jobs < 800 else 500
                ),
                timeout=300,
            )
        if "l" in only:
            await run.case(
                "(l) schedule firing jitter",
                "ms",
                lambda: schedule_case.firing_jitter(root, plan.seconds),
                timeout=180,
            )
        if "m" in only:
            await run.case(
                "(m) dashboard",
                "ms",
                lambda: ui_case.dashboard(
                    root, 10_000 if plan.throughput_jobs < 800 else 100_000, 20
                ),
                timeout=600,
            )
        if "n" in only:
            stored = 10_000 if plan.throughput_jobs < 800 else 100_000
            rounds = 50 if plan.throughput_jobs < 800 else 200
            # The burst on an empty database first, then on the stored one
            # after its reads: throughput stays flat (issue #18).
            for label, base in databases:
                async with (
                    database(root, "n-empty", base) as url,
                    server(
                        root, f"n-empty-{label}", database_url=url, env=cases.THROUGHPUT_ENV
                    ) as srv,
                ):
                    await run.case(
                        "(n) burst submit→done",
                        "jobs/s",
                        partial(reads_case.burst_on, burst_case(plan), srv, label, 0),
                    )
                async with database(root, "reads", base) as url:
                    await run.case(
                        f"(n) reads, {label}",
                        "ms",
                        partial(
                            reads_case.reads,
                            root,
                            label,
                            url if base else None,
                            stored,
                            rounds,
                            burst_case(plan),
                        ),
                        timeout=600,
                    )
            if pg_reason:
                run.skip("(n) reads, PostgreSQL", "ms", pg_reason)
        if "p" in only:
            await run.case(
                "(p) cost",
                "ms",
                lambda: cost_case.cost_figures(
                    root, 10_000 if plan.throughput_jobs < 800 else 100_000, 20, pg_base
                ),
                timeout=900,
            )
        if "d" in only:
            async with server(root, "d", env=OWN_RUNNER) as srv:
                runner_id = await register(srv)
                for n, interval, client, batch in plan.sse_runs:
                    # Issue #18's target is 1,000 subscribers; 200 with httpx-sse is the older row.
                    target = (
                        50.0
                        if (n, client, batch) in ((200, "httpx-sse", 1), (1000, "bare-socket", 1))
                        else None
                    )
                    each = "" if batch == 1 else f", batches of {batch}"
                    await run.case(
                        f"(d) SSE, {n} subscribers, {client}{each} p99",
                        "ms",
                        partial(
                            cases.sse_latency,
                            srv,
                            runner_id,
                            n,
                            plan.sse_events,
                            interval,
                            target,
                            client,
                            batch,
                        ),
                    )
    return run.results


# No embedded runner: the benchmark leases jobs itself and holds their worker JWTs.
OWN_RUNNER = {"CORRAL_RUNNER__EMBEDDED": "false", "CORRAL_LEASE_TTL": "600"}


async def register(srv: ServerProcess) -> str:
    async with cases.admin_http(srv) as http:
        return await cases.register_runner(http)


async def ingest(
    run: Runner,
    plan: Plan,
    root: Path,
    label: str,
    pg_base: str | None,
    targets: tuple[float | None, float | None],
) -> None:
    """(c) on one kind of database: at the store, then through HTTP (each on a
    fresh one); ``targets``: the store's and HTTP's, in events/s."""
    store_target, http_target = targets
    async with database(root, "ingest-store", pg_base) as url:
        await run.case(
            f"(c) ingest, store, {label}",
            "events/s",
            lambda: cases.store_ingest(
                url, label, plan.ingest_batches, plan.batch_size, plan.seconds, store_target
            ),
        )
    async with (
        database(root, "ingest-http", pg_base) as url,
        server(root, f"c-{label}", database_url=url, env=OWN_RUNNER) as srv,
    ):
        runner_id = await register(srv)
        await run.case(
            f"(c) ingest, HTTP, {label}",
            "events/s",
            lambda: cases.http_ingest(
                srv,
                runner_id,
                label,
                plan.http_batches,
                plan.batch_size,
                plan.seconds,
                http_target,
            ),
        )


def show(results: list[Result], load: tuple[float, float, float]) -> None:
    table = Table(title="corral benchmarks", title_justify="left")
    table.add_column("metric", no_wrap=True)
    table.add_column("measured", justify="right", no_wrap=True)
    table.add_column("target", justify="right", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("n", justify="right")
    colour = {"pass": "green", "miss": "red", "skipped": "yellow"}
    notes: list[str] = []
    for r in sorted(results, key=lambda r: r.metric[:3]):
        value = "-" if r.value is None else f"{r.value:,.{0 if r.value >= 1000 else 1}f} {r.unit}"
        target = (
            "-"
            if r.target is None
            else f"{'≥' if r.higher_is_better else '≤'} {r.target:,g} {r.unit}"
        )
        verdict = f"[{colour.get(r.verdict, 'white')}]{r.verdict}[/]"
        table.add_row(r.metric, value, target, verdict, str(r.samples or ""))
        if r.note:
            notes.append(f"{r.metric}: {r.note}")
    console.print(table)
    for note in notes:
        console.print(f"  [dim]{note}[/]")
    if load[0] > IDLE_LOAD:
        console.print(
            f"[yellow]load average was {load[0]:.2f} before the run "
            f"({os.cpu_count()} CPUs): the machine was not idle[/]"
        )


def source_version() -> str:
    """The commit measured, with "+dirty" if src/ has uncommitted changes."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "src") else "")


def write(
    results: list[Result],
    plan: Plan,
    started: datetime,
    seconds: float,
    load: tuple[float, float, float],
) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "latest.json"
    doc = {
        "started_at": started.isoformat(),
        "seconds": round(seconds, 1),
        "plan": asdict(plan),
        "server_env": cases.SERVER_ENV,
        "source": source_version(),
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_before": load,
        },
        "results": [r.as_dict() for r in results],
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def cli() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples (~30 s)")
    parser.add_argument(
        "--only", default="abcdefghijklmnp", help="which benchmarks, e.g. --only ad"
    )
    parser.add_argument(
        "--sandbox",
        choices=("auto", "bwrap", "none"),
        help="runner.sandbox of every server started (default: the servers' own, auto)",
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("CORRAL_TEST_PG_URL", DEFAULT_PG),
        help=f"PostgreSQL server to create a scratch database on ({DEFAULT_PG})",
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="(a) and (b), then the peer kit's Celery and procrastinate cases, in rounds; ratios",
    )
    parser.add_argument(
        "--peers-kit",
        type=Path,
        default=ROOT.parent / "shared" / "peers",
        help="the peer benchmark kit (default: ../shared/peers)",
    )
    parser.add_argument(
        "--peers-task",
        choices=("shell", "noop"),
        default="shell",
        help="the peers' task: spawn /bin/sh -c true (as a shell job does) or a Python no-op",
    )
    parser.add_argument("--rounds", type=int, default=1, help="--peers: rounds to interleave")
    args = parser.parse_args()
    if args.sandbox:
        cases.SERVER_ENV["CORRAL_RUNNER__SANDBOX"] = args.sandbox
    plan = Plan.of(args.quick)
    if args.peers:
        return side_by_side(plan, args.pg_url, args.peers_kit, args.peers_task, args.rounds)
    started = datetime.now(UTC)
    t0 = time.monotonic()
    load = os.getloadavg()
    results = asyncio.run(main(plan, args.pg_url, args.only.lower()))
    show(results, load)
    path = write(results, plan, started, time.monotonic() - t0, load)
    console.print(f"source {source_version()}; took {time.monotonic() - t0:.0f}s; wrote {path}")
    return 0


def corral_figures(results: list[Result], suffix: str = "") -> dict[str, float]:
    """(a) and (b) of one database (``suffix``: ", PostgreSQL"; SQLite's have none)."""
    by = {r.metric: r for r in results}
    out: dict[str, float] = {}
    b = by.get("(b) submit→done throughput" + suffix)
    if b is not None and b.value is not None:
        out["jobs_per_s"] = b.value
        for key in MACHINE_KEYS:
            out[key] = b.detail.get(key, float("nan"))
    burst = by.get("(b) burst submit→done, as the peer kit" + suffix)
    if burst is not None and burst.value is not None:
        out["burst_jobs_per_s"] = burst.value
    for key, metric in (
        ("start_p50_ms", "(a) submit→started p50"),
        ("start_p99_ms", "(a) submit→started p99"),
    ):
        row = by.get(metric + suffix)
        if row is not None and row.value is not None:
            out[key] = row.value
    return out


PEER_LATENCY_SAMPLES = 300  # the kit's (a): 300 jobs paced at 30/s


async def unsandboxed(plan: Plan) -> dict[str, float]:
    """(a) and the burst on SQLite with the runner's sandbox off, as the
    peers run their shell task (no namespaces, no mounts): the like-for-like
    figures beside them. A job's bwrap costs more machine CPU than a peer's
    whole job on some hosts (docs/benchmarks.md)."""
    run = Runner()
    env = {"CORRAL_RUNNER__SANDBOX": "none"}
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        root = Path(tmp)
        async with server(root, "a-none", env=env) as srv:
            await run.case("(a) submit→started p99", "ms", partial(start_case(plan), srv))
        async with server(root, "burst-none", env={**env, **cases.THROUGHPUT_ENV}) as srv:
            await run.case(
                "(b) burst submit→done, as the peer kit", "jobs/s", partial(burst_case(plan), srv)
            )
    out = corral_figures(run.results)
    detail = run.last[0].detail
    out.update((key, detail[key]) for key in MACHINE_KEYS if key in detail)
    return out


def side_by_side(plan: Plan, pg_base: str, kit: Path, task: str, rounds: int) -> int:
    """corral's (a) and (b), then the kit's matching cases, ``rounds`` times; ratios."""
    if not (kit / "run.sh").exists():
        console.print(f"[red]no peer kit at {kit} (--peers-kit)[/]")
        return 2
    # As many starts as the kit's (a) takes: a p99 of 50 is the second slowest.
    plan = replace(plan, latency_samples=max(plan.latency_samples, PEER_LATENCY_SAMPLES))
    rows: list[dict[str, object]] = []
    for r in range(1, rounds + 1):
        load = os.getloadavg()
        console.print(f"[dim]round {r}/{rounds}: corral (a), (b) (load {load[0]:.2f}) ...[/]")
        results = asyncio.run(main(plan, pg_base, "ab"))
        mine = corral_figures(results)
        rows.append({"round": r, "system": "corral", "load1": round(load[0], 2), **mine})
        on_pg = corral_figures(results, ", PostgreSQL")
        if on_pg:
            rows.append(
                {"round": r, "system": "corral (PostgreSQL)", "load1": round(load[0], 2), **on_pg}
            )
        bare: dict[str, float] = {}
        if "CORRAL_RUNNER__SANDBOX" not in cases.SERVER_ENV:  # not forced by --sandbox
            load = os.getloadavg()
            bare = asyncio.run(unsandboxed(plan))
            rows.append(
                {"round": r, "system": "corral (sandbox none)", "load1": round(load[0], 2), **bare}
            )
        load = os.getloadavg()
        console.print(
            f"[dim]round {r}/{rounds}: {', '.join(peers_case.PEERS)} (load {load[0]:.2f}) ...[/]"
        )
        found, tail = peers_case.run_kit(
            kit, task, 2000 if plan.throughput_jobs < 800 else 5000, 900
        )
        if not found:
            console.print(f"[red]the peer kit gave no result:[/]\n{tail}")
        for peer in found:
            rows.append(
                {
                    "round": r,
                    "system": f"{peer.get('peer')} ({task})",
                    "load1": round(load[0], 2),
                    "jobs_per_s": peer.get("tput_jobs_per_s"),
                    "start_p50_ms": peer.get("lat_p50_ms"),
                    "start_p99_ms": peer.get("lat_p99_ms"),
                    "ratio": peers_case.ratios(mine, peer, bare),
                }
            )
    table = Table(title=f"corral beside its peers ({task} task)", title_justify="left")
    for col in (
        "round",
        "system",
        "load",
        "jobs/s",
        "start p50 ms",
        "start p99 ms",
        "server CPU ms/job",
        "job processes ms/job",
        "machine ms/job (busy)",
        "corral ÷ peer (jobs/s, p50, p99; burst jobs/s; sandbox none: burst, p99)",
    ):
        table.add_column(col, justify="right" if col != "system" else "left")

    def num(v: object) -> str:
        return f"{v:,.1f}" if isinstance(v, int | float) else "-"

    def machine(row: dict[str, object]) -> str:
        busy = row.get("machine_busy")
        share = f" ({busy:.0%})" if isinstance(busy, int | float) else ""
        return num(row.get("machine_cpu_ms_per_job")) + share if share else "-"

    for row in rows:
        ratio = row.get("ratio")
        text = (
            " / ".join("-" if v is None else f"{v:.2f}×" for v in ratio.values())
            if isinstance(ratio, dict)
            else ""
        )
        table.add_row(
            str(row["round"]),
            str(row["system"]),
            num(row["load1"]),
            num(row.get("jobs_per_s"))
            + (f" (burst {row['burst_jobs_per_s']:,.1f})" if "burst_jobs_per_s" in row else ""),
            num(row.get("start_p50_ms")),
            num(row.get("start_p99_ms")),
            num(row.get("server_cpu_ms_per_job")),
            num(row.get("job_processes_cpu_ms_per_job")),
            machine(row),
            text,
        )
    console.print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "peers.json"
    doc = {"source": source_version(), "task": task, "plan": asdict(plan), "rows": rows}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    console.print(f"source {source_version()}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
