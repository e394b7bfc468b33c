"""Cron schedules with a real `corral serve`: each slot fired once, by two
replicas on PostgreSQL and across a restart; slots missed while down are
skipped with one event; the CLI and the HTTP routes.

The schedules fire every second (croniter's sixth field), so every second
between the first slot and the last is accounted for exactly once: fired
(one job, one `schedule.fired` event) or skipped (inside one
`schedule.skipped` event's range)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.testing import ServerProcess, start_server

from ._helpers import create_keys, ts, wait_for

SECONDLY = """
[[schedules]]
name = "tick"
cron = "* * * * * *"
command = "true"
{extra}
"""


def _config(tmp_path: Path, extra: str = "") -> tuple[str, ...]:
    path = tmp_path / "corral.toml"
    path.write_text(SECONDLY.format(extra=extra))
    return ("--config", str(path), "--no-queue")


def _events(http: httpx.Client, name: str = "tick") -> list[dict[str, Any]]:
    session = http.get(f"/schedules/{name}").json()["session_id"]
    if session is None:  # the loop has not seen the schedule yet (just started)
        return []
    events = http.get(f"/sessions/{session}/events", params={"since": 0}).json()["events"]
    return [e for e in events if e["type"].startswith("schedule.")]


def _fired(http: httpx.Client) -> list[dict[str, Any]]:
    return [e for e in _events(http) if e["type"] == "schedule.fired"]


def _schedule_jobs(http: httpx.Client) -> list[dict[str, Any]]:
    jobs = http.get("/jobs", params={"limit": 500}).json()["jobs"]
    return [j for j in jobs if j["source"] == "schedule"]


def _slot_of(job: dict[str, Any]) -> datetime:
    return ts(job["idempotency_key"].removeprefix("schedule:tick:"))


def _accounted_once(http: httpx.Client) -> list[datetime]:
    """Every second from the first fired slot to the last is fired or
    skipped, exactly once; each fired slot has exactly one job. Returns the
    fired slots. (The schedule may go on firing meanwhile: the jobs of slots
    after the last recorded one are left out.)"""
    events = _events(http)
    jobs = _schedule_jobs(http)
    fired = [ts(e["payload"]["slot"]) for e in events if e["type"] == "schedule.fired"]
    assert fired == sorted(set(fired)), "a slot fired twice"
    jobs = [j for j in jobs if _slot_of(j) <= fired[-1]]
    assert sorted(_slot_of(j) for j in jobs) == fired
    assert [e["payload"]["job_id"] for e in events if e["type"] == "schedule.fired"] == [
        j["id"] for j in sorted(jobs, key=_slot_of)
    ]
    seen = dict.fromkeys(fired, 1)
    for e in events:
        if e["type"] == "schedule.skipped":
            at, last = ts(e["payload"]["first"]), ts(e["payload"]["last"])
            assert e["payload"]["count"] == (last - at).total_seconds() + 1
            while at <= last:
                seen[at] = seen.get(at, 0) + 1
                at += timedelta(seconds=1)
    first, last = min(seen), max(seen)
    every = [first + timedelta(seconds=i) for i in range(int((last - first).total_seconds()) + 1)]
    assert [seen.get(s, 0) for s in every] == [1] * len(every), seen
    return fired


def test_two_replicas_on_postgres_fire_each_slot_once(tmp_path: Path, pg_url: str) -> None:
    args = _config(tmp_path)
    a = start_server(tmp_path / "a", database_url=pg_url, args=args)
    b = start_server(tmp_path / "b", database_url=pg_url, args=args)
    try:
        with b.http() as http:
            wait_for(lambda: len(_fired(http)) >= 5, timeout=30, what="five slots fired")
            # One replica goes away (the leader, or not): the slots go on.
            a.stop()
            before = len(_fired(http))
            wait_for(lambda: len(_fired(http)) >= before + 3, timeout=30, what="the takeover")
            fired = _accounted_once(http)
            # The replica that goes on running them: slots fired once each,
            # none replayed; a takeover costs at most the lock's poll (2 s).
            assert len(fired) >= 8
            late = [e for e in _fired(http) if e["payload"]["late"]]
            assert late == []
    finally:
        a.stop()
        b.stop()


def test_a_restart_does_not_fire_a_slot_again(tmp_path: Path) -> None:
    args = _config(tmp_path)
    srv = start_server(tmp_path / "data", args=args)
    try:
        with srv.http() as http:
            wait_for(lambda: len(_fired(http)) >= 2, timeout=30, what="two slots fired")
        srv.stop()
        srv = start_server(tmp_path / "data", args=args)
        with srv.http() as http:
            before = _fired(http)
            wait_for(lambda: len(_fired(http)) >= len(before) + 2, timeout=30, what="slots again")
            _accounted_once(http)
    finally:
        srv.stop()


def test_slots_missed_while_down_are_skipped_with_one_event(tmp_path: Path) -> None:
    args = _config(tmp_path)
    srv = start_server(tmp_path / "data", args=args)
    try:
        with srv.http() as http:
            wait_for(lambda: len(_fired(http)) >= 1, timeout=30, what="a slot fired")
        srv.stop()
        down_at = time.monotonic()
        # The slots of the next three seconds pass while corral is down.
        wait_for(lambda: time.monotonic() - down_at >= 3, what="three seconds down")
        srv = start_server(tmp_path / "data", args=args)
        with srv.http() as http:

            def skipped() -> list[dict[str, Any]]:
                events = _events(http)
                return [e for e in events if e["type"] == "schedule.skipped"]

            # One event for the whole outage (a loop slowed by a loaded
            # machine may skip a slot of its own now and then).
            (outage,) = [
                e for e in wait_for(skipped, what="the skipped event") if e["payload"]["count"] >= 3
            ]
            assert outage["payload"]["reason"] == "missed while corral was not running"
            after = ts(outage["payload"]["last"])
            wait_for(
                lambda: any(ts(e["payload"]["slot"]) > after for e in _fired(http)),
                what="the next slot fired",
            )
            _accounted_once(http)
            (shown,) = http.get("/schedules").json()
            assert shown["skipped"] == sum(e["payload"]["count"] for e in skipped())
    finally:
        srv.stop()


HOURLY = """
[[schedules]]
name = "report"
cron = "0 * * * *"
timezone = "Europe/Paris"
command = "echo report"
labels = ["nightly"]
"""


@pytest.fixture
def hourly(tmp_path: Path) -> Iterator[ServerProcess]:
    (tmp_path / "corral.toml").write_text(HOURLY)
    srv = start_server(
        tmp_path / "data", args=("--config", str(tmp_path / "corral.toml"), "--no-queue")
    )
    try:
        yield srv
    finally:
        srv.stop()


def test_schedules_from_the_cli_and_http(hourly: ServerProcess) -> None:
    srv = hourly
    ls = srv.cli("schedules", "ls", "--json")
    assert ls.returncode == 0, ls.stderr
    (report,) = json.loads(ls.stdout)
    assert (report["name"], report["cron"], report["timezone"]) == (
        "report",
        "0 * * * *",
        "Europe/Paris",
    )
    assert report["enabled"] is True and report["enabled_by"] == "config"
    assert ts(report["next_slot"]).minute == 0
    assert report["job"] == {"command": "echo report", "labels": ["nightly"]}

    run = srv.cli("schedules", "run", "report", "--json")
    assert run.returncode == 0, run.stderr
    job_id = json.loads(run.stdout)["job_id"]
    with srv.http() as http:
        wait_for(lambda: http.get(f"/jobs/{job_id}").json()["state"] == "done", what="the run")
        job = http.get(f"/jobs/{job_id}").json()
        assert (job["source"], job["source_ref"]) == ("schedule", "schedule report run")
        assert job["result"].strip() == "report"

    off = srv.cli("schedules", "disable", "report")
    assert off.returncode == 0, off.stderr
    assert "corral schedules enable report" in off.stdout
    show = srv.cli("schedules", "show", "report", "--json")
    shown = json.loads(show.stdout)
    assert (shown["enabled"], shown["enabled_by"], shown["next_slot"]) == (False, "operator", None)
    assert shown["last_job_id"] == job_id
    on = srv.cli("schedules", "enable", "report")
    assert on.returncode == 0 and "enabled; next slot" in on.stdout

    with srv.http() as http:
        types = [e["type"] for e in _events(http, "report")]
        assert types == ["schedule.run", "schedule.disabled", "schedule.enabled"]
        missing = http.post("/schedules/nope/run")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "schedule_not_found"
        assert http.get("/schedules/nope").status_code == 404
    bad = srv.cli("schedules", "run", "nope")
    assert bad.returncode != 0 and "no schedule 'nope' (report)" in bad.stderr


def test_a_viewer_may_read_schedules_but_not_change_them(hourly: ServerProcess) -> None:
    (viewer,) = create_keys(hourly, "viewer")
    with httpx.Client(
        base_url=hourly.url, headers={"Authorization": f"Bearer {viewer['key']}"}
    ) as http:
        assert http.get("/schedules").status_code == 200
        for action in ("run", "enable", "disable"):
            resp = http.post(f"/schedules/report/{action}")
            assert resp.status_code == 403, (action, resp.text)
    with httpx.Client(base_url=hourly.url) as anonymous:
        assert anonymous.get("/schedules").status_code == 401
