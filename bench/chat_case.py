"""(h) chat jobs on an OpenAI-compatible provider (the fake server of the
tests): the overhead of a chat job through corral against calling the server
directly with the same SDK, and chat jobs/s with 32 concurrent clients."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import cases
import openai
from cases import Result, pct

from corral.client import AsyncClient
from corral.testing import start_server

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.fakes.openai_chat import FakeOpenAI  # noqa: E402

MESSAGES = [{"role": "user", "content": "Say ok."}]


async def _direct(fake: FakeOpenAI, n: int) -> list[float]:
    client = openai.AsyncOpenAI(base_url=fake.url, api_key=fake.api_key, max_retries=0)
    times = []
    try:
        for _ in range(n):
            started = time.monotonic()
            stream = await client.chat.completions.create(
                model="m",
                messages=MESSAGES,
                stream=True,  # type: ignore[arg-type]
            )
            async for _chunk in stream:
                pass
            times.append(time.monotonic() - started)
    finally:
        await client.close()
    return times


async def _through(c: AsyncClient, n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.monotonic()
        result = await c.run(messages=MESSAGES, preferred_ai="gpu", timeout=30)
        if not result.ok:
            raise RuntimeError(f"chat job {result.job_id}: {result.error}")
        times.append(time.monotonic() - started)
    return times


async def chat_jobs(root: Path, samples: int, clients: int, seconds: float) -> list[Result]:
    with FakeOpenAI(models=("m",)) as fake:
        config = root / "h.toml"
        config.write_text(
            "[runner]\nslots = 32\n\n[providers.gpu]\nkind = 'openai'\n"
            f"base_url = {json.dumps(fake.url)}\napi_key = {json.dumps(fake.api_key)}\n"
            "models = ['m']\nmax_retries = 0\n"
        )
        srv = await asyncio.to_thread(
            start_server,
            root / "h",
            args=("--config", str(config), "--no-queue"),
            env=cases.SERVER_ENV,
        )
        try:
            await _direct(fake, 5)
            direct = sorted(await _direct(fake, samples))
            async with AsyncClient(srv.url, srv.admin_key) as c:
                await _through(c, 5)
                through = sorted(await _through(c, samples))

                done = 0
                stop = time.monotonic() + seconds

                async def worker() -> None:
                    nonlocal done
                    while time.monotonic() < stop:
                        job = await c.submit(messages=MESSAGES, preferred_ai="gpu")
                        await c.wait(job.job_id, timeout=60)
                        done += 1

                started = time.monotonic()
                await asyncio.gather(*(worker() for _ in range(clients)))
                rate = done / (time.monotonic() - started)
        finally:
            await asyncio.to_thread(srv.stop)
    rows = []
    for p in (50, 99):
        rows.append(
            Result(
                f"(h) chat job overhead p{p}",
                round((pct(through, p) - pct(direct, p)) * 1000, 1),
                "ms",
                samples=samples,
                note=f"client.run(messages) through corral p{p} {pct(through, p) * 1000:.1f} ms "
                f"vs the SDK straight to the server {pct(direct, p) * 1000:.1f} ms",
            )
        )
    rows.append(
        Result(
            f"(h) chat jobs/s, {clients} concurrent clients",
            round(rate, 1),
            "jobs/s",
            higher_is_better=True,
            samples=done,
            note=f"{clients} AsyncClients submitting and waiting (SSE) for {seconds:g} s",
        )
    )
    return rows
