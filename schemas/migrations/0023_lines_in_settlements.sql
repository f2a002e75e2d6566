-- A settlement's lines live in its own row. `settlements.lines` holds them as the engine encodes
-- them (meter/engine/redis.py, `encode_settlement`): for each bucket drawn, in draw order, its
-- id, kind code and amount, all fields separated by \x1f (unit separator); kind codes s seat,
-- p personal, h shared, o on_demand; '' when nothing was drawn.
-- Ids never hold control characters (the engine refuses them), so the encoding is unambiguous.
--
-- Why: the settlement consumer wrote one row per line into a table of its own, with a primary
-- key index and a statement trigger: a second heap insert and a second index insert per event,
-- about a fifth of PostgreSQL's time on the write path (consumers/README.md, "Where a write's
-- time goes"). The lines are only read per settlement (history, voids) or per organization
-- (rebuild, archive), never searched by bucket, so they need no table of their own.
--
-- `settlement_lines` stays, as a view with the columns of the table it replaces, so every reader
-- (and the archive file format) is unchanged; `meter_lines(lines)` is the set-returning function
-- behind it. Inserting into the view appends a line to its settlement (an INSTEAD OF trigger),
-- for tools and fixtures that write lines one by one.
--
-- The shared-pool trigger (0007/0010/0011/0017) moves from the lines to `settlements`, where
-- it reads the lines of the rows a statement inserted; a settlement without a shared line costs
-- it one substring search. `meter_ensure_partitions` now creates the partitions of `settlements`
-- only.

CREATE FUNCTION meter_lines(lines text)
RETURNS TABLE (bucket_id text, kind text, amount bigint)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT f[i],
           CASE f[i + 1] WHEN 's' THEN 'seat' WHEN 'p' THEN 'personal' WHEN 'h' THEN 'shared'
                         WHEN 'o' THEN 'on_demand' END,
           f[i + 2]::bigint
    FROM (SELECT string_to_array(lines, E'\x1f') AS f) AS a,
         generate_series(1, coalesce(array_length(a.f, 1), 0), 3) AS i
$$;

ALTER TABLE settlements ADD COLUMN lines text NOT NULL DEFAULT '';

UPDATE settlements s SET lines = l.lines
FROM (
    SELECT org_id, key, period_start,
           string_agg(bucket_id || E'\x1f'
                      || CASE kind WHEN 'seat' THEN 's' WHEN 'personal' THEN 'p'
                                   WHEN 'shared' THEN 'h' ELSE 'o' END
                      || E'\x1f' || amount, E'\x1f' ORDER BY bucket_id) AS lines
    FROM settlement_lines GROUP BY 1, 2, 3
) AS l
WHERE s.org_id = l.org_id AND s.key = l.key AND s.period_start = l.period_start;

DROP TABLE settlement_lines;  -- its partitions, its trigger
DROP FUNCTION alerts_settlement_lines();

CREATE VIEW settlement_lines AS
SELECT s.key, s.org_id, l.bucket_id, l.kind, l.amount, s.period_start
FROM settlements s CROSS JOIN LATERAL meter_lines(s.lines) AS l;

-- The shared pool's drawn credits and alerts, for the settlements a statement inserted.
CREATE FUNCTION alerts_settlements() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    orgs text[];
    starts timestamptz[];
    ends timestamptz[];
BEGIN
    INSERT INTO shared_bucket_drawn AS d (org_id, bucket_id, drawn)
    SELECT s.org_id, l.bucket_id, sum(l.amount)
    FROM new_settlements s CROSS JOIN LATERAL meter_lines(s.lines) AS l
    WHERE strpos(s.lines, E'\x1fh\x1f') > 0 AND l.kind = 'shared'
    GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (org_id, bucket_id) DO UPDATE SET drawn = d.drawn + excluded.drawn;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT array_agg(t.org_id), array_agg(t.period_start), array_agg(t.period_end)
    INTO orgs, starts, ends
    FROM (
        SELECT s.org_id, max(s.period_start) AS period_start, max(s.period_end) AS period_end
        FROM new_settlements s CROSS JOIN LATERAL meter_lines(s.lines) AS l
        WHERE strpos(s.lines, E'\x1fh\x1f') > 0 AND l.kind = 'shared'
        GROUP BY s.org_id
    ) AS t;
    PERFORM alerts_shared_pool(orgs, starts, ends, now());
    RETURN NULL;
