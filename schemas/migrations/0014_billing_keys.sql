-- `billing` keys: platform keys (no organization) for plans, grants, voids, codes and redemptions.
-- The scope list of 0001 is widened, and "belongs to no organization" now holds for both
-- platform scopes.
ALTER TABLE api_keys
    DROP CONSTRAINT api_keys_scope_check,
    DROP CONSTRAINT api_keys_check,
    ADD CONSTRAINT api_keys_scope_check
        CHECK (scope IN ('admin', 'billing', 'org_admin', 'product')),
    ADD CONSTRAINT api_keys_platform_check
        CHECK ((scope IN ('admin', 'billing')) = (org_id IS NULL));
