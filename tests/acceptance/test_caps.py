"""A provider cap holds under load with a real server."""

from __future__ import annotations

import json
import time
from pathlib import Path

from corral.testing import start_server


def test_provider_cap_holds_under_load(tmp_path: Path) -> None:
    config = tmp_path / "corral.toml"
    config.write_text('[providers.shell]\nkind = "shell"\nconcurrency = 2\n[runner]\nslots = 8\n')
    srv = start_server(tmp_path / "data", args=("--config", str(config)))
    try:
        with srv.http() as http:
            ids = [
                http.post("/jobs", json={"command": "sleep 0.4"}).json()["job_id"]
                for _ in range(10)
            ]
            most, reason = 0, None
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                jobs = http.get("/jobs", params={"limit": 50}).json()["jobs"]
                active = [j for j in jobs if j["state"] in ("assigned", "running")]
                most = max(most, len(active))
                queued = [j for j in jobs if j["state"] == "queued"]
                if queued and reason is None:
                    reason = http.get(f"/jobs/{queued[0]['id']}").json()["waiting"]
                if all(j["state"] == "done" for j in jobs):
                    break
                time.sleep(0.05)
        assert most == 2  # never more than the cap, and the cap is used
        assert reason == "provider cap: 2/2 shell jobs active"
        states = {json.loads(srv.cli("jobs", "show", i, "--json").stdout)["state"] for i in ids}
        assert states == {"done"}
    finally:
        srv.stop()
