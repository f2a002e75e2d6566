"""The body of a `dead_letter` webhook, rendered from its `dead_letters` row (migration 0019;
queued by the trigger of migration 0021 as source `dead_letter:<id>`).

There is no Kafka event of a dead letter in this shape (the dead-letter topic carries the record
itself), so this module is its one encoder: the same fields as `GET /v1/orgs/{org}/dead-letters`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from meter.admin.clock import to_ms
from schemas.events import format_time

SOURCE_PREFIX = "dead_letter:"
SELECT_DEAD_LETTERS = "SELECT * FROM dead_letters WHERE id = ANY($1::bigint[])"


def dead_letter_event(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """`time`, a stable `id` (the record's topic, partition and offset) and `data` of one row, as
    the worker puts them in a webhook body."""
    created = format_time(to_ms(row["created_at"]))
    return {
        "id": f"{row['topic']}/{row['partition']}/{row['offset']}",
        "time": created,
        "data": {
            "id": row["id"],
            "org_id": row["org_id"],
            "reason": row["reason"],
            "detail": row["detail"],
            "event": row["event"],
            "truncated": row["truncated"],
            "topic": row["topic"],
            "partition": row["partition"],
            "offset": row["offset"],
            "created_at": created,
        },
    }


async def dead_letter_events(
    conn: asyncpg.Connection, ids: dict[int, str]
) -> dict[str, dict[str, Any]]:
    """message id -> the event of its dead letter, for the `ids` (row id -> message id) still
    there (retention may have deleted a row before it was rendered)."""
    rows: Sequence[asyncpg.Record] = await conn.fetch(SELECT_DEAD_LETTERS, list(ids))
    return {ids[r["id"]]: dead_letter_event(r) for r in rows}
