-- Grant revocation: `revoked_at` is when a grant was revoked (NULL: never). Revoking also sets
-- `expires_at` to the revocation instant when the grant expired later, so every reader of
-- `expires_at` (the rebuild, the reconciler, expiries, alerts) sees a revoked grant as one that
-- expired then; the rebuild gives a revoked bucket nothing left. A grant revoked before its
-- `valid_from` expires before it starts, which the original check forbade.

ALTER TABLE credit_grants ADD COLUMN revoked_at timestamptz;

ALTER TABLE credit_grants DROP CONSTRAINT credit_grants_check;
ALTER TABLE credit_grants ADD CONSTRAINT credit_grants_expiry
    CHECK (expires_at > valid_from OR revoked_at IS NOT NULL);
