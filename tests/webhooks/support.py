"""Source rows for the webhook tests: alerts and charges due inserted as the settlement
triggers and the scheduler insert them, each in its own committed transaction."""

from __future__ import annotations

import datetime as dt
import time

import asyncpg  # type: ignore[import-untyped]
import httpx

START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
END = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)

INSERT_ALERT = """
INSERT INTO alerts (org_id, subject_kind, subject_id, period_start, period_end, threshold, amount,
                    reference)
VALUES ($1, 'member', $2, $3, $4, 80, 800000000, 1000000000)
RETURNING alert_id
"""
INSERT_CHARGE = """
INSERT INTO charges_due (org_id, charge_id, period_start, period_end, reason, credits,
                         through_credits, amount_micros, due_at)
VALUES ($1, $2, $3, $4, 'threshold', 5000000, $5, 250000, now())
"""


async def insert_alert(pool: asyncpg.Pool, org_id: str, member_id: str) -> tuple[int, float]:
    """An 80% member-limit alert; returns its id and `time.time()` right after the commit."""
    alert_id: int = await pool.fetchval(INSERT_ALERT, org_id, member_id, START, END)
    return alert_id, time.time()


async def insert_charge(pool: asyncpg.Pool, org_id: str, n: int) -> str:
    charge_id = f"{int(START.timestamp() * 1000)}:{n * 5_000_000}"
    await pool.execute(INSERT_CHARGE, org_id, charge_id, START, END, n * 5_000_000)
    return charge_id


async def make_endpoint(
    client: httpx.AsyncClient, org_id: str, url: str, types: list[str] | None = None
) -> dict[str, object]:
    body = {"url": url, "event_types": types or ["alert.*", "charge.due"]}
    r = await client.post(f"/v1/orgs/{org_id}/webhooks", json=body)
    assert r.status_code == 201, r.text
    endpoint: dict[str, object] = r.json()
    return endpoint
