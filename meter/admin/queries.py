"""SQL of the administration service (tables: schemas/migrations/0001_admin.sql)."""

from __future__ import annotations

INSERT_PLAN = """
INSERT INTO plans (plan_id, name, period_kind, rolling_days, seat_credits, prorate, limit_policy,
    default_member_limit, billing_groups_allowed, on_demand_allowed, on_demand_member_cap,
    on_demand_price_micros, on_demand_charge_threshold_micros)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
RETURNING *
"""
SELECT_PLAN = "SELECT * FROM plans WHERE plan_id = $1"
SELECT_PLANS = "SELECT * FROM plans ORDER BY plan_id"
SELECT_PLAN_EXISTS = "SELECT 1 FROM plans WHERE plan_id = $1"

INSERT_ORG = """
INSERT INTO organizations (org_id, name, plan_id, billing_anchor, status, grace_seconds)
VALUES ($1, $2, $3, $4, $5, $6)
"""
SELECT_ORG_CONFIG = """
SELECT o.*, p.period_kind, p.rolling_days, p.limit_policy, p.default_member_limit,
       p.seat_credits, p.prorate, p.billing_groups_allowed
FROM organizations o JOIN plans p USING (plan_id)
WHERE o.org_id = $1
"""
SELECT_ORG_IDS = "SELECT org_id FROM organizations ORDER BY org_id"
SELECT_ORG_EXISTS = "SELECT 1 FROM organizations WHERE org_id = $1"
UPDATE_ORG = """
UPDATE organizations SET
    name = coalesce($2, name),
    status = coalesce($3, status),
    plan_id = coalesce($4, plan_id),
    grace_seconds = coalesce($5, grace_seconds),
    updated_at = now()
WHERE org_id = $1
"""

_MEMBER_COLUMNS = """
m.*, coalesce(
    (SELECT array_agg(g.group_id ORDER BY g.group_id) FROM group_members g
     WHERE g.org_id = m.org_id AND g.member_id = m.member_id), '{}') AS groups
"""
SELECT_MEMBER = f"SELECT {_MEMBER_COLUMNS} FROM members m WHERE m.org_id = $1 AND m.member_id = $2"
SELECT_MEMBERS = f"""
SELECT {_MEMBER_COLUMNS} FROM members m WHERE m.org_id = $1 AND m.status = 'active'
ORDER BY m.member_id
"""
SELECT_ALL_MEMBERS = "SELECT * FROM members WHERE org_id = $1"
SELECT_MEMBER_FOR_UPDATE = "SELECT * FROM members WHERE org_id = $1 AND member_id = $2 FOR UPDATE"
# A removed member may be created again; an active one may not (no row returned).
UPSERT_MEMBER = """
INSERT INTO members (org_id, member_id, name, email, seated, seated_since, member_limit,
    billing_group_id, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)
ON CONFLICT (org_id, member_id) DO UPDATE SET
    name = EXCLUDED.name, email = EXCLUDED.email, status = 'active', seated = EXCLUDED.seated,
    seated_since = EXCLUDED.seated_since, member_limit = EXCLUDED.member_limit,
    billing_group_id = EXCLUDED.billing_group_id, updated_at = EXCLUDED.updated_at
WHERE members.status = 'removed'
RETURNING 1
"""
UPDATE_MEMBER = """
UPDATE members SET name = $3, email = $4, seated = $5, seated_since = $6, member_limit = $7,
    billing_group_id = $8, updated_at = $9
WHERE org_id = $1 AND member_id = $2
"""
REMOVE_MEMBER = """
UPDATE members SET status = 'removed', seated = false, seated_since = NULL, updated_at = $3
WHERE org_id = $1 AND member_id = $2 AND status = 'active'
RETURNING 1
"""
DELETE_MEMBER_GROUPS = "DELETE FROM group_members WHERE org_id = $1 AND member_id = $2"

INSERT_GROUP = """
INSERT INTO groups (org_id, group_id, name, description) VALUES ($1, $2, $3, $4)
"""
SELECT_GROUP = """
SELECT g.*, coalesce(
    (SELECT array_agg(gm.member_id ORDER BY gm.member_id) FROM group_members gm
     WHERE gm.org_id = g.org_id AND gm.group_id = g.group_id), '{}') AS member_ids
FROM groups g WHERE g.org_id = $1 AND g.group_id = $2
"""
SELECT_GROUP_IDS = "SELECT group_id FROM groups WHERE org_id = $1 ORDER BY group_id"
DELETE_GROUP = "DELETE FROM groups WHERE org_id = $1 AND group_id = $2 RETURNING 1"
INSERT_GROUP_MEMBER = """
INSERT INTO group_members (org_id, group_id, member_id) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING
"""
DELETE_GROUP_MEMBER = """
DELETE FROM group_members WHERE org_id = $1 AND group_id = $2 AND member_id = $3 RETURNING 1
"""

