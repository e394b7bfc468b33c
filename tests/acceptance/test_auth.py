"""Credentials and roles: 401 without or with a bad key, 403 for the wrong role."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from corral.testing import ServerProcess

from ._helpers import assert_error, create_keys, submit, wait_job

ROLES = ("viewer", "runner", "operator", "operator")


@pytest.fixture(scope="module")
def made(srv: ServerProcess) -> list[dict[str, str]]:
    """Keys made with `corral keys create` (all at once: each CLI run costs ~1 s)."""
    return create_keys(srv, *ROLES)


@pytest.fixture
def keys(made: list[dict[str, str]]) -> dict[str, str]:
    return {k["role"]: k["key"] for k in made[:3]}


@pytest.fixture
def anon(srv: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.url, timeout=30) as client:
        yield client


def test_health_needs_no_credential(anon: httpx.Client) -> None:
    resp = anon.get("/health")
    assert resp.status_code == 200
    assert resp.json()["status"] == "ok"


@pytest.mark.parametrize(
    "path", ["/jobs", "/status", "/runners", "/watchdog/status", "/jobs/x", "/sessions/x/events"]
)
def test_no_credential_is_401(anon: httpx.Client, path: str) -> None:
    err = assert_error(anon.get(path), 401, "unauthorized")
    assert "credential" in err["message"].lower() or "bearer" in err["message"].lower()


@pytest.mark.parametrize(
    "header",
    [
        {"Authorization": "Bearer crl_0000_notarealsecret"},
        {"Authorization": "Bearer garbage"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
        {"X-Api-Key": "crl_abc_def"},
    ],
)
def test_bad_credential_is_401(anon: httpx.Client, header: dict[str, str]) -> None:
    assert_error(anon.get("/jobs", headers=header), 401, "unauthorized")
    assert_error(anon.post("/jobs", headers=header, json={"command": "echo no"}), 401)


def test_a_real_key_with_a_wrong_secret_is_401(srv: ServerProcess, anon: httpx.Client) -> None:
    prefix = srv.admin_key.rsplit("_", 1)[0]
    forged = prefix + "_" + "A" * 43
    assert_error(anon.get("/jobs", headers={"Authorization": f"Bearer {forged}"}), 401)


def test_admin_key_works_as_bearer_and_x_api_key(srv: ServerProcess, anon: httpx.Client) -> None:
    assert (
        anon.get("/jobs", headers={"Authorization": f"Bearer {srv.admin_key}"}).status_code == 200
    )
    assert anon.get("/jobs", headers={"X-Api-Key": srv.admin_key}).status_code == 200


def test_viewer_reads_but_cannot_write(
    srv: ServerProcess, http: httpx.Client, keys: dict[str, str]
) -> None:
    job_id = submit(http, "echo visible")
    job = wait_job(http, job_id)
    with srv.http(keys["viewer"]) as viewer:
        resp = viewer.get("/jobs")
        assert resp.status_code == 200
        assert job_id in {j["id"] for j in resp.json()["jobs"]}
        assert viewer.get(f"/jobs/{job_id}").json()["state"] == "done"
        assert viewer.get(f"/sessions/{job['session_id']}/events").status_code == 200
        assert viewer.get("/runners").status_code == 200
        err = assert_error(viewer.post("/jobs", json={"command": "echo nope"}), 403, "forbidden")
        assert "viewer" in err["message"]
        assert_error(viewer.post(f"/jobs/{job_id}/retry"), 403, "forbidden")
        assert_error(viewer.post(f"/jobs/{job_id}/cancel"), 403, "forbidden")
        assert_error(viewer.post("/sessions", json={}), 403, "forbidden")
        assert_error(
            viewer.post(
                "/runners/register", json={"name": "v", "providers": ["shell"], "slots": 1}
            ),
            403,
            "forbidden",
        )


def test_operator_submits_but_cannot_run(srv: ServerProcess, keys: dict[str, str]) -> None:
    with srv.http(keys["operator"]) as op:
        resp = op.post("/jobs", json={"command": "echo from operator"})
        assert resp.status_code == 202, resp.text
        assert wait_job(op, resp.json()["job_id"])["state"] == "done"
        assert_error(
            op.post("/runners/register", json={"name": "op", "providers": ["shell"], "slots": 1}),
            403,
            "forbidden",
        )


def test_runner_key_cannot_read_or_submit(
    srv: ServerProcess, http: httpx.Client, keys: dict[str, str]
) -> None:
    job_id = submit(http, "echo private")
    wait_job(http, job_id)
    with srv.http(keys["runner"]) as runner:
        assert_error(runner.get("/jobs"), 403, "forbidden")
        assert_error(runner.post("/jobs", json={"command": "echo nope"}), 403, "forbidden")
        # A job it never held is not its business.
        assert_error(runner.get(f"/jobs/{job_id}"), 403, "forbidden")
        # What it may do: register (and lease for its own runner).
        resp = runner.post(
            "/runners/register",
            json={"name": "auth-test-runner", "providers": ["nothing-here"], "slots": 1},
        )
        assert resp.status_code == 200, resp.text
        runner_id = resp.json()["runner_id"]
        resp = runner.post(f"/runners/{runner_id}/lease", json={"max_jobs": 1, "wait": 0})
        assert resp.status_code == 200 and resp.json()["jobs"] == []
    # A runner registered with another key is not its to lease for.
    resp = http.post(
        "/runners/register",
        json={"name": "auth-admin-runner", "providers": ["nothing-here"], "slots": 1},
    )
    assert resp.status_code == 200, resp.text
    theirs = resp.json()["runner_id"]
    with srv.http(keys["runner"]) as runner:
        resp = runner.post(f"/runners/{theirs}/lease", json={"max_jobs": 1, "wait": 0})
        assert_error(resp, 403, "forbidden")


def test_revoked_key_is_refused(srv: ServerProcess, made: list[dict[str, str]]) -> None:
    created = made[3]  # never used before it is revoked, so no server has it cached
    res = srv.cli("keys", "revoke", created["id"], "--data-dir", str(srv.data_dir))
    assert res.returncode == 0, res.stderr
    with srv.http(created["key"]) as client:
        assert_error(client.get("/jobs"), 401, "unauthorized")
    res = srv.cli("keys", "ls", "--json", "--data-dir", str(srv.data_dir))
    listed = {k["id"]: k for k in json.loads(res.stdout)}
    assert listed[created["id"]]["revoked_at"] is not None
    assert "key" not in listed[created["id"]] and "hash" not in listed[created["id"]]
    assert created["key"] not in res.stdout  # secrets are never listed
