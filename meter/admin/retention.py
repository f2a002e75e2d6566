"""Retention of what is kept for reading only: dead letters (the topic stays the complete
record), webhook messages (their deliveries go with them) and webhook attempts, 30 days each.

The period scheduler calls `purge` on every tick (at least every minute); each table loses at
most `batch` of its oldest expired rows per call, so a backlog (a first run, a scheduler that was
away) is worked off over several ticks and no call holds locks for long. The settlement
consumer also purges dead letters as it records new ones (`consumers.dead_letters`).
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg  # type: ignore[import-untyped]

RETENTION_DAYS = 30
BATCH = 1000

PURGE_DEAD_LETTERS = """
DELETE FROM dead_letters WHERE id IN (
    SELECT id FROM dead_letters WHERE created_at < now() - make_interval(days => $1)
    ORDER BY created_at LIMIT $2
)
"""
PURGE_WEBHOOK_MESSAGES = """
DELETE FROM webhook_messages WHERE message_id IN (
    SELECT message_id FROM webhook_messages WHERE created_at < now() - make_interval(days => $1)
    ORDER BY created_at LIMIT $2
)
"""
PURGE_WEBHOOK_ATTEMPTS = """
DELETE FROM webhook_attempts WHERE attempt_id IN (
    SELECT attempt_id FROM webhook_attempts WHERE at < now() - make_interval(days => $1)
    ORDER BY at LIMIT $2
)
"""


@dataclass(frozen=True, slots=True)
class Purged:
    dead_letters: int
    webhook_messages: int
    webhook_attempts: int

    @property
    def total(self) -> int:
        return self.dead_letters + self.webhook_messages + self.webhook_attempts


def _count(status: str) -> int:
    """Rows of a `DELETE n` command tag."""
    return int(status.rsplit(" ", 1)[-1])


async def purge(pool: asyncpg.Pool, *, days: int = RETENTION_DAYS, batch: int = BATCH) -> Purged:
    """Delete at most `batch` rows older than `days` from each table; returns how many went."""
    counts = [
        _count(await pool.execute(sql, days, batch))
        for sql in (PURGE_DEAD_LETTERS, PURGE_WEBHOOK_MESSAGES, PURGE_WEBHOOK_ATTEMPTS)
    ]
    return Purged(*counts)
