"""Rated usage by model and dimension over a period, from the totals by model
(`model_period_totals`, `model_dimension_period_totals`: 0022_model_totals.sql), kept in step
with the settlements by the store, so that archived months keep answering.

Events that carried credits have no rating and are not counted here (the period totals count
them); voided settlements are taken back out, as from every total. Per dimension the exact
credits of the lines are summed (numeric, no rounding); per model, the credits the events were
charged (each rounded once, when rated). A settlement counts in the period it settled in, as in
the other reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from meter.money import format_credits
from schemas import api

BY_MODEL = """
SELECT model, sum(events) AS events, sum(credits) AS credits FROM model_period_totals
WHERE org_id = $1 AND period_start = $2 AND ($3::text IS NULL OR member_id = $3)
GROUP BY model HAVING sum(events) > 0 ORDER BY model
"""
BY_DIMENSION = """
SELECT model, dimension, sum(quantity) AS quantity, sum(credits) AS credits
FROM model_dimension_period_totals
WHERE org_id = $1 AND period_start = $2 AND ($3::text IS NULL OR member_id = $3)
GROUP BY model, dimension HAVING sum(quantity) > 0 ORDER BY model, dimension
"""


def _decimal_text(value: Decimal) -> str:
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


async def usage_by_model(
    pool: asyncpg.Pool, org_id: str, period_start: datetime, member_id: str | None = None
) -> list[dict[str, Any]]:
    """Per model: events, credits charged (micro-credits), and per dimension the quantity and
    the exact credits (decimal text), of the settlements of the period starting `period_start`
    (of one member when `member_id` is given)."""
    async with pool.acquire() as conn:
        models = await conn.fetch(BY_MODEL, org_id, period_start, member_id)
        lines = await conn.fetch(BY_DIMENSION, org_id, period_start, member_id)
    return build(models, lines)


def build(models: Sequence[Any], lines: Sequence[Any]) -> list[dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {
        m["model"]: {
            "model": m["model"],
            "events": int(m["events"]),
            "credits": int(m["credits"]),
            "dimensions": {},
        }
        for m in models
    }
    for line in lines:
        if line["model"] not in out:
            continue  # every event of the model voided
        out[line["model"]]["dimensions"][line["dimension"]] = {
            "quantity": int(line["quantity"]),
            "credits": _decimal_text(line["credits"]),
        }
    return list(out.values())


def models_out(models: Sequence[dict[str, Any]]) -> list[api.ModelUsage]:
    """`usage_by_model` as the API answers it."""
    return [
        api.ModelUsage(
            model=m["model"],
            events=m["events"],
            credits=format_credits(m["credits"]),
            dimensions={d: api.DimensionUsage(**v) for d, v in m["dimensions"].items()},
        )
        for m in models
    ]
