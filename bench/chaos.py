"""Chaos: random ``kill -9`` of `corral serve` (with its embedded runner) and
of a separate `corral runner` while shell jobs run; then count what ran twice.

    python bench/chaos.py                      # 500 jobs, 20 kills, SQLite
    python bench/chaos.py --pg --runs 3        # on PostgreSQL, three runs
    python bench/chaos.py --jobs 500 --kills 20 --seed 7

Each job appends ``start T`` to a file of its own when its process starts and
``end T`` when it is about to exit (T: the wall clock), so afterwards every
execution is visible; ``orphan T`` instead of ``end T`` when the runner that
started it was killed first (the process outlived it, unseen: running the job
again is at-least-once, not a lost outcome). A job executed twice is a *re-run*; a re-run whose
first process had already ended before the kill that lost it is a *re-run of
a finished job* — what the runners' outcome journal (docs/recovery.md) is
there to prevent. Also checked: every job ends done, none is lost.

Everything is real and on 127.0.0.1: servers and runners are subprocesses
(sandbox off, so the jobs write where this script reads), killed with
SIGKILL and restarted on the same data dir and work dir (same runner name).
Prints one JSON line per run and a summary."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from corral.testing import (
    DEFAULT_PG,
    ServerProcess,
    create_pg_database,
    drop_pg_database,
    start_server,
)

ENV = {
    "CORRAL_HEARTBEAT_INTERVAL": "1",
    "CORRAL_RUNNER__SANDBOX": "none",
    "CORRAL_RUNNER__SLOTS": "4",
    "CORRAL_MAX_INFRA_RETRIES": "50",
}
# A kill this long after a job's process exited is "well after": the runner
# had time to journal the outcome (on an idle machine it takes milliseconds).
LATE = 1.0
# A process whose runner was killed under it (jobs live in sessions of their
# own; unsandboxed, nothing stops them) ends as an "orphan": no runner saw it
# end, so running it again is at-least-once, not a lost outcome. $PPID is the
# runner that started the shell.
SCRIPT = (
    'echo "start $(date +%s.%N)" >> {logs}/$CORRAL_JOB_ID; sleep {sleep}; '
    "if kill -0 $PPID 2>/dev/null; then end=end; else end=orphan; fi; "
    'echo "$end $(date +%s.%N)" >> {logs}/$CORRAL_JOB_ID; echo ok'
)


def _runner(srv: ServerProcess, key: str, work: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update(ENV)
    with (work / "runner.log").open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "corral",
                "runner",
                "--server",
                srv.url,
                "--token",
                key,
                "--workdir",
                str(work),
                "--name",
                "chaos-runner",
                "--slots",
                "4",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _runner_key(srv: ServerProcess) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "corral",
            "keys",
            "create",
            "--role",
            "runner",
            "--json",
            "--data-dir",
            str(srv.data_dir),
        ],
        env={**os.environ, **srv.env},
        capture_output=True,
        text=True,
        check=True,
    )
    return str(json.loads(out.stdout)["key"])


def one_run(base: Path, *, jobs: int, kills: int, seed: int, database_url: str | None) -> dict:
    rng = random.Random(seed)
    logs, data, work = base / "logs", base / "data", base / "runner"
    for d in (logs, data, work):
        d.mkdir(parents=True)
    srv = start_server(data, port=None, database_url=database_url, env=ENV)
    port = srv.port
    key = _runner_key(srv)
    runner = _runner(srv, key, work)
    ids: list[str] = []
    kill_times: list[tuple[float, str]] = []
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            http.headers["Authorization"] = f"Bearer {srv.admin_key}"
            # All queued first (kill switch on), so the kills fall while they run.
            http.post("/admin/pause").raise_for_status()
            for _ in range(jobs):
                sleep = f"{rng.uniform(0.1, 1.0):.2f}"
                body = {"command": SCRIPT.format(logs=logs, sleep=sleep)}
                ids.append(http.post("/jobs", json=body).raise_for_status().json()["job_id"])
            http.post("/admin/resume").raise_for_status()
        for _ in range(kills):
            time.sleep(rng.uniform(0.5, 2.5))
            if rng.random() < 0.5:
                kill_times.append((time.time(), "runner"))
                _kill(runner)
                runner = _runner(srv, key, work)
            else:
                kill_times.append((time.time(), "server"))
                srv.kill()
                srv = start_server(data, port=port, database_url=database_url, env=ENV)
        deadline = time.monotonic() + 600
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            http.headers["Authorization"] = f"Bearer {srv.admin_key}"
            while True:
                states = [http.get(f"/jobs/{i}").json() for i in ids]
                if all(j["state"] in ("done", "failed", "cancelled") for j in states):
                    break
                if time.monotonic() > deadline:
                    break
                time.sleep(1)
            for job in states:
                # Why each release happened (job.state events back to queued).
                events = http.get(
                    f"/sessions/{job['session_id']}/events", params={"since": 0}
                ).json()["events"]
                job["releases"] = [
                    e["payload"].get("reason")
                    for e in events
                    if e["type"] == "job.state"
                    and e["payload"].get("to") == "queued"
                    and e["payload"].get("from") is not None
                ]
    finally:
        # SIGTERM: the runner stops its jobs (a SIGKILL would leave them running).
        runner.terminate()
        runner.wait(30)
        srv.stop()
    return _count(states, logs, kill_times)


def _count(states: list[dict], logs: Path, kill_times: list[tuple[float, str]]) -> dict:
    kills = sorted(kill_times)
    reruns = finished_reruns = late = 0
    examples = []
    for job in states:
        lines = (logs / job["id"]).read_text().split() if (logs / job["id"]).exists() else []
        marks = [(lines[i], float(lines[i + 1])) for i in range(0, len(lines), 2)]
        starts = [t for kind, t in marks if kind == "start"]
        if len(starts) < 2:
            continue
        reruns += 1
        # The kill that lost the first run: the first one after its process
        # ended (and before the second start); none if it had not ended.
        end = next((t for kind, t in marks if kind == "end" and t < starts[1]), None)
        lost = next((k for k in kills if end is not None and end < k[0] < starts[1]), None)
        if end is not None and lost is not None:
            gap = lost[0] - end
            finished_reruns += 1
            late += gap >= LATE
            examples.append(
                {
                    "job": job["id"],
                    "killed_after_exit_s": round(gap, 3),
                    "killed": lost[1],
                    "releases": job.get("releases"),
                }
            )
    by_state: dict[str, int] = {}
    for job in states:
        by_state[job["state"]] = by_state.get(job["state"], 0) + 1
    return {
        "jobs": len(states),
        "states": by_state,
        "kills": {
            "runner": sum(1 for _, w in kill_times if w == "runner"),
            "server": sum(1 for _, w in kill_times if w == "server"),
        },
        "executed_twice": reruns,
        "rerun_after_process_ended": finished_reruns,
        f"of_which_killed_{LATE:g}s_or_more_after_exit": late,
        "recovered_from_journal": sum(1 for j in states if j.get("recovered")),
        "examples": sorted(examples, key=lambda e: -e["killed_after_exit_s"])[:5],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pg", action="store_true", help="PostgreSQL (a scratch database)")
    ap.add_argument("--pg-url", default=os.environ.get("CORRAL_TEST_PG_URL", DEFAULT_PG))
    ap.add_argument("--keep", action="store_true", help="keep the logs and data dirs")
    ap.add_argument(
        "--lease-ttl", type=float, default=None, help="CORRAL_LEASE_TTL (default: the server's)"
    )
    args = ap.parse_args()
    if args.lease_ttl is not None:
        ENV["CORRAL_LEASE_TTL"] = f"{args.lease_ttl:g}"
    results = []
    for n in range(args.runs):
        url = asyncio.run(create_pg_database(args.pg_url)) if args.pg else None
        try:
            tmp = tempfile.mkdtemp(prefix="corral-chaos-")
            try:
                result = one_run(
                    Path(tmp), jobs=args.jobs, kills=args.kills, seed=args.seed + n,
                    database_url=url,
                )  # fmt: skip
            finally:
                if args.keep:
                    print(f"kept {tmp}", file=sys.stderr)
                else:
                    shutil.rmtree(tmp, ignore_errors=True)
        finally:
            if url:
                asyncio.run(drop_pg_database(url))
        print(json.dumps(result), flush=True)
        results.append(result)
    total = {
        key: sum(r[key] for r in results)
        for key in ("jobs", "executed_twice", "rerun_after_process_ended", "recovered_from_journal")
    }
    print(
        json.dumps(
            {"runs": len(results), "database": "postgresql" if args.pg else "sqlite", **total}
        )
    )


if __name__ == "__main__":
    main()
