"""Rated usage by model and dimension over a period, from the settlements' `rating` column.

Events that carried credits have no rating and are not counted here (the period totals count
them); voided settlements are left out, as the totals leave them out. Per dimension the exact
credits of the lines are summed (numeric, no rounding); per model, the credits the events were
charged (each rounded once, when rated).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import asyncpg  # type: ignore[import-untyped]

_RATED = """
SELECT s.key, s.credits, s.rating FROM settlements s
WHERE s.org_id = $1 AND s.event_time >= $2 AND s.event_time < $3 AND s.rating IS NOT NULL
  AND ($4::text IS NULL OR s.member_id = $4)
  AND NOT EXISTS (
      SELECT 1 FROM voids v WHERE v.org_id = s.org_id AND v.event_key = s.key AND v.voided
  )
"""
BY_MODEL = f"""
WITH rated AS ({_RATED})
SELECT r.rating->>'model' AS model, count(*) AS events, sum(r.credits) AS credits
FROM rated r GROUP BY 1 ORDER BY 1
"""
BY_DIMENSION = f"""
WITH rated AS ({_RATED})
SELECT r.rating->>'model' AS model, l->>'dimension' AS dimension,
       sum((l->>'quantity')::numeric) AS quantity, sum((l->>'credits')::numeric) AS credits
FROM rated r, jsonb_array_elements(r.rating->'lines') AS l
GROUP BY 1, 2 ORDER BY 1, 2
"""


def _decimal_text(value: Decimal) -> str:
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


async def usage_by_model(
    pool: asyncpg.Pool,
    org_id: str,
    start: Any,
    end: Any,
    member_id: str | None = None,
) -> list[dict[str, Any]]:
    """Per model: events, credits charged (micro-credits), and per dimension the quantity and
    the exact credits (decimal text), over settlements with `start <= event_time < end`."""
    async with pool.acquire() as conn:
        models = await conn.fetch(BY_MODEL, org_id, start, end, member_id)
        lines = await conn.fetch(BY_DIMENSION, org_id, start, end, member_id)
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
        out[line["model"]]["dimensions"][line["dimension"]] = {
            "quantity": int(line["quantity"]),
            "credits": _decimal_text(line["credits"]),
        }
    return list(out.values())
