"""Dead letters indexed per organization in PostgreSQL (`schemas/migrations/0019_dead_letters.sql`).

The dead-letter topic stays the complete record (`consumers.dlq`); this index lets an
organization's admin read what never settled (`GET /v1/orgs/{org}/dead-letters`,
`meter dlq list`). The consumer records a batch's letters right after the topic acknowledged
them. A letter whose organization cannot be read from it (not JSON, no `data.org_id`, no record
key of id characters) is on the topic only. Writing the same source position twice is one row.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import orjson

from consumers.dlq import PREFIX_BYTES, DeadLetter
from schemas.events import ID_PATTERN

RETENTION_DAYS = 30
"""Rows older than this are deleted as new ones are recorded."""
DETAIL_CHARS = 1024
"""How much of a letter's message a row keeps."""
PURGE_BATCH = 1000
"""Old rows deleted per recording at most, so one call never deletes without bound."""

_ID = re.compile(ID_PATTERN[1:-1]).fullmatch

INSERT_DEAD_LETTERS = """
INSERT INTO dead_letters (org_id, reason, detail, event, truncated, topic, partition, "offset")
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::boolean[], $6::text[],
    $7::integer[], $8::bigint[])
ON CONFLICT (topic, partition, "offset") DO NOTHING
"""
PURGE_DEAD_LETTERS = f"""
DELETE FROM dead_letters WHERE id IN (
    SELECT id FROM dead_letters WHERE created_at < now() - interval '{RETENTION_DAYS} days'
    ORDER BY created_at LIMIT {PURGE_BATCH}
)
"""


def org_of(letter: DeadLetter) -> str | None:
    """The organization a dead letter belongs to: the event's `data.org_id` when the value is a
    JSON event naming one, else the record key (producers key records by organization)."""
    doc: Any = None
    if letter.value:
        try:
            doc = orjson.loads(letter.value)
        except orjson.JSONDecodeError:
            doc = None
    if type(doc) is dict:
        data = doc.get("data")
        if type(data) is dict:
            org = data.get("org_id")
            if type(org) is str and _ID(org):
                return org
    if letter.key:
        try:
            key = letter.key.decode()
        except UnicodeDecodeError:
            return None
        if _ID(key):
            return key
    return None


def _text(raw: bytes) -> str:
    """Bytes as text PostgreSQL stores: undecodable bytes and NUL become U+FFFD."""
    return raw.decode(errors="replace").replace("\x00", "\ufffd")


async def record_dead_letters(pool: asyncpg.Pool, letters: Sequence[DeadLetter]) -> int:
    """Index `letters` whose organization is known, in the order they were read (ids grow with
    the source position); returns how many had one. Idempotent."""
    ordered = sorted(letters, key=lambda d: (d.topic, d.partition, d.offset))
    rows = [(org, letter) for letter in ordered if (org := org_of(letter)) is not None]
    if not rows:
        return 0
    columns: list[list[Any]] = [[] for _ in range(8)]
    for org, letter in rows:
        value = letter.value or b""
        for column, item in zip(
            columns,
            (
                org,
                letter.reason,
                _text(letter.message.encode(errors="replace"))[:DETAIL_CHARS],
                _text(value[:PREFIX_BYTES]),
                len(value) > PREFIX_BYTES,
                letter.topic,
                letter.partition,
                letter.offset,
            ),
            strict=True,
        ):
            column.append(item)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(INSERT_DEAD_LETTERS, *columns)
        await conn.execute(PURGE_DEAD_LETTERS)
    return len(rows)
