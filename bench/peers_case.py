"""``python bench/run.py --peers``: corral's (a) and (b) and the peer kit's
matching cases (Celery on Redis, procrastinate on PostgreSQL; the kit is
``../shared/peers/``, see its README) interleaved in one run, as ratios.

Each round runs corral's cases, then the kit's, each with the load average
read before it: absolute figures on a shared machine swing between runs, the
ratios of one run much less. The kit's task is ``/bin/sh -c true`` by default
(``PEERS_TASK=shell``: the fair comparison with a shell job) or a Python no-op."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

PEERS = ("celery", "procrastinate")


def run_kit(kit: Path, task: str, jobs: int, timeout: float) -> tuple[list[dict[str, Any]], str]:
    """The kit's RESULT rows for ``PEERS`` (and its output's tail, for a failure)."""
    with tempfile.TemporaryDirectory(prefix="corral-peers-") as out:
        env = {
            **os.environ,
            "ONLY": " ".join(PEERS),
            "PEERS_OUT": out,
            "PEERS_N": str(jobs),
            "PEERS_DRAIN": str(max(200, jobs // 4)),
        }
        if task == "shell":
            env["PEERS_TASK"] = "shell"
        else:
            env.pop("PEERS_TASK", None)
        proc = subprocess.run(
            ["bash", str(kit / "run.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        rows = []
        for path in Path(out).glob("results-*.jsonl"):
            for line in path.read_text().splitlines():
                if line.startswith("RESULT "):
                    line = line[len("RESULT ") :]
                if line.startswith("{"):
                    rows.append(json.loads(line))
        return rows, (proc.stdout + proc.stderr)[-2000:]


def ratios(
    corral: dict[str, float], peer: dict[str, Any], bare: dict[str, float] | None = None
) -> dict[str, float | None]:
    """corral's figure over the peer's: throughput (higher is better), latency
    (lower is better: a ratio above 1 means corral is slower). ``bare``:
    corral's figures with the sandbox off, as the peers run their task."""

    def over(a: float | None, b: Any) -> float | None:
        if a is None or not isinstance(b, int | float) or b <= 0:
            return None
        return round(a / b, 3)

    out = {
        "jobs_per_s": over(corral.get("jobs_per_s"), peer.get("tput_jobs_per_s")),
        "start_p50": over(corral.get("start_p50_ms"), peer.get("lat_p50_ms")),
        "start_p99": over(corral.get("start_p99_ms"), peer.get("lat_p99_ms")),
        # The burst row, measured the way the kit measures the peer.
        "burst_jobs_per_s": over(corral.get("burst_jobs_per_s"), peer.get("tput_jobs_per_s")),
    }
    if bare:
        out["burst_jobs_per_s_sandbox_none"] = over(
            bare.get("burst_jobs_per_s"), peer.get("tput_jobs_per_s")
        )
        out["start_p99_sandbox_none"] = over(bare.get("start_p99_ms"), peer.get("lat_p99_ms"))
    return out
