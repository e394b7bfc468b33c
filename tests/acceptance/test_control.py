"""`corral route`, `corral pause|resume|status` against a real server."""

from __future__ import annotations

import json
import time
from pathlib import Path

from corral.testing import start_server


def test_route_pause_resume_status(tmp_path: Path) -> None:
    (tmp_path / "corral.toml").write_text(
        'default_provider = "claude"\n'
        '[providers.gpu]\nkind = "openai"\n[providers.claude]\nkind = "claude-code"\n'
        'tiers = { high = "opus" }\n'
    )
    srv = start_server(tmp_path / "data", args=("--config", str(tmp_path / "corral.toml")))
    try:
        task = tmp_path / "task.md"
        task.write_text("---\npreferred_ai: gpu\nallow_delegation: false\n---\nDo it.\n")
        shown = srv.cli("route", str(task))
        assert shown.returncode == 0, shown.stderr
        assert "claude by rule 3" in shown.stdout and "not rule 2" in shown.stdout
        task.write_text("---\nprovider: claude\ncomplexity_hint: high\n---\nDo it.\n")
        decision = json.loads(srv.cli("route", str(task), "--json").stdout)
        assert (decision["provider"], decision["model"], decision["rule"]) == ("claude", "opus", 2)
        task.write_text("---\nprefered_ai: gpu\n---\nDo it.\n")
        typo = srv.cli("route", str(task))
        assert typo.returncode == 1 and "did you mean 'preferred_ai'" in typo.stderr
        task.write_text("---\nprovider: claud\n---\nDo it.\n")
        refused = srv.cli("route", str(task))
        assert refused.returncode == 1
        assert refused.stdout.startswith("refused (422): provider 'claud' is not configured")
        assert "the enabled providers are: claude, gpu, shell" in refused.stdout
        task.write_text("---\ncommand: make test\n---\n")
        assert "shell by rule 0" in srv.cli("route", str(task)).stdout

        assert srv.cli("pause").returncode == 0
        assert "PAUSED" in srv.cli("status").stdout
        queued = json.loads(srv.cli("submit", "--shell", "echo resumed", "--json").stdout)
        time.sleep(1.0)
        job = json.loads(srv.cli("jobs", "show", queued["job_id"], "--json").stdout)
        assert job["state"] == "queued"
        assert srv.cli("resume").returncode == 0
        done = srv.cli("jobs", "wait", queued["job_id"], "--timeout", "30")
        assert done.returncode == 0, done.stdout + done.stderr
        status = json.loads(srv.cli("status", "--json").stdout)
        assert status["paused"] is False and status["jobs"]["done"] == 1
        shown = srv.cli("jobs", "show", queued["job_id"])
        assert "rule 0" in shown.stdout
    finally:
        srv.stop()
