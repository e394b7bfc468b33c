"""API keys, roles and worker JWTs."""

from __future__ import annotations

import time

import jwt
import pytest

from corral import auth
from corral.auth import Principal, Role, WorkerClaims
from corral.errors import Forbidden, Unauthorized

SECRET = "s" * 64
CLAIMS = WorkerClaims(job_id="j1", session_id="s1", epoch=3, runner_id="r1")


def test_worker_token_round_trip() -> None:
    token = auth.issue_worker_token(CLAIMS, SECRET, ttl=60)
    assert auth.verify_worker_token(token, SECRET) == CLAIMS


def test_worker_token_is_hs256_with_expiry() -> None:
    token = auth.issue_worker_token(CLAIMS, SECRET, ttl=60)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    body = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert body["exp"] - body["iat"] == 60
    assert (body["sub"], body["sid"], body["epoch"], body["rid"]) == ("j1", "s1", 3, "r1")


def test_a_verified_token_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    """The second check of a token skips the signature (a cache), not the expiry."""
    token = auth.issue_worker_token(CLAIMS, SECRET, ttl=60)
    assert auth.verify_worker_token(token, SECRET) == CLAIMS
    assert auth.verify_worker_token(token, SECRET) == CLAIMS
    later = time.time() + 61
    monkeypatch.setattr(auth.time, "time", lambda: later)
    with pytest.raises(Unauthorized, match="expired"):
        auth.verify_worker_token(token, SECRET)
    assert auth.verify_worker_token(token, SECRET, expired_ok=True) == CLAIMS


def test_a_verified_token_is_not_valid_under_another_secret() -> None:
    token = auth.issue_worker_token(CLAIMS, SECRET, ttl=60)
    assert auth.verify_worker_token(token, SECRET) == CLAIMS
    with pytest.raises(Unauthorized):
        auth.verify_worker_token(token, "o" * 64)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(lambda: auth.issue_worker_token(CLAIMS, "o" * 64, 60), id="wrong-secret"),
        pytest.param(lambda: auth.issue_worker_token(CLAIMS, SECRET, -5), id="expired"),
        pytest.param(lambda: "not-a-jwt", id="garbage"),
        pytest.param(
            lambda: jwt.encode({"sub": "j1", "exp": time.time() + 60}, SECRET, algorithm="HS256"),
            id="missing-claims",
        ),
        pytest.param(
            lambda: jwt.encode(
                {
                    "sub": "j",
                    "sid": "s",
                    "epoch": 1,
                    "rid": "r",
                    "exp": time.time() + 60,
                    "typ": "o" * 64,
                },
                SECRET,
                algorithm="HS256",
            ),
            id="wrong-type",
        ),
        pytest.param(
            lambda: jwt.encode(
                {
                    "sub": "j",
                    "sid": "s",
                    "epoch": 1,
                    "rid": "r",
                    "exp": time.time() + 60,
                    "typ": "corral-worker-v1",
                },
                SECRET,
                algorithm="HS512",
            ),
            id="wrong-alg",
        ),
    ],
)
def test_bad_worker_tokens_are_refused(token) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Unauthorized):
        auth.verify_worker_token(token(), SECRET)


def test_keys_are_hashed_and_compared() -> None:
    key_id, key = auth.new_key()
    assert key.startswith(f"crl_{key_id}_") and len(key) > 40
    assert auth.key_id_of(key) == key_id
    stored = auth.hash_key(key)
    assert key not in stored
    assert auth.key_matches(key, stored)
    assert not auth.key_matches(key + "x", stored)


@pytest.mark.parametrize("bad", ["", "crl_", "crl__x", "abc_def_ghi", "crl_id_"])
def test_malformed_keys(bad: str) -> None:
    with pytest.raises(Unauthorized):
        auth.key_id_of(bad)


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        (Role.ADMIN, {"read", "write", "admin", "run"}),
        (Role.OPERATOR, {"read", "write"}),
        (Role.VIEWER, {"read"}),
        (Role.RUNNER, {"run"}),
    ],
    ids=lambda v: getattr(v, "value", "perm"),
)
def test_roles(role: Role, allowed: set[str]) -> None:
    who = Principal("k", role, "n")
    for permission in ("read", "write", "admin", "run"):
        if permission in allowed:
            who.require(permission)
        else:
            with pytest.raises(Forbidden):
                who.require(permission)


def test_browser_sessions_are_signed_and_expire() -> None:
    cookie = auth.issue_browser_session("abc123", "s" * 40, ttl=60)
    session = auth.verify_browser_session(cookie, "s" * 40)
    assert session.key_id == "abc123" and session.sid
    body, _, mac = cookie.partition(".")
    for forged in (
        cookie + "x",
        f"{body}.{mac[:-2]}",
        body,
        "",
        auth.seal("s" * 40, "login-link", {"k": "abc123", "sid": "x", "exp": 2**40}),
    ):
        with pytest.raises(Unauthorized):
            auth.verify_browser_session(forged, "s" * 40)
    with pytest.raises(Unauthorized):
        auth.verify_browser_session(cookie, "t" * 40)  # another server's secret
    with pytest.raises(Unauthorized):
        auth.unseal("s" * 40, "session", cookie, now=session.exp + 1)


def test_csrf_tokens_are_bound_to_the_session() -> None:
    secret = "s" * 40
    one = auth.verify_browser_session(auth.issue_browser_session("k1", secret, 60), secret)
    two = auth.verify_browser_session(auth.issue_browser_session("k1", secret, 60), secret)
    token = auth.csrf_token(one, secret)
    assert auth.csrf_matches(one, secret, token)
    assert not auth.csrf_matches(two, secret, token)
    assert not auth.csrf_matches(one, secret, "")
    assert not auth.csrf_matches(one, "t" * 40, token)
