"""Session affinity across runner processes: the turns of a shell session go
to the runner holding its workspace; when that runner stops, the next turn
moves to another one, in a new workspace, and says so."""

from __future__ import annotations

from pathlib import Path

import httpx

from ._helpers import (
    create_key,
    get_job,
    running_server,
    session_events,
    start_runner,
    stop_process,
    submit,
    wait_for,
    wait_job,
)


def _turn(http: httpx.Client, session_id: str, command: str) -> dict:
    resp = http.post(f"/sessions/{session_id}/turns", json={"command": command})
    assert resp.status_code == 202, resp.text
    return wait_job(http, resp.json()["job_id"], timeout=30)


def test_turns_stay_with_their_runner_until_it_goes(tmp_path: Path) -> None:
    with (
        running_server(tmp_path / "data", env={"CORRAL_RUNNER__EMBEDDED": "false"}) as s,
        s.http() as http,
    ):
        key = create_key(s, "runner")
        procs = {
            name: start_runner(s, key, tmp_path / name, "--name", name, "--slots", "2")[0]
            for name in ("left", "right")
        }
        try:
            wait_for(lambda: len(http.get("/runners").json()) == 2, timeout=20, what="two runners")
            ids = {r["name"]: r["id"] for r in http.get("/runners").json()}
            first = wait_job(http, submit(http, "echo kept > note.txt"), timeout=30)
            session_id = first["session_id"]
            host = next(name for name, rid in ids.items() if rid == first["runner_id"])
            assert http.get(f"/sessions/{session_id}").json()["host"] == host
            # Both runners are free; every turn still goes to the session's.
            for _ in range(6):
                turn = _turn(http, session_id, "cat note.txt")
                assert turn["state"] == "done" and turn["result"].strip() == "kept", turn
                assert turn["runner_id"] == ids[host]

            assert stop_process(procs.pop(host)) == 0
            moved = _turn(http, session_id, "cat note.txt || echo fresh workspace")
            other = next(iter(procs))
            assert moved["runner_id"] == ids[other] and "fresh workspace" in moved["result"]
            notes = [e for e in session_events(http, session_id) if e["type"] == "session.moved"]
            assert [(n["payload"]["from"], n["payload"]["to"]) for n in notes] == [(host, other)]
            assert get_job(http, moved["id"])["state"] == "done"
            assert http.get(f"/sessions/{session_id}").json()["host"] == other
        finally:
            for proc in procs.values():
                stop_process(proc)