SELECT_LIVE_BILLING_GROUP = """
SELECT 1 FROM billing_groups WHERE org_id = $1 AND billing_group_id = $2 AND deleted_at IS NULL
"""
SELECT_LIVE_BILLING_GROUP_ROW = """
SELECT * FROM billing_groups
WHERE org_id = $1 AND billing_group_id = $2 AND deleted_at IS NULL
FOR UPDATE
"""
SELECT_BILLING_GROUPS = """
SELECT * FROM billing_groups WHERE org_id = $1 AND deleted_at IS NULL ORDER BY billing_group_id
"""
SELECT_DELETED_BILLING_GROUPS = """
SELECT billing_group_id FROM billing_groups WHERE org_id = $1 AND deleted_at IS NOT NULL
"""
SELECT_BILLING_GROUP_MEMBERS = """
SELECT member_id, billing_group_id FROM members WHERE org_id = $1 AND status = 'active'
ORDER BY member_id
"""
INSERT_BILLING_GROUP = """
INSERT INTO billing_groups (org_id, billing_group_id, name, description, period_limit)
VALUES ($1, $2, $3, $4, $5)
"""
UPDATE_BILLING_GROUP = """
UPDATE billing_groups SET name = $3, description = $4, period_limit = $5
WHERE org_id = $1 AND billing_group_id = $2
"""
DELETE_BILLING_GROUP = """
UPDATE billing_groups SET deleted_at = $3
WHERE org_id = $1 AND billing_group_id = $2 AND deleted_at IS NULL
RETURNING 1
"""
UNASSIGN_BILLING_GROUP_MEMBERS = """
UPDATE members SET billing_group_id = NULL, updated_at = $3
WHERE org_id = $1 AND billing_group_id = $2
"""

INSERT_GRANT_IF_ABSENT = """
INSERT INTO credit_grants (org_id, bucket_id, kind, member_id, amount, valid_from, expires_at,
    granted_at, source)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (org_id, bucket_id) DO NOTHING
RETURNING 1
"""
SELECT_GRANT = "SELECT * FROM credit_grants WHERE org_id = $1 AND bucket_id = $2"
SELECT_GRANTS = "SELECT * FROM credit_grants WHERE org_id = $1 ORDER BY granted_at, bucket_id"
SELECT_LIVE_GRANTS = """
SELECT * FROM credit_grants WHERE org_id = $1 AND expires_at > $2 ORDER BY granted_at, bucket_id
"""
# Revoking a grant ends it at that instant (schemas/migrations/0012_grant_revocation.sql).
REVOKE_GRANT = """
UPDATE credit_grants SET revoked_at = $3, expires_at = least(expires_at, $3)
WHERE org_id = $1 AND bucket_id = $2 AND revoked_at IS NULL
RETURNING *
"""
SELECT_REVOKED_GRANTS = """
SELECT * FROM credit_grants WHERE org_id = $1 AND revoked_at IS NOT NULL ORDER BY bucket_id
"""

# Settled events are written by the settlement store (schemas/migrations/0002_settlements.sql).
SELECT_SETTLEMENT = "SELECT * FROM settlements WHERE key = $1 AND org_id = $2"
SELECT_SETTLEMENT_LINES = """
SELECT bucket_id, kind, amount FROM settlement_lines WHERE key = $1 AND org_id = $2
ORDER BY bucket_id
"""

INSERT_VOID = """
INSERT INTO voids (org_id, event_key, requested_at, voided, returned, requested_by)
VALUES ($1, $2, $3, $4, $5::jsonb, $6)
ON CONFLICT (org_id, event_key) DO NOTHING
"""

INSERT_KEY = """
INSERT INTO api_keys (key_id, token_hash, scope, org_id, name) VALUES ($1, $2, $3, $4, $5)
"""
# $1 NULL lists admin keys; otherwise the keys of that organization.
SELECT_KEYS = """
SELECT key_id, scope, org_id, name, created_at, revoked_at FROM api_keys
WHERE org_id IS NOT DISTINCT FROM $1 ORDER BY created_at, key_id
"""
REVOKE_KEY = """
UPDATE api_keys SET revoked_at = coalesce(revoked_at, $3)
WHERE key_id = $1 AND org_id IS NOT DISTINCT FROM $2
RETURNING 1
"""
