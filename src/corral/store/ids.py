"""Ids given by their first characters, as people type them (`corral jobs
show 3f2a`): a unique prefix of at least ``MIN_PREFIX`` hex digits stands
for the whole id."""

from __future__ import annotations

import re

import sqlalchemy as sa

from corral.errors import AmbiguousId, NotFound
from corral.store.db import Database

MIN_PREFIX = 4
ID_LENGTH = 32  # models.new_id(): uuid4().hex
_PREFIX = re.compile(rf"[0-9a-f]{{{MIN_PREFIX},{ID_LENGTH - 1}}}")
# Candidates named in an ambiguity error.
SHOWN = 10


async def resolve(
    db: Database, table: sa.Table, ref: str, noun: str, not_found: type[NotFound]
) -> str:
    """The id ``ref`` names: ``ref`` itself unless it is a prefix (4 to 31 hex
    digits) of exactly one id. A prefix of none raises ``not_found``; of several,
    AmbiguousId naming them."""
    prefix = ref.lower()
    if len(ref) == ID_LENGTH or not _PREFIX.fullmatch(prefix):
        return ref
    column = table.c.id
    # A range on the primary key (ids are lowercase hex: every id starting with
    # the prefix sorts between it and the prefix followed by "g"), so an index
    # serves it on both databases; startswith() keeps it exact whatever the collation.
    stmt = (
        sa.select(column)
        .where(column >= prefix, column < prefix + "g", column.startswith(prefix))
        .order_by(column)
        .limit(SHOWN + 1)
    )
    found = await db.read(lambda conn: [str(r[0]) for r in conn.execute(stmt)])
    if not found:
        raise not_found(f"no {noun} {ref}")
    if len(found) > 1:
        more = " and more" if len(found) > SHOWN else ""
        raise AmbiguousId(
            f"{noun} id prefix {ref} is ambiguous: it matches {', '.join(found[:SHOWN])}{more}; "
            "give more characters",
            candidates=found[:SHOWN],
        )
    return found[0]
