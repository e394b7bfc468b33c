"""Credentials: API keys with roles, short-lived worker JWTs, and the
dashboard's signed session cookies.

API keys look like ``crl_<id>_<secret>``. Only ``sha256(key)`` is stored; the
id finds the row and the digests are compared in constant time. Keys are
random (256 bits), so a fast hash is the right one here, unlike passwords.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from corral.errors import Forbidden, Unauthorized


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"
    RUNNER = "runner"


# What each role may do. A runner may register and lease, nothing else.
_GRANTS: dict[Role, frozenset[str]] = {
    Role.VIEWER: frozenset({"read"}),
    Role.OPERATOR: frozenset({"read", "write"}),
    Role.ADMIN: frozenset({"read", "write", "admin", "run"}),
    Role.RUNNER: frozenset({"run"}),
}


def permits(role: Role, permission: str) -> bool:
    return permission in _GRANTS[role]


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    role: Role
    name: str

    def require(self, permission: str) -> None:
        if not permits(self.role, permission):
            raise Forbidden(f"role {self.role.value!r} may not {permission}")


def new_key() -> tuple[str, str]:
    """A fresh ``(key_id, key)``."""
    key_id = secrets.token_hex(6)
    return key_id, f"crl_{key_id}_{secrets.token_urlsafe(32)}"


def key_id_of(key: str) -> str:
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != "crl" or not parts[1] or not parts[2]:
        raise Unauthorized("malformed API key")
    return parts[1]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_key(key), stored_hash)


@dataclass(frozen=True, slots=True)
class WorkerClaims:
    """What a worker JWT grants: writes for one job at one epoch."""

    job_id: str
    session_id: str
    epoch: int
    runner_id: str


def issue_worker_token(claims: WorkerClaims, secret: str, ttl: float) -> str:
    now = int(time.time())
    exp = now + int(ttl)
    payload = {
        "sub": claims.job_id,
        "sid": claims.session_id,
        "epoch": claims.epoch,
        "rid": claims.runner_id,
        "iat": now,
        "exp": exp,
        "typ": "corral-worker-v1",
    }
    import jwt  # not at import: the CLI imports this module for Role

    token = jwt.encode(payload, secret, algorithm="HS256")
    _remember(token, secret, claims, exp)  # signed here: known valid
    return token


# Worker tokens already verified: (token, secret) -> (claims, exp). A job's
# runner presents one token on each of its calls (state, events, heartbeats,
# completion) and its signature check and decode were ~3 % of the server's CPU
# per job (issue #18). The signature is a function of the token and the
# secret alone, so a hit skips only that; expiry is checked on every call.
_VERIFIED: dict[tuple[str, str], tuple[WorkerClaims, int]] = {}
_VERIFIED_MAX = 4096


def verify_worker_token(token: str, secret: str, *, expired_ok: bool = False) -> WorkerClaims:
    """The claims of a worker JWT this server signed. ``expired_ok``: an
    expired token still proves what was leased to whom (a runner's journal,
    presented after a restart); it grants no writes."""
    known = _VERIFIED.get((token, secret))
    if known is not None:
        claims, exp = known
        if not expired_ok and time.time() >= exp:
            raise Unauthorized("worker token expired")
        return claims
    claims, exp = _verify_worker_token(token, secret, expired_ok)
    _remember(token, secret, claims, exp)
    return claims


def _remember(token: str, secret: str, claims: WorkerClaims, exp: int) -> None:
    if len(_VERIFIED) >= _VERIFIED_MAX:
        del _VERIFIED[next(iter(_VERIFIED))]  # the oldest (dicts keep insertion order)
    _VERIFIED[token, secret] = (claims, exp)


def _verify_worker_token(token: str, secret: str, expired_ok: bool) -> tuple[WorkerClaims, int]:
    import jwt

    try:
        data = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            options={
                "require": ["sub", "sid", "epoch", "rid", "exp"],
                "verify_exp": not expired_ok,
            },
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("worker token expired") from exc
    except jwt.InvalidTokenError as exc:
        raise Unauthorized("invalid worker token") from exc
    if (
        data.get("typ") != "corral-worker-v1"
        or not isinstance(data["epoch"], int)
        or not isinstance(data["exp"], int)
    ):
        raise Unauthorized("invalid worker token")
    claims = WorkerClaims(
        job_id=str(data["sub"]),
        session_id=str(data["sid"]),
        epoch=data["epoch"],
        runner_id=str(data["rid"]),
    )
    return claims, data["exp"]


# -- browser sessions (the dashboard) ---------------------------------------------------

SESSION_COOKIE = "corral_session"


@dataclass(frozen=True, slots=True)
class BrowserSession:
    """What a dashboard cookie says: who signed in (the key's id; its role is
    read again on each request, so a revoked key ends its sessions) and a
    random ``sid`` the CSRF token is bound to."""

    key_id: str
    sid: str
    exp: int


def _sign(secret: str, purpose: str, body: str) -> str:
    mac = hmac.new(secret.encode(), f"{purpose}\x1f{body}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def seal(secret: str, purpose: str, claims: dict[str, object]) -> str:
    """``claims`` as ``body.mac``: readable, not forgeable without ``secret``;
    ``purpose`` keeps a token made for one use from passing for another."""
    body = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    return f"{body}.{_sign(secret, purpose, body)}"


def unseal(secret: str, purpose: str, token: str, *, now: float | None = None) -> dict[str, Any]:
    """The claims of a token ``seal`` made for ``purpose``, if its mac holds
    and its ``exp`` has not passed."""
    body, _, mac = token.partition(".")
    if not body or not mac or not hmac.compare_digest(mac, _sign(secret, purpose, body)):
        raise Unauthorized("invalid or expired sign-in: sign in again")
    try:
        claims: dict[str, Any] = json.loads(_unb64(body))
    except ValueError:
        raise Unauthorized("invalid or expired sign-in: sign in again") from None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if not isinstance(exp, int) or exp <= (time.time() if now is None else now):
        raise Unauthorized("invalid or expired sign-in: sign in again")
    return claims


def issue_browser_session(key_id: str, secret: str, ttl: float) -> str:
    claims = {"k": key_id, "sid": secrets.token_urlsafe(16), "exp": int(time.time() + ttl)}
    return seal(secret, "session", claims)


def verify_browser_session(token: str, secret: str) -> BrowserSession:
    claims = unseal(secret, "session", token)
    key_id, sid = claims.get("k"), claims.get("sid")
    if not isinstance(key_id, str) or not isinstance(sid, str):
        raise Unauthorized("invalid or expired sign-in: sign in again")
    return BrowserSession(key_id=key_id, sid=sid, exp=int(claims["exp"]))


def csrf_token(session: BrowserSession, secret: str) -> str:
    """The token every write of this browser session carries (a form field or
    the X-CSRF-Token header): a page of another site cannot read it."""
    return _sign(secret, "csrf", session.sid)


def csrf_matches(session: BrowserSession, secret: str, token: str) -> bool:
    return bool(token) and hmac.compare_digest(token, csrf_token(session, secret))
