"""Logs with context: with `log_format = "json"` stderr of `corral serve` is
JSON lines only (its start-up banner too), each line about a job carries the
job's ids, each request's lines its request id (sent back in X-Request-ID),
and no credential appears."""

from __future__ import annotations

import json
from pathlib import Path

from ._helpers import running_server, submit, wait_job


def test_json_logs_are_json_lines_with_the_ids_they_are_about(tmp_path: Path) -> None:
    env = {"CORRAL_LOG_FORMAT": "json", "CORRAL_ACCESS_LOG": "true"}
    with running_server(tmp_path / "data", env=env) as srv, srv.http() as http:
        job_id = submit(http, "echo logged")
        assert wait_job(http, job_id)["state"] == "done"
        failed = submit(http, "exit 3")
        assert wait_job(http, failed)["state"] == "failed"
        resp = http.get(f"/jobs/{job_id}", headers={"X-Request-ID": "trace-me.1"})
        assert resp.headers["x-request-id"] == "trace-me.1"
        made = http.get("/status").headers["x-request-id"]  # one of its own
        assert len(made) == 16
        # A header that is not a sane id is replaced, not echoed.
        odd = http.get("/status", headers={"X-Request-ID": "a b\tc"}).headers["x-request-id"]
        assert odd != "a b\tc"
        admin_key = srv.admin_key
    text = srv.output()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # all JSON
    assert any("listening on http://127.0.0.1:" in x["message"] for x in lines)  # the banner

    ended = {x["job_id"]: x for x in lines if x.get("job_id") and " in " in x["message"]}
    assert ended[job_id]["message"].startswith(f"job {job_id} done in ")
    assert ended[job_id]["session_id"] and ended[job_id]["runner"].startswith("embedded-")
    assert ended[failed]["message"].endswith("(exit_code)")

    access = [x for x in lines if x["logger"] == "corral.access"]
    [traced] = [x for x in access if x.get("request_id") == "trace-me.1"]
    assert traced["message"].startswith(f"GET /jobs/{job_id} 200 ")
    assert any(x.get("request_id") == made for x in access)
    assert admin_key not in text
