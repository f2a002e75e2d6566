-- The identity columns of the settlement tables compare bytes: `COLLATE "C"` on
-- `settlement_keys` (org_id, key) and `settlements` (org_id, key, member_id).
--
-- Why: every settled event inserts into three indexes on these columns (the primary keys of
-- both tables and `settlements_member`), and the consumer looks every event's key up in
-- `settlement_keys` before settling it. Under a database's default collation each comparison
-- in those indexes goes through the locale's collation (strcoll); under "C" it is a memcmp.
-- Most PostgreSQL installs default to a locale such as en_US.UTF-8, where this took the
-- settlement write about 60% more PostgreSQL time than "C" (consumers/README.md, "The
-- collation of the keys"). A database created with the C locale (as the embedded one is) gains
-- nothing and loses nothing.
--
-- What changes for readers: equality is the same (both collations are deterministic: equal
-- means the same bytes). Ordering by these columns is by bytes (uppercase before lowercase),
-- which is what the indexes, the history cursor and the consumer's own sort already use.
--
-- One thing to mind when writing queries: compared with a column of the database's default
-- collation, these columns win (PostgreSQL prefers a column's explicit collation to the
-- default), and an index is used only for comparisons in its own collation. So a value taken
-- from these columns and looked up in another table's index (the totals, the grants, the voids)
-- is cast back with `COLLATE "default"`, or the lookup is by the query's parameter instead: the
-- store's void statements and the history reads do so. A PL/pgSQL function takes the collation
-- of the arguments it is called with: `alerts_shared_pool`, called by the settlement triggers
-- with organization ids read from `settlements`, casts them back itself (below).
--
-- Cost of the migration: PostgreSQL rebuilds the indexes of both tables (their order changes);
-- the table rows are not rewritten. On a large install this holds the tables locked as long as
-- building those indexes takes. The `settlement_lines` view depends on the columns: it is
-- dropped and made again as it was, with its INSTEAD OF trigger.

DROP VIEW settlement_lines;

ALTER TABLE settlement_keys
    ALTER COLUMN org_id TYPE text COLLATE "C",
    ALTER COLUMN key TYPE text COLLATE "C";

ALTER TABLE settlements
    ALTER COLUMN org_id TYPE text COLLATE "C",
    ALTER COLUMN key TYPE text COLLATE "C",
    ALTER COLUMN member_id TYPE text COLLATE "C";

CREATE VIEW settlement_lines AS
SELECT s.key, s.org_id, l.bucket_id, l.kind, l.amount, s.period_start
FROM settlements s CROSS JOIN LATERAL meter_lines(s.lines) AS l;

CREATE TRIGGER settlement_lines_insert INSTEAD OF INSERT ON settlement_lines
    FOR EACH ROW EXECUTE FUNCTION settlement_lines_insert();

-- As in 0010, but the organizations given compare in the database's default collation, so the
-- lookups of `credit_grants`, `shared_bucket_drawn` and `org_alert_thresholds` use their indexes
-- whatever the collation of the arguments (the settlement triggers pass ids read from
-- `settlements`, now "C").
CREATE OR REPLACE FUNCTION alerts_shared_pool(orgs text[], starts timestamptz[],
                                              ends timestamptz[], at_time timestamptz)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    crossed bigint;
BEGIN
    WITH given AS (
        SELECT u.org_id COLLATE "default" AS org_id, u.period_start, u.period_end
        FROM unnest(orgs, starts, ends) AS u(org_id, period_start, period_end)
    ), pool AS (
        SELECT o.org_id, o.period_start, o.period_end, sum(g.amount) AS granted,
               sum(g.amount - coalesce(d.drawn, 0)) AS remaining
        FROM given AS o
        JOIN credit_grants g ON g.org_id = o.org_id AND g.kind = 'shared'
                             AND g.valid_from <= at_time AND g.expires_at > at_time
        LEFT JOIN shared_bucket_drawn d ON d.org_id = g.org_id AND d.bucket_id = g.bucket_id
        GROUP BY 1, 2, 3
    ), ins AS (
        INSERT INTO alerts (org_id, subject_kind, subject_id, period_start, period_end, threshold,
                            amount, reference)
        SELECT p.org_id, 'shared_pool', '', p.period_start, p.period_end, th.percent,
               greatest(p.remaining, 0), p.granted
        FROM pool p
        CROSS JOIN LATERAL unnest(coalesce(
            (SELECT ot.percents FROM org_alert_thresholds ot
             WHERE ot.org_id = p.org_id AND ot.subject_kind = 'shared_pool'),
            (SELECT array_agg(d.percent) FROM alert_thresholds d
             WHERE d.subject_kind = 'shared_pool')
        )) AS th(percent)
        WHERE p.granted > 0 AND p.remaining * 100 <= p.granted * th.percent
        ORDER BY 1, 4, 6
        ON CONFLICT DO NOTHING
        RETURNING 1
    )
    SELECT count(*) INTO crossed FROM ins;
    IF crossed > 0 THEN
        PERFORM pg_notify('meter_alerts', '');
    END IF;
    RETURN crossed;
END
$$;
