-- Per-tenant idempotency: a settlement is identified by its organization and its key
-- (CloudEvents source + id), not by the key alone. Two organizations may send the same source + id;
-- each settles once in its own organization.
--
-- Existing rows keep their keys: only the unique constraints gain the organization (as their
-- leading column, so every lookup, which always names the organization, uses them). Voids are
-- keyed by (org_id, event_key) since 0001 already.

ALTER TABLE settlements DROP CONSTRAINT settlements_pkey;
ALTER TABLE settlements ADD PRIMARY KEY (org_id, key);

ALTER TABLE settlement_lines DROP CONSTRAINT settlement_lines_pkey;
ALTER TABLE settlement_lines ADD PRIMARY KEY (org_id, key, bucket_id);

-- Shared pool on settlement (0010), joining the lines to their settlements by organization and
-- key.
CREATE OR REPLACE FUNCTION alerts_settlement_lines() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    orgs text[];
    starts timestamptz[];
    ends timestamptz[];
BEGIN
    INSERT INTO shared_bucket_drawn AS d (org_id, bucket_id, drawn)
    SELECT org_id, bucket_id, sum(amount) FROM new_lines WHERE kind = 'shared'
    GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (org_id, bucket_id) DO UPDATE SET drawn = d.drawn + excluded.drawn;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT array_agg(t.org_id), array_agg(t.period_start), array_agg(t.period_end)
    INTO orgs, starts, ends
    FROM (
        SELECT s.org_id, max(s.period_start) AS period_start, max(s.period_end) AS period_end
        FROM (SELECT DISTINCT org_id, key FROM new_lines WHERE kind = 'shared') AS l
        JOIN settlements s USING (org_id, key)
        GROUP BY s.org_id
    ) AS t;
    PERFORM alerts_shared_pool(orgs, starts, ends, now());
    RETURN NULL;
END
$$;
