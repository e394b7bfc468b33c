"""API keys (hashed) and server settings kept in the database."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable

import sqlalchemy as sa

from corral import auth
from corral.auth import Principal, Role
from corral.errors import KeyNotFound, Unauthorized
from corral.models import ApiKey
from corral.store.db import Database, Tx, dicts, fields
from corral.store.jobs import now_utc
from corral.store.schema import api_keys, settings


class Keys:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, *, name: str, role: Role, key: str | None = None) -> tuple[ApiKey, str]:
        """Store a new key (or the given one); returns it in clear once."""
        if key is None:
            key_id, key = auth.new_key()
        else:
            key_id = auth.key_id_of(key)
        now = now_utc()
        stmt = sa.insert(api_keys).values(
            id=key_id, name=name, role=role.value, hash=auth.hash_key(key), created_at=now
        )
        await self.db.write(lambda tx: tx.conn.execute(stmt))
        return ApiKey(id=key_id, name=name, role=role.value, created_at=now), key

    async def ensure(self, key: str, *, name: str, role: Role) -> None:
        """Make sure ``key`` is stored (used for the local key files)."""
        key_id = auth.key_id_of(key)
        found = await self.db.read(
            lambda conn: conn.execute(
                sa.select(api_keys.c.id).where(api_keys.c.id == key_id)
            ).scalar_one_or_none()
        )
        if found is None:
            await self.create(name=name, role=role, key=key)

    async def count_active(self) -> int:
        stmt = (
            sa.select(sa.func.count()).select_from(api_keys).where(api_keys.c.revoked_at.is_(None))
        )
        return int(await self.db.read(lambda conn: conn.execute(stmt).scalar_one()))

    async def revoke(self, key_id: str) -> ApiKey:
        stmt = (
            sa.update(api_keys)
            .where(api_keys.c.id == key_id)
            .values(revoked_at=sa.func.coalesce(api_keys.c.revoked_at, now_utc()))
            .returning(*api_keys.c)
        )
        row = await self.db.write(lambda tx: tx.conn.execute(stmt).one_or_none())
        if row is None:
            raise KeyNotFound(f"no key {key_id}")
        return ApiKey.model_validate(fields(row))

    async def authenticate(self, key: str) -> Principal:
        key_id = auth.key_id_of(key)
        row = await self.db.read(
            lambda conn: conn.execute(
                sa.select(api_keys).where(api_keys.c.id == key_id)
            ).one_or_none()
        )
        # Compare even when the row is missing, so timing says nothing.
        stored = row.hash if row is not None else "0" * 64
        if not auth.key_matches(key, stored) or row is None or row.revoked_at is not None:
            raise Unauthorized("invalid or revoked API key")
        return Principal(key_id=row.id, role=Role(row.role), name=row.name)

    async def principal(self, key_id: str) -> Principal:
        """Who key ``key_id`` is now (a browser session signed in with it
        ends when the key is revoked)."""
        row = await self.db.read(
            lambda conn: conn.execute(
                sa.select(api_keys).where(api_keys.c.id == key_id)
            ).one_or_none()
        )
        if row is None or row.revoked_at is not None:
            raise Unauthorized("the key this sign-in used is revoked: sign in again")
        return Principal(key_id=row.id, role=Role(row.role), name=row.name)

    # Last: from here on in the class body, ``list`` names this method, not the builtin.
    async def list(self) -> list[ApiKey]:
        stmt = sa.select(api_keys).order_by(api_keys.c.created_at)
        return await self.db.read(
            lambda conn: [ApiKey.model_validate(d) for d in dicts(conn.execute(stmt))]
        )


class ServerSettings:
    """Values the replicas share, such as the worker JWT secret."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, key: str) -> str | None:
        select = sa.select(settings.c.value).where(settings.c.key == key)
        value = await self.db.read(lambda conn: conn.execute(select).scalar_one_or_none())
        return None if value is None else str(value)

    async def set(self, key: str, value: str, *, notify: str | None = None) -> None:
        """Store ``value``; with ``notify``, announce it on that bus topic."""

        def body(tx: Tx) -> None:
            updated = tx.conn.execute(
                sa.update(settings).where(settings.c.key == key).values(value=value)
            )
            if updated.rowcount == 0:
                tx.conn.execute(sa.insert(settings).values(key=key, value=value))
            if notify is not None:
                tx.notify(notify, f"{key}={value}")

        await self.db.write(body)

    async def get_or_create(self, key: str, make: Callable[[], str]) -> str:
        select = sa.select(settings.c.value).where(settings.c.key == key)
        value = await self.db.read(lambda conn: conn.execute(select).scalar_one_or_none())
        if value is not None:
            return str(value)
        with contextlib.suppress(sa.exc.IntegrityError):  # another replica was first
            await self.db.write(
                lambda tx: tx.conn.execute(sa.insert(settings).values(key=key, value=make()))
            )
        return str(await self.db.read(lambda conn: conn.execute(select).scalar_one()))


def new_secret() -> str:
    return secrets.token_urlsafe(48)
