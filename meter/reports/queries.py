"""SQL of the reports. Every query reads the totals tables (0002, 0004), never `settlements`.

Parameters shared by most queries: $1 org id, $2 period start. A billing-group filter is a text
parameter that is NULL for "all groups" and '' for Unassigned.
"""

from __future__ import annotations

TOTALS = "events, credits, seat, personal, shared, on_demand, unfunded"
T_TOTALS = "t.events, t.credits, t.seat, t.personal, t.shared, t.on_demand, t.unfunded"
EITHER_TOTALS = ", ".join(f"coalesce(t.{c}, gt.{c}) AS {c}" for c in TOTALS.split(", "))

ORG_PLAN = """
SELECT o.billing_anchor, p.period_kind, p.rolling_days
FROM organizations o JOIN plans p USING (plan_id)
WHERE o.org_id = $1
"""

ORG_TOTALS = f"""
SELECT {TOTALS} FROM org_period_totals WHERE org_id = $1 AND period_start = $2
"""

PERIODS = f"""
SELECT period_start, period_end, {TOTALS} FROM org_period_totals
WHERE org_id = $1 ORDER BY period_start DESC
"""

# $3: list current groups too (current period).
GROUPS = f"""
WITH ids AS (
    SELECT billing_group FROM group_period_totals WHERE org_id = $1 AND period_start = $2
    UNION
    SELECT billing_group_id FROM billing_groups
    WHERE $3 AND org_id = $1 AND deleted_at IS NULL
    UNION
    SELECT '' WHERE $3
)
SELECT ids.billing_group, g.name, g.deleted_at IS NOT NULL AS deleted, {T_TOTALS}
FROM ids
LEFT JOIN group_period_totals t
    ON t.org_id = $1 AND t.period_start = $2 AND t.billing_group = ids.billing_group
LEFT JOIN billing_groups g ON g.org_id = $1 AND g.billing_group_id = ids.billing_group
"""

GROUP_EXISTS = """
SELECT EXISTS (SELECT 1 FROM billing_groups WHERE org_id = $1 AND billing_group_id = $2)
"""

# Keyset page of members: ids after $3, at most $4 (the caller asks for one more than it shows).
# $5: include current members without usage (current period); $6: billing-group filter.
# Each branch walks an index in member id order and stops after $4 rows.
MEMBER_PAGE = f"""
WITH ids AS (
    (SELECT member_id FROM members
     WHERE $5 AND org_id = $1 AND status = 'active' AND member_id > $3
       AND ($6::text IS NULL OR coalesce(billing_group_id, '') = $6)
     ORDER BY member_id LIMIT $4)
    UNION
    (SELECT member_id FROM member_period_totals
     WHERE $6::text IS NULL AND org_id = $1 AND period_start = $2 AND member_id > $3
     ORDER BY member_id LIMIT $4)
    UNION
    (SELECT member_id FROM member_group_period_totals
     WHERE $6::text IS NOT NULL AND org_id = $1 AND period_start = $2 AND billing_group = $6
       AND member_id > $3
     ORDER BY member_id LIMIT $4)
    ORDER BY member_id LIMIT $4
)
SELECT ids.member_id, m.name, m.email, m.status, m.billing_group_id, {EITHER_TOTALS}
FROM ids
LEFT JOIN members m ON m.org_id = $1 AND m.member_id = ids.member_id
LEFT JOIN member_period_totals t
    ON $6::text IS NULL AND t.org_id = $1 AND t.period_start = $2 AND t.member_id = ids.member_id
LEFT JOIN member_group_period_totals gt
    ON $6::text IS NOT NULL AND gt.org_id = $1 AND gt.period_start = $2
   AND gt.billing_group = $6 AND gt.member_id = ids.member_id
ORDER BY ids.member_id
"""

MEMBER = f"""
SELECT m.member_id, m.name, m.email, m.status, m.billing_group_id, {T_TOTALS}
FROM members m
LEFT JOIN member_period_totals t
    ON t.org_id = m.org_id AND t.period_start = $2 AND t.member_id = m.member_id
WHERE m.org_id = $1 AND m.member_id = $3
"""

MEMBER_GROUPS = f"""
SELECT t.billing_group, g.name, {T_TOTALS}
FROM member_group_period_totals t
LEFT JOIN billing_groups g ON g.org_id = t.org_id AND g.billing_group_id = t.billing_group
WHERE t.org_id = $1 AND t.member_id = $3 AND t.period_start = $2
"""

ORG_DAILY = f"""
SELECT day, {TOTALS} FROM org_daily_totals
WHERE org_id = $1 AND day BETWEEN $2 AND $3
"""

# $2 member, $3 and $4 the first and last day.
MEMBER_DAILY = f"""
SELECT day, {TOTALS} FROM member_daily_totals
WHERE org_id = $1 AND member_id = $2 AND day BETWEEN $3 AND $4
"""

# The CSV export. $3: billing-group filter; $4: add current members without usage (current
# period), under their current group. Order: group name, group id, member name, member id,
# each by code point (COLLATE "C"), so the order is the same on every server.
EXPORT = """
WITH used AS (
    SELECT billing_group, member_id, credits FROM member_group_period_totals
    WHERE org_id = $1 AND period_start = $2 AND ($3::text IS NULL OR billing_group = $3)
), idle AS (
    SELECT coalesce(m.billing_group_id, '') AS billing_group, m.member_id, 0::bigint AS credits
    FROM members m
    WHERE $4 AND m.org_id = $1 AND m.status = 'active'
      AND ($3::text IS NULL OR coalesce(m.billing_group_id, '') = $3)
      AND NOT EXISTS (
          SELECT 1 FROM used u
          WHERE u.billing_group = coalesce(m.billing_group_id, '') AND u.member_id = m.member_id
      )
), rows AS (
    SELECT * FROM used UNION ALL SELECT * FROM idle
), named AS (
    SELECT CASE WHEN r.billing_group = '' THEN 'Unassigned'
                ELSE coalesce(g.name, r.billing_group) END AS group_name,
           r.billing_group,
           coalesce(m.name, '') AS member_name,
           coalesce(m.email, '') AS email,
           r.member_id,
           r.credits
    FROM rows r
    LEFT JOIN billing_groups g ON g.org_id = $1 AND g.billing_group_id = r.billing_group
    LEFT JOIN members m ON m.org_id = $1 AND m.member_id = r.member_id
)
SELECT group_name, member_name, email, credits FROM named
ORDER BY group_name COLLATE "C", billing_group COLLATE "C",
         member_name COLLATE "C", member_id COLLATE "C"
"""
