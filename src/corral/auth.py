"""Credentials: API keys with roles, and short-lived worker JWTs.

API keys look like ``crl_<id>_<secret>``. Only ``sha256(key)`` is stored; the
id finds the row and the digests are compared in constant time. Keys are
random (256 bits), so a fast hash is the right one here, unlike passwords.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum

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
    payload = {
        "sub": claims.job_id,
        "sid": claims.session_id,
        "epoch": claims.epoch,
        "rid": claims.runner_id,
        "iat": now,
        "exp": now + int(ttl),
        "typ": "corral-worker-v1",
    }
    import jwt  # not at import: the CLI imports this module for Role

    return jwt.encode(payload, secret, algorithm="HS256")


def verify_worker_token(token: str, secret: str, *, expired_ok: bool = False) -> WorkerClaims:
    """The claims of a worker JWT this server signed. ``expired_ok``: an
    expired token still proves what was leased to whom (a runner's journal,
    presented after a restart); it grants no writes."""
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
    if data.get("typ") != "corral-worker-v1" or not isinstance(data["epoch"], int):
        raise Unauthorized("invalid worker token")
    return WorkerClaims(
        job_id=str(data["sub"]),
        session_id=str(data["sid"]),
        epoch=data["epoch"],
        runner_id=str(data["rid"]),
    )