END
$$;

CREATE TRIGGER alerts_settlements AFTER INSERT ON settlements
    REFERENCING NEW TABLE AS new_settlements FOR EACH STATEMENT
    EXECUTE FUNCTION alerts_settlements();

-- A line inserted into the view is appended to its settlement (by organization and key, and
-- period start when given), checked as the table's constraints checked it.
CREATE FUNCTION settlement_lines_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    code text := CASE NEW.kind WHEN 'seat' THEN 's' WHEN 'personal' THEN 'p'
                               WHEN 'shared' THEN 'h' WHEN 'on_demand' THEN 'o' END;
    starts timestamptz;
    ends timestamptz;
BEGIN
    IF code IS NULL THEN
        RAISE EXCEPTION 'settlement line kind must be seat, personal, shared or on_demand'
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.amount IS NULL OR NEW.amount <= 0 THEN
        RAISE EXCEPTION 'settlement line amount must be positive' USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.bucket_id IS NULL OR NEW.bucket_id ~ '[\x01-\x1f\x7f]' THEN
        RAISE EXCEPTION 'settlement line bucket_id must be text without control characters'
            USING ERRCODE = 'check_violation';
    END IF;
    UPDATE settlements
    SET lines = CASE WHEN lines = '' THEN '' ELSE lines || E'\x1f' END
                || NEW.bucket_id || E'\x1f' || code || E'\x1f' || NEW.amount
    WHERE org_id = NEW.org_id AND key = NEW.key
      AND (NEW.period_start IS NULL OR period_start = NEW.period_start)
    RETURNING period_start, period_end INTO starts, ends;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no settlement % in organization %', NEW.key, NEW.org_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF code = 'h' THEN
        INSERT INTO shared_bucket_drawn AS d (org_id, bucket_id, drawn)
        VALUES (NEW.org_id, NEW.bucket_id, NEW.amount)
        ON CONFLICT (org_id, bucket_id) DO UPDATE SET drawn = d.drawn + excluded.drawn;
        PERFORM alerts_shared_pool(ARRAY[NEW.org_id], ARRAY[starts], ARRAY[ends], now());
    END IF;
    NEW.period_start := starts;
    RETURN NEW;
END
$$;

CREATE TRIGGER settlement_lines_insert INSTEAD OF INSERT ON settlement_lines
    FOR EACH ROW EXECUTE FUNCTION settlement_lines_insert();

-- The monthly partitions of `settlements` (0017), now the only partitioned table.
CREATE OR REPLACE FUNCTION meter_ensure_partitions(from_time timestamptz, months integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    first_month timestamp := date_trunc('month', from_time AT TIME ZONE 'UTC');
    lo timestamptz;
    hi timestamptz;
    part text;
    created integer := 0;
BEGIN
    -- pg_advisory_xact_lock key: hashtext of the function's name, stable across calls.
    PERFORM pg_advisory_xact_lock(hashtext('meter_ensure_partitions'));
    FOR i IN 0 .. months - 1 LOOP
        lo := (first_month + make_interval(months => i)) AT TIME ZONE 'UTC';
        hi := (first_month + make_interval(months => i + 1)) AT TIME ZONE 'UTC';
        CONTINUE WHEN EXISTS (
            SELECT 1 FROM settlement_archives WHERE month = (lo AT TIME ZONE 'UTC')::date
        );
        part := 'settlements_' || to_char(lo AT TIME ZONE 'UTC', 'YYYY_MM');
        CONTINUE WHEN to_regclass(part) IS NOT NULL;
        EXECUTE format(
            'CREATE TABLE %I (LIKE settlements INCLUDING DEFAULTS INCLUDING CONSTRAINTS'
            ' INCLUDING GENERATED INCLUDING STORAGE)', part);
        EXECUTE format(
            'WITH moved AS (DELETE FROM settlements_default WHERE period_start >= $1'
            ' AND period_start < $2 RETURNING *) INSERT INTO %I SELECT * FROM moved', part)
            USING lo, hi;
        EXECUTE format('ALTER TABLE settlements ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       part, lo, hi);
        created := created + 1;
    END LOOP;
    RETURN created;
END
$$;
